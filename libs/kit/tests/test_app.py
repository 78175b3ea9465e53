"""The kit's ServiceApp: direct routes reach their handler before FastAPI, inside the request
context, under any ASGI server and, with the kit's protocol, straight from uvicorn's parser."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
import httpx
import pytest
import uvicorn
from dropslot_kit import context, telemetry
from dropslot_kit.app import DirectAnswer, DirectRequest, ServiceApp
from dropslot_kit.launcher import free_port
from dropslot_kit.serving import DirectHttpProtocol


async def _direct(req: DirectRequest) -> DirectAnswer:
    ctx = context.current()
    if req.body == b"slow":
        await asyncio.sleep(0.3)
    body = json.dumps({"by": "direct", "ip": ctx.actor.ip, "body": req.body.decode(), "path": req.path}).encode()
    return 201, [(b"content-type", b"application/json")], body


async def _item(req: DirectRequest) -> DirectAnswer:
    return 200, [(b"content-type", b"application/json")], json.dumps({"by": "direct", "id": req.param}).encode()


def _app() -> ServiceApp:
    app = ServiceApp(service="kit-test")

    @app.post("/api/v1/hot")
    async def hot_by_fastapi() -> dict[str, str]:
        return {"by": "fastapi"}

    @app.get("/api/v1/hot")
    async def hot_read() -> dict[str, str]:
        return {"by": "fastapi"}

    @app.get("/api/v1/items/{item_id}")
    async def item_by_fastapi(item_id: str) -> dict[str, str]:
        return {"by": "fastapi", "id": item_id}

    @app.get("/api/v1/items/{item_id}/parts")
    async def parts(item_id: str) -> dict[str, str]:
        return {"by": "fastapi", "parts of": item_id}

    app.add_direct_route("POST", "/api/v1/hot", _direct, max_body=100)
    app.add_direct_route("GET", "/api/v1/items/{item_id}", _item)
    return app


def test_a_direct_route_has_at_most_one_parameter_and_only_last() -> None:
    app = ServiceApp(service="kit-test")
    for bad in ("/api/v1/{a}/items", "/api/v1/{a}/{b}", "/api/v1/x{a}"):
        with pytest.raises(ValueError, match="one parameter"):
            app.add_direct_route("GET", bad, _item)


async def test_a_direct_route_with_a_parameter_takes_one_more_segment_only() -> None:
    app = _app()
    label = telemetry.HTTP_REQUESTS.labels("kit-test", "GET", "/api/v1/items/{item_id}", "200")
    before = float(label._value.get())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/api/v1/items/a%20b")).json() == {"by": "direct", "id": "a b"}
        # A deeper path, the bare prefix and another method are FastAPI's.
        assert (await client.get("/api/v1/items/7/parts")).json() == {"by": "fastapi", "parts of": "7"}
        assert (await client.get("/api/v1/items/")).status_code == 404
        assert (await client.post("/api/v1/items/7")).status_code == 405  # FastAPI answers other methods
    # Its metrics are labelled with the template, not with each path (one series, not one per id).
    assert float(label._value.get()) == before + 1


def _count(status: str) -> float:
    return float(telemetry.HTTP_REQUESTS.labels("kit-test", "POST", "/api/v1/hot", status)._value.get())


async def test_a_direct_route_answers_its_method_and_path_inside_the_request_context() -> None:
    app = _app()
    before = _count("201")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/api/v1/hot", content=b"hi",
                              headers={"x-real-ip": "203.0.113.9", "x-request-id": "req-1"})
        assert r.status_code == 201
        assert r.json() == {"by": "direct", "ip": "203.0.113.9", "body": "hi", "path": "/api/v1/hot"}
        assert r.headers["x-request-id"] == "req-1" and r.headers["content-length"] == str(len(r.content))
        # Another method on the same path, and the OpenAPI document, are FastAPI's.
        assert (await client.get("/api/v1/hot")).json() == {"by": "fastapi"}
        assert "/api/v1/hot" in (await client.get("/openapi.json")).json()["paths"]
        big = await client.post("/api/v1/hot", content=b"x" * 101)
        assert big.status_code == 413 and big.json()["type"].endswith("/payload-too-large")
    assert _count("201") == before + 1


async def test_while_tracing_is_on_the_path_goes_through_fastapi(monkeypatch: Any) -> None:
    monkeypatch.setattr(telemetry, "tracing_enabled", lambda: True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        r = await client.post("/api/v1/hot")
    assert r.status_code == 200 and r.json() == {"by": "fastapi"}


# --- the kit's protocol: uvicorn serving direct routes without ASGI ------------------------------
@pytest.fixture
async def served():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, http=DirectHttpProtocol,
                                           log_level="warning", lifespan="off", timeout_keep_alive=1,
                                           proxy_headers=False))  # as the launcher runs services
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield port, server
    server.should_exit = True
    await task


class _Answers:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self.headers, self.body))
        self.headers, self.body = {}, b""


async def _exchange(port: int, raw: bytes, n: int) -> tuple[list[tuple[int, dict[bytes, bytes], bytes]], bool]:
    """Send raw bytes on a new connection; the n answers, and whether the server then closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    answers = _Answers()
    while len(answers.done) < n:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "closed before every answer came"
        answers.parser.feed_data(data)
    try:
        closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
    except TimeoutError:
        closed = False
    writer.close()
    return answers.done, closed


