"""Keep-alive HTTP/1.1 connections from the gateway to the services.

The gateway is on every request's path, and aiohttp's client (request object, timers, tracing
hooks, cookie handling, yarl URLs) cost ~a quarter of the gateway's CPU in a drop storm. The
gateway needs much less: one request at a time per connection (no pipelining), bodies already
in memory, responses read whole, pooled connections per replica. Responses are parsed by
httptools (llhttp, the parser uvicorn uses on the other side): Content-Length, chunked, and
bodies that end with the connection.

Errors say whether anything reached the replica: `ConnectFailed` (nothing sent; the gateway
tries the next replica whatever the method) versus `UpstreamBroken` (sent, then the connection
broke or the answer was not HTTP; the gateway answers 502).

`timeout` bounds a request from its call to its answer (TimeoutError; opening a new connection
is bounded by `connect_timeout`, and a failure there is `ConnectFailed`). It is not a timer per
request: `asyncio.timeout` (a context manager, a timer handle, its reschedule and cancel) was
~4 % of the gateway's CPU in a drop storm. Each request in flight is kept with its deadline and
one watchdog task fails those past it, checking `timeout / 20` apart (at most every 0.5 s): a
request may run over by that much. Only a wait for a free connection (every one in use) still
takes an `asyncio.timeout` of its own. A caller may also cancel (its own timeout); either way a
connection whose request timed out is closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import time
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]


class ConnectFailed(Exception):
    """The replica could not be reached: nothing was sent."""


class UpstreamBroken(Exception):
    """The request was sent (or partly), then the connection broke or the answer was not HTTP."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, Headers, bytes]] | None = None
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.head_only = False
        self.until_close = False
        self.reusable = True
        self.idle_since = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: this connection is out of step
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("upgrade answers are not proxied"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"not an HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            if self.until_close:  # a body framed by the end of the connection
                self._done()
            else:
                self._fail(UpstreamBroken("the service closed the connection"))

    # --- httptools callbacks ---------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        if self.head_only:  # no body follows an answer to HEAD, whatever Content-Length says
            self.reusable = False  # the parser would wait for that body: start afresh next time
            self._done()
            return
        status = self.parser.get_status_code()
        if status in (204, 304) or 100 <= status < 200:
            return
        names = {k for k, _ in self.headers}
        if b"content-length" not in names and b"transfer-encoding" not in names:
            self.until_close = True
            self.reusable = False

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:  # an interim answer (100 Continue): the real one follows
            self.headers, self.body = [], []
            return
        self._done()

    # --- one exchange ----------------------------------------------------------------------------
    def _done(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))

    def expire(self) -> None:
        """The request on this connection ran past its deadline."""
        self._fail(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def exchange(self, request: bytes, head_only: bool) -> tuple[int, Headers, bytes]:
        assert self.transport is not None
        self.headers, self.body, self.head_only, self.until_close = [], [], head_only, False
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(request)
            return await self.waiter
        except BaseException:
            self.reusable = False  # cancelled or timed out mid-exchange: a late answer must not be
            self.transport.close()  # taken for the next request's
            raise
        finally:
            self.waiter = None


class _Replica:
    """One replica's address, idle connections and limit of connections in use."""

    def __init__(self, base_url: str, limit: int):
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.netloc = url.netloc.encode("latin-1")
        self.idle: collections.deque[_Conn] = collections.deque()
        self.slots = asyncio.Semaphore(limit)


class UpstreamPool:
    """Keep-alive connections to the replicas of the services, at most `limit` per replica."""

    def __init__(self, *, limit: int, connect_timeout: float, keepalive: float = 30.0, timeout: float | None = None):
        self.limit = limit
        self.connect_timeout = connect_timeout
        # Shorter than the services' own keep-alive (75 s, see the launcher and compose), so a
        # connection the service has just closed is never reused.
        self.keepalive = keepalive
        self.timeout = timeout
        self._replicas: dict[str, _Replica] = {}
        self._inflight: dict[_Conn, float] = {}  # connection -> its request's deadline (monotonic)
        self._watchdog: asyncio.Task[None] | None = None

    async def _watch(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            late = [conn for conn, deadline in self._inflight.items() if deadline <= now]
            for conn in late:
                self._inflight.pop(conn, None)
                conn.expire()

    async def _acquire(self, replica: _Replica) -> _Conn:
        now = time.monotonic()
        while replica.idle:
            conn = replica.idle.pop()  # the most recently used: the likeliest to be alive
            if conn.reusable and now - conn.idle_since < self.keepalive:
                return conn
            if conn.transport is not None:
                conn.transport.close()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await asyncio.get_running_loop().create_connection(_Conn, replica.host, replica.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        return conn

    async def request(self, base_url: str, method: str, target: str, headers: Headers,
                      body: bytes) -> tuple[int, Headers, bytes]:
        """Send one request; `headers` must not hold Host or Content-Length (set here)."""
        replica = self._replicas.get(base_url)
        if replica is None:
            replica = self._replicas[base_url] = _Replica(base_url, self.limit)
        deadline: float | None = None
        if self.timeout is not None:
            deadline = time.monotonic() + self.timeout
            if self._watchdog is None:
                self._watchdog = asyncio.create_task(self._watch(max(0.005, min(0.5, self.timeout / 20))))
        if deadline is not None and replica.slots.locked():  # every connection in use: wait, bounded
            async with asyncio.timeout(self.timeout):
                await replica.slots.acquire()
        else:
            await replica.slots.acquire()
        try:
            conn = await self._acquire(replica)
            head = [f"{method} {target} HTTP/1.1\r\nhost: ".encode("latin-1"), replica.netloc, b"\r\n"]
            for name, value in headers:
                head += (name, b": ", value, b"\r\n")
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                head.append(b"content-length: %d\r\n" % len(body))
            head.append(b"\r\n")
            if deadline is not None:
                self._inflight[conn] = deadline
            try:
                answer = await conn.exchange(b"".join(head) + body, head_only=method == "HEAD")
            finally:
                self._inflight.pop(conn, None)
            if conn.reusable:
                conn.idle_since = time.monotonic()
                replica.idle.append(conn)
            return answer
        finally:
            replica.slots.release()

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for replica in self._replicas.values():
            while replica.idle:
                conn = replica.idle.pop()
                if conn.transport is not None:
                    conn.transport.close()
