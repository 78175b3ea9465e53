"""uvicorn's httptools protocol, plus the app's direct routes served with no ASGI in between.

`uvicorn ... --http dropslot_kit.serving:DirectHttpProtocol` (the launcher, compose and the k8s
manifests run every service so). A request whose method and path is one of the app's direct
routes (`ServiceApp.add_direct_route`) is read whole and answered by `ServiceApp.answer_direct`
straight from the parser's callbacks: no scope dict, no request-response cycle object and its
event, no receive/send messages, no header validation of our own answer. In a storm those were
~35 µs of the ~55 µs that uvicorn spends around a request on this VM (a bare httptools protocol:
~20 µs), on every reservation and every refusal. Every other request, and every request while
tracing is on, goes to uvicorn's own handling unchanged.

Order on a connection is kept: a direct request in flight stands in uvicorn's place of the
current request-response cycle (`_DirectCycle`), so a request pipelined behind it is queued by
uvicorn and started when the direct answer is written, as it would be behind any other. Keep-
alive, its timer, `Connection: close`, HTTP/1.0, `Expect: 100-continue` and graceful shutdown
(`shutdown()` ends keep-alive on the answer in flight; uvicorn waits for the request's task) are
uvicorn's rules, applied here too. A body longer than the route's `max_body` is not kept: the
route answers 413.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .app import DirectRoute, ServiceApp
from .errors import InternalError, problem_answer

log = logging.getLogger("dropslot.serving")


class _MessageEvent:
    """What uvicorn's connection_lost sets on the current cycle: nothing waits on a direct one."""

    def set(self) -> None:
        pass


class _DirectCycle:
    """A direct request in flight, where uvicorn keeps its current request-response cycle."""

    def __init__(self, route: DirectRoute, method: str, path: str, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool):
        self.route = route
        self.method = method
        self.path = path
        self.headers = headers
        self.keep_alive = keep_alive  # uvicorn's shutdown() sets it False
        self.response_complete = False
        self.disconnected = False
        self.message_event = _MessageEvent()
        self.body: list[bytes] = []
        self.size = 0


class DirectHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The app as uvicorn loaded it: a ServiceApp unless something wraps it (proxy headers,
        # message logging), and then every request takes uvicorn's own way.
        self.service_app: ServiceApp | None = self.app if isinstance(self.app, ServiceApp) else None
        self.direct: _DirectCycle | None = None  # the direct request being read

    def on_headers_complete(self) -> None:
        app = self.service_app
        current = self.cycle
        if app is not None and app.direct_routes and not self.pipeline and (
                current is None or current.response_complete) and not self.parser.should_upgrade():
            method = self.parser.get_method().decode("ascii")
            raw = httptools.parse_url(self.url).path.decode("ascii")
            path = urllib.parse.unquote(raw) if "%" in raw else raw
            route = app.direct_route(method, path)
            if route is not None:
                keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
                self.direct = self.cycle = _DirectCycle(  # type: ignore[assignment]
                    route, method, path, self.headers, keep_alive)
                if self.expect_100_continue:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
        self.direct = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        direct = self.direct
        if direct is None:
            super().on_body(body)
            return
        direct.size += len(body)
        if direct.size <= direct.route.max_body:  # past it nothing is kept: the answer is a 413
            direct.body.append(body)

    def on_message_complete(self) -> None:
        direct = self.direct
        if direct is None:
            super().on_message_complete()
            return
        self.direct = None
        task = self.loop.create_task(self._answer(direct))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, direct: _DirectCycle) -> None:
        assert self.service_app is not None
        too_large = direct.size > direct.route.max_body
        try:
            status, headers, payload = await self.service_app.answer_direct(
                direct.route, direct.method, direct.headers, b"" if too_large else b"".join(direct.body), self.client,
                too_large=too_large, path=direct.path)
        except Exception:  # answer_direct's handler answers its own errors: this is a bug, logged
            log.exception("unhandled error on %s %s", direct.method, direct.route.path)
            status, headers, payload = problem_answer(InternalError(), direct.route.path)
            headers.append((b"content-length", b"%d" % len(payload)))
        direct.response_complete = True
        if self.transport.is_closing():
            return
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += (name, b": ", value, b"\r\n")
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if not direct.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.write(b"".join(head) + (b"" if direct.method == "HEAD" else payload))
        if not direct.keep_alive:
            self.transport.close()
        self.on_response_complete()  # uvicorn's: keep-alive timer, or the next pipelined request