def _post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /api/v1/hot HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_the_protocol_answers_direct_routes_with_keep_alive_and_context(served, monkeypatch) -> None:
    port, _ = served
    through_asgi: list[str] = []
    asgi = ServiceApp.__call__

    async def spy(self: ServiceApp, scope: dict[str, Any], receive: Any, send: Any) -> None:
        through_asgi.append(f"{scope['method']} {scope['path']}")
        await asgi(self, scope, receive, send)

    monkeypatch.setattr(ServiceApp, "__call__", spy)
    before = _count("201")
    answers, closed = await _exchange(port, _post(b"one", b"x-real-ip: 198.51.100.4\r\nx-request-id: r-9\r\n"), 1)
    (status, headers, body), = answers
    assert status == 201 and json.loads(body) == {"by": "direct", "ip": "198.51.100.4", "body": "one",
                                                  "path": "/api/v1/hot"}
    assert headers[b"x-request-id"] == b"r-9" and headers[b"content-length"] == str(len(body)).encode()
    assert b"date" in headers and not closed  # uvicorn's default headers; the connection is kept
    assert _count("201") == before + 1
    assert through_asgi == []  # straight from the parser, no ASGI call
    answers, _ = await _exchange(port, b"GET /api/v1/hot HTTP/1.1\r\nhost: t\r\n\r\n", 1)
    assert json.loads(answers[0][2]) == {"by": "fastapi"} and through_asgi == ["GET /api/v1/hot"]
    answers, _ = await _exchange(port, b"GET /api/v1/items/x%2Fy HTTP/1.1\r\nhost: t\r\n\r\n", 1)
    assert answers[0][0] == 404  # decoded, it is two segments: not the direct route's, and FastAPI has none
    answers, _ = await _exchange(port, b"GET /api/v1/items/%C3%A9 HTTP/1.1\r\nhost: t\r\n\r\n", 1)
    assert json.loads(answers[0][2]) == {"by": "direct", "id": "é"}
    assert through_asgi == ["GET /api/v1/hot", "GET /api/v1/items/x/y"]


async def test_pipelined_requests_behind_a_direct_one_are_answered_in_order(served) -> None:
    port, _ = served
    # A slow direct request, then a FastAPI one, then a direct one, all in one packet.
    raw = _post(b"slow") + b"GET /api/v1/hot HTTP/1.1\r\nhost: t\r\n\r\n" + _post(b"last")
    answers, _ = await _exchange(port, raw, 3)
    assert [json.loads(body).get("body", json.loads(body)["by"]) for _, _, body in answers] == [
        "slow", "fastapi", "last"]


async def test_connection_close_http_1_0_and_an_oversized_body(served) -> None:
    port, _ = served
    answers, closed = await _exchange(port, _post(b"bye", b"connection: close\r\n"), 1)
    assert answers[0][0] == 201 and answers[0][1][b"connection"] == b"close" and closed
    answers, closed = await _exchange(port, b"POST /api/v1/hot HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi", 1)
    assert answers[0][0] == 201 and closed
    answers, closed = await _exchange(port, _post(b"x" * 500), 1)
    assert answers[0][0] == 413 and json.loads(answers[0][2])["type"].endswith("/payload-too-large") and not closed


async def test_expect_continue_and_chunked_bodies_reach_the_direct_route(served) -> None:
    port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/v1/hot HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"abc")
    writer.close()
    answers, _ = await _exchange(port, b"POST /api/v1/hot HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n", 1)
    assert json.loads(answers[0][2])["body"] == "abc"


async def test_shutdown_finishes_a_direct_request_in_flight_and_closes(served) -> None:
    port, server = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post(b"slow"))
    await asyncio.sleep(0.1)
    server.should_exit = True
    answers = _Answers()
    while not answers.done:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data
        answers.parser.feed_data(data)
    status, headers, _ = answers.done[0]
    assert status == 201 and headers[b"connection"] == b"close"
    writer.close()
