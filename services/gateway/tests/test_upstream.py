"""The gateway's keep-alive client against a raw socket server whose every byte the test chooses."""

from __future__ import annotations

import asyncio

import pytest
from dropslot_gateway.upstream import ConnectFailed, UpstreamBroken, UpstreamPool
from dropslot_kit.launcher import free_port

ANSWERS = {
    b"/plain": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Thing: A\r\ncontent-length: 5\r\n\r\nhello",
    b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    b"/close": b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
    b"/until-close": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it",
    b"/head": b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
    b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
    b"/garbage": b"this is not http\r\n\r\n",
    b"/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
}


class RawServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self.seen: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.seen.append(head + body)
                path = head.split(b" ")[1].split(b"?")[0]
                if path == b"/hang-up":
                    break
                if path.startswith(b"/slow"):
                    await asyncio.sleep(0.5)
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                elif path.startswith(b"/echo"):
                    writer.write(b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    writer.write(ANSWERS[path])
                await writer.drain()
                if path in (b"/close", b"/until-close"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def raw():
    server = RawServer()
    await server.start()
    yield server
    await server.stop()


async def test_keep_alive_reuse_and_framings(raw):
    pool = UpstreamPool(limit=4, connect_timeout=1)
    status, headers, body = await pool.request(raw.url, "GET", "/plain", [], b"")
    assert (status, body) == (200, b"hello") and (b"x-thing", b"A") in headers  # names lowercased
    assert (await pool.request(raw.url, "GET", "/chunked", [], b""))[2] == b"abcdefg"
    assert (await pool.request(raw.url, "GET", "/empty", [], b""))[:1] == (204,)
    assert (await pool.request(raw.url, "GET", "/interim", [], b""))[::2] == (200, b"final")  # 1xx skipped
    status, _, body = await pool.request(raw.url, "POST", "/echo?x=1", [(b"x-a", b"1")], b'{"a":1}')
    assert (status, body) == (201, b'{"a":1}')
    assert raw.connections == 1  # one connection for all five
    assert raw.seen[-1].startswith(b"POST /echo?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\nx-a: 1\r\ncontent-length: 7\r\n\r\n" in raw.seen[-1]
    pool.close()


async def test_answers_that_end_the_connection_and_head(raw):
    pool = UpstreamPool(limit=4, connect_timeout=1)
    assert (await pool.request(raw.url, "GET", "/close", [], b""))[2] == b"ok"
    assert (await pool.request(raw.url, "GET", "/until-close", [], b""))[2] == b"all of it"
    async with asyncio.timeout(2):  # no body is waited for, whatever Content-Length says
        assert (await pool.request(raw.url, "HEAD", "/head", [], b""))[:1] == (200,)
    assert (await pool.request(raw.url, "GET", "/plain", [], b""))[2] == b"hello"
    assert raw.connections == 4  # none of the first three connections was reused
    pool.close()


async def test_broken_answers_and_unreachable_replicas(raw):
    pool = UpstreamPool(limit=4, connect_timeout=1)
    with pytest.raises(UpstreamBroken):
        await pool.request(raw.url, "GET", "/hang-up", [], b"")
    with pytest.raises(UpstreamBroken):
        await pool.request(raw.url, "GET", "/garbage", [], b"")
    with pytest.raises(ConnectFailed):
        await pool.request(f"http://127.0.0.1:{free_port()}", "GET", "/plain", [], b"")
    assert (await pool.request(raw.url, "GET", "/plain", [], b""))[2] == b"hello"  # the pool goes on
    pool.close()


async def test_a_timed_out_connection_is_never_reused_for_the_next_request(raw):
    pool = UpstreamPool(limit=4, connect_timeout=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.request(raw.url, "GET", "/slow", [], b"")
    await asyncio.sleep(0.6)  # the late answer arrives (on a connection now closed)
    assert (await pool.request(raw.url, "GET", "/plain", [], b""))[2] == b"hello"
    assert raw.connections == 2


async def test_the_pools_own_deadline_times_out_a_request_and_retires_its_connection(raw):
    pool = UpstreamPool(limit=1, connect_timeout=1, timeout=0.2)  # the watchdog looks every 10 ms
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await pool.request(raw.url, "GET", "/slow", [], b"")
    assert 0.2 <= asyncio.get_running_loop().time() - started < 0.45  # not the 0.5 s answer
    # With the one connection busy, a second request waits for it, and the wait counts too: it
    # is sent ~0.15 s after its call, and times out 0.2 s after its call.
    first = asyncio.create_task(pool.request(raw.url, "GET", "/slow", [], b""))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await pool.request(raw.url, "GET", "/slow", [], b"")
    assert asyncio.get_running_loop().time() - started < 0.3
    with pytest.raises(TimeoutError):
        await first
    await asyncio.sleep(0.6)  # the late answers arrive, on connections now closed
    assert (await pool.request(raw.url, "GET", "/plain", [], b""))[2] == b"hello"
    assert raw.connections == 4  # no timed-out connection was used again
    assert pool._inflight == {}
    pool.close()


async def test_idle_connections_expire_and_the_limit_queues_requests(raw):
    pool = UpstreamPool(limit=2, connect_timeout=1, keepalive=0.2)
    await pool.request(raw.url, "GET", "/plain", [], b"")
    await asyncio.sleep(0.3)
    await pool.request(raw.url, "GET", "/plain", [], b"")
    assert raw.connections == 2  # the idle one was too old to trust
    raw.connections = 0
    answers = await asyncio.gather(*(pool.request(raw.url, "GET", "/slow", [], b"") for _ in range(4)))
    assert [a[2] for a in answers] == [b"slow"] * 4
    assert raw.connections <= 2  # at most `limit` at once; the others waited for a free one
    pool.close()
