"""The gateway's own HTTP/1.1 server: an asyncio protocol per connection, requests parsed by
httptools (llhttp, the parser uvicorn uses), answered by `Gateway.respond`.

Why not uvicorn: the gateway is one handler that reads whole requests and writes whole answers,
and uvicorn's ASGI machinery around it (a scope dict, a request-response cycle object with an
event, receive/send message dicts, header validation, a keep-alive timer re-armed per request)
cost ~35 µs of CPU per request here against ~20 µs for the whole of a bare httptools protocol
(a trivial app, 40,000 requests at 64 connections, the server's CPU from /proc). On two cores
that the whole system shares, the gateway is on every request's path; bench/README.md has the
storm's figures.

What it does: keep-alive (HTTP/1.1 by default, `Connection: close` and HTTP/1.0 honoured),
pipelined requests answered in order (reading pauses while a connection's request is in
flight), bodies by Content-Length or chunked (the parser decodes them) up to
`max_body_bytes` (413 problem, connection closed), `Expect: 100-continue`, a 400 for anything
that is not HTTP/1.x and no upgrades (the gateway proxies no WebSockets). Idle connections
close after `keepalive_seconds` (75, as the services'), swept once a second rather than a timer
per request. On SIGTERM/SIGINT it stops accepting, closes idle connections, lets requests
in flight finish (at most `graceful_seconds`), then shuts the gateway down.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import signal
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools
from dropslot_kit.errors import InternalError, PayloadTooLarge, Problem, problem_answer

if TYPE_CHECKING:
    from .main import Gateway

log = logging.getLogger("dropslot.gateway.server")

Headers = list[tuple[bytes, bytes]]


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


class Request:
    """One whole request as the gateway sees it."""

    __slots__ = ("method", "path", "target", "headers", "body", "client", "keep_alive")

    def __init__(self, method: str, path: str, target: str, headers: Headers, body: bytes, client: str,
                 keep_alive: bool):
        self.method = method
        self.path = path  # percent-decoded, for routing
        self.target = target  # as the client sent it (path and query), for the upstream
        self.headers = headers  # names lower-cased, in order
        self.body = body
        self.client = client
        self.keep_alive = keep_alive


def closing_answer(problem: Problem) -> bytes:
    """A whole answer the server gives itself (malformed request, body too large), then closes."""
    status, headers, body = problem_answer(problem)
    head = [STATUS_LINES[status], *(name + b": " + value + b"\r\n" for name, value in headers)]
    return b"".join(head) + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body


class _Connection(asyncio.Protocol):
    def __init__(self, server: GatewayServer):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = "unknown"
        self.queue: collections.deque[Request] = collections.deque()  # parsed, not yet answered
        self.busy = False  # a request of this connection is being answered
        self.closing = False
        self.last_words: bytes | None = None  # the server's own answer, after the one in flight, then close
        self.last_active = time.monotonic()
        # the request being parsed
        self.url = b""
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = str(peer[0])
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.queue.clear()
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(Problem("upgrades are not supported here"))
        except httptools.HttpParserError:
            if not self.too_large:
                self._refuse(Problem("not a valid HTTP/1.1 request"))

    # --- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size, self.too_large = b"", [], [], 0, False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        limit = self.server.gateway.settings.max_body_bytes
        for name, value in self.headers:
            if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
                self._too_large(limit)
                return
            if name == b"expect" and value.lower() == b"100-continue" and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.too_large:
            return
        self.size += len(body)
        limit = self.server.gateway.settings.max_body_bytes
        if self.size > limit:
            self._too_large(limit)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.too_large or self.closing:
            return
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(Problem("malformed request target"))
            return
        raw_path = url.path.decode("latin-1")
        path = unquote(raw_path, encoding="latin-1") if "%" in raw_path else raw_path
        target = raw_path + "?" + url.query.decode("latin-1") if url.query else raw_path
        request = Request(self.parser.get_method().decode("latin-1"), path, target, self.headers,
                          b"".join(self.body), self.client, self.parser.should_keep_alive())
        if self.busy:  # pipelined: answered in order, and nothing more is read meanwhile
            self.queue.append(request)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._start(request)

    # --- answering -------------------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        self.busy = True
        task = asyncio.get_running_loop().create_task(self._answer(request))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _answer(self, request: Request) -> None:
        try:
            status, headers, body = await self.server.gateway.respond(request)
        except Exception:  # respond answers every error it knows; anything else is a bug: 500, logged
            log.exception("unhandled error answering %s %s", request.method, request.path)
            status, headers, body = problem_answer(InternalError(), request.path)
            headers.append((b"content-length", b"%d" % len(body)))
        self.busy = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        keep = request.keep_alive and not self.server.stopping
        head = [STATUS_LINES.get(status) or _status_line(status), b"date: ", self.server.date, b"\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if not keep:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        transport.write(b"".join(head) + body)
        self.last_active = time.monotonic()
        if self.last_words is not None:
            transport.write(self.last_words)
            keep = False
        if not keep:
            self.closing = True
            transport.close()
        elif self.queue:
            self._start(self.queue.popleft())
            if not self.queue:
                transport.resume_reading()

    def _too_large(self, limit: int) -> None:
        self.too_large = True
        self._refuse(PayloadTooLarge(f"at most {limit} bytes"))

    def _refuse(self, problem: Problem) -> None:
        """An answer of the server's own, then the connection closes (its framing can't be trusted)."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.queue.clear()
        if self.busy:  # the answer in flight goes first
            self.last_words = closing_answer(problem)
            self.transport.pause_reading()
            return
        self.transport.write(closing_answer(problem))
        self.transport.close()

    def close_if_idle(self, now: float, idle_for: float) -> None:
        if not self.busy and not self.queue and now - self.last_active >= idle_for and self.transport is not None:
            self.closing = True
            self.transport.close()


