"""The gateway's own HTTP server, spoken to over raw sockets: keep-alive, pipelining, framings,
and the answers it gives itself (400, 413), in front of a real upstream."""

from __future__ import annotations

import asyncio
import json
import uuid

import httptools
import pytest
from aiohttp import web
from dropslot_gateway.config import Settings
from dropslot_gateway.main import Gateway
from dropslot_gateway.server import GatewayServer
from dropslot_kit.launcher import free_port


class Answer:
    def __init__(self, status: int = 0) -> None:
        self.status = status
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    def json(self) -> dict:
        return json.loads(self.body)


class Answers:
    """Every answer that arrives on one connection, in order (one parser for the connection)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.current = Answer()
        self.complete: list[Answer] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.status = self.parser.get_status_code()
        self.complete.append(self.current)
        self.current = Answer()


async def read_answers(reader: asyncio.StreamReader, n: int) -> list[Answer]:
    """The next n answers of a connection (one request's answers at a time here: no bytes of a
    later answer are read, as the tests ask again only after these)."""
    answers = Answers()
    while len(answers.complete) < n:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            pytest.fail("the connection closed before the answers were complete")
        try:
            answers.parser.feed_data(data)
        except httptools.HttpParserError:
            pytest.fail(f"not an HTTP answer: {data[:200]!r}")
    assert len(answers.complete) == n, "more answers than requests"
    return answers.complete


@pytest.fixture
async def served():
    seen: list[dict] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        if request.path.endswith("/slow"):
            await asyncio.sleep(0.3)
        seen.append({"path": request.path_qs, "body": body.decode()})
        return web.json_response({"path": request.path_qs, "method": request.method, "body": body.decode(),
                                  "length": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, shutdown_timeout=2.0)  # a teardown never waits long
    await runner.setup()
    up = free_port()
    await web.TCPSite(runner, "127.0.0.1", up).start()
    settings = Settings(upstreams={"catalog": [f"http://127.0.0.1:{up}"]}, jwks_url="http://127.0.0.1:9/jwks",
                        rate_limit_enabled=False, log_json=False, max_body_bytes=1000)
    server = GatewayServer(Gateway(settings), "127.0.0.1", free_port(), keepalive_seconds=1.0)
    await server.start()
    yield server, seen
    await server.stop()
    await runner.cleanup()


async def connect(server: GatewayServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n".encode()


async def test_keep_alive_answers_many_requests_on_one_connection(served):
    server, _ = served
    reader, writer = await connect(server)
    for i in range(3):
        writer.write(get(f"/api/v1/stores?n={i}"))
        (a,) = await read_answers(reader, 1)
        assert a.status == 200 and a.json()["path"] == f"/api/v1/stores?n={i}"
        assert a.headers[b"content-length"] == str(len(a.body)).encode() and b"date" in a.headers
        assert b"connection" not in a.headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(served):
    server, _ = served
    reader, writer = await connect(server)
    # The first is slow upstream: the second, sent in the same packet, must still come second.
    writer.write(get("/api/v1/stores/slow") + get("/api/v1/stores/fast") + get("/health"))
    answers = await read_answers(reader, 3)
    assert [a.json().get("path", a.json().get("status")) for a in answers] == [
        "/api/v1/stores/slow", "/api/v1/stores/fast", "ok"]
    writer.close()


async def test_http_1_0_and_connection_close_end_the_connection(served):
    server, _ = served
    for request in (b"GET /health HTTP/1.0\r\n\r\n", get("/health", "connection: close\r\n")):
        reader, writer = await connect(server)
        writer.write(request)
        (a,) = await read_answers(reader, 1)
        assert a.status == 200 and a.headers[b"connection"] == b"close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()


async def test_chunked_bodies_and_expect_continue_reach_the_upstream_whole(served):
    server, seen = served
    reader, writer = await connect(server)
    writer.write(b"POST /api/v1/stores HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    (a,) = await read_answers(reader, 1)
    assert a.status == 200 and a.json()["body"] == "hello world"
    writer.write(b"POST /api/v1/stores HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"body")
    (a,) = await read_answers(reader, 1)
    assert a.status == 200 and a.json()["body"] == "body"
    assert [s["body"] for s in seen] == ["hello world", "body"]
    writer.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_over_the_limit_is_a_413_and_never_reaches_the_upstream(served, framing):
    server, seen = served
    reader, writer = await connect(server)
    big = b"x" * 1500
    if framing == "content-length":
        writer.write(b"POST /api/v1/stores HTTP/1.1\r\nhost: x\r\ncontent-length: 1500\r\n\r\n" + big)
    else:
        writer.write(b"POST /api/v1/stores HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 100]), big[i:i + 100]) for i in range(0, 1500, 100))
                     + b"0\r\n\r\n")
    (a,) = await read_answers(reader, 1)
    assert a.status == 413 and a.json()["type"].endswith("/payload-too-large")
    assert a.headers[b"content-type"] == b"application/problem+json" and a.headers[b"connection"] == b"close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert seen == []
    writer.close()


async def test_garbage_is_a_400_problem_and_the_connection_closes(served):
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"this is not http\r\n\r\n")
    (a,) = await read_answers(reader, 1)
    assert a.status == 400 and a.json()["type"].endswith("/bad-request")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_head_has_the_length_but_no_body_and_the_connection_stays_usable(served):
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"HEAD /api/v1/stores HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: " in head.lower()
    writer.write(get("/health"))  # had the HEAD answer carried a body, this answer would be garbled
    (a,) = await read_answers(reader, 1)
    assert a.status == 200 and a.json() == {"status": "ok", "service": "gateway"}
    writer.close()


async def test_percent_encoded_paths_route_decoded_and_travel_as_sent(served):
    server, _ = served
    reader, writer = await connect(server)
    sid = uuid.uuid4()
    writer.write(get(f"/api/v1/%73tores/{sid}?q=a%20b"))
    (a,) = await read_answers(reader, 1)
    assert a.status == 200 and a.json()["path"] == f"/api/v1/%73tores/{sid}?q=a%20b"  # routed to catalog
    writer.close()


async def test_idle_connections_are_closed_after_the_keep_alive_time(served):
    server, _ = served  # keepalive_seconds=1
    reader, writer = await connect(server)
    writer.write(get("/health"))
    await read_answers(reader, 1)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed within ~2 s, not held forever
    assert not server.connections
    writer.close()


async def test_stop_lets_a_request_in_flight_finish(served):
    server, _ = served
    reader, writer = await connect(server)
    writer.write(get("/api/v1/stores/slow"))
    await asyncio.sleep(0.05)  # in flight upstream
    stopping = asyncio.create_task(server.stop())
    (a,) = await read_answers(reader, 1)
    assert a.status == 200 and a.headers[b"connection"] == b"close"
    await stopping
    writer.close()