class GatewayServer:
    """Serves a `Gateway` on host:port: `await start()`, then `await stop()` (or `serve()`)."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 8000, *,
                 keepalive_seconds: float = 75.0, graceful_seconds: float = 5.0):
        self.gateway = gateway
        self.host, self.port = host, port
        self.keepalive_seconds = keepalive_seconds
        self.graceful_seconds = graceful_seconds
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.date = formatdate(usegmt=True).encode()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.gateway.startup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                reuse_address=True, backlog=2048)
        self._ticker = loop.create_task(self._tick())

    async def _tick(self) -> None:
        """Once a second: the Date header, and a look for connections idle too long (a connection
        may so stay open up to a second past `keepalive_seconds`)."""
        while True:
            await asyncio.sleep(1.0)
            self.date = formatdate(usegmt=True).encode()
            now = time.monotonic()
            for conn in list(self.connections):
                conn.close_if_idle(now, self.keepalive_seconds)

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle(time.monotonic(), 0.0)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.graceful_seconds)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._ticker is not None:
            self._ticker.cancel()
            # gather, not a suppressed await: a cancellation of stop() itself must not be swallowed
            await asyncio.gather(self._ticker, return_exceptions=True)
        try:  # bounded: a stop must end even if Redis or an upstream does not answer
            await asyncio.wait_for(self.gateway.shutdown(), self.graceful_seconds)
        except TimeoutError:
            log.warning("the gateway's shutdown took over %.0fs; stopped without it", self.graceful_seconds)

    async def serve(self) -> None:
        """Until SIGTERM or SIGINT."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("gateway listening on %s:%d", self.host, self.port)
        await stop.wait()
        await self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dropslot_gateway.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--keepalive-seconds", type=float, default=75.0)
    args = parser.parse_args(argv)

    import uvloop

    from .main import Gateway

    async def run() -> None:
        await GatewayServer(Gateway(), args.host, args.port, keepalive_seconds=args.keepalive_seconds).serve()

    uvloop.run(run())


if __name__ == "__main__":
    main()
