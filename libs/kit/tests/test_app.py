"""The kit's ServiceApp: direct routes reach their handler before FastAPI, inside the request context."""

from __future__ import annotations

import json
from typing import Any

import httpx
from dropslot_kit import context, telemetry
from dropslot_kit.app import ServiceApp


async def _direct(scope: dict[str, Any], receive: Any, send: Any) -> None:
    ctx = context.current()
    body = json.dumps({"by": "direct", "ip": ctx.actor.ip}).encode()
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _app() -> ServiceApp:
    app = ServiceApp(service="kit-test")

    @app.post("/api/v1/hot")
    async def hot_by_fastapi() -> dict[str, str]:
        return {"by": "fastapi"}

    @app.get("/api/v1/hot")
    async def hot_read() -> dict[str, str]:
        return {"by": "fastapi"}

    app.add_direct_route("POST", "/api/v1/hot", _direct)
    return app


async def test_a_direct_route_answers_its_method_and_path_inside_the_request_context() -> None:
    app = _app()
    before = telemetry.HTTP_REQUESTS.labels("kit-test", "POST", "/api/v1/hot", "201")._value.get()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/api/v1/hot", headers={"x-real-ip": "203.0.113.9", "x-request-id": "req-1"})
        assert r.status_code == 201
        assert r.json() == {"by": "direct", "ip": "203.0.113.9"}
        assert r.headers["x-request-id"] == "req-1"
        # Another method on the same path, and the OpenAPI document, are FastAPI's.
        assert (await client.get("/api/v1/hot")).json() == {"by": "fastapi"}
        assert "/api/v1/hot" in (await client.get("/openapi.json")).json()["paths"]
    after = telemetry.HTTP_REQUESTS.labels("kit-test", "POST", "/api/v1/hot", "201")._value.get()
    assert after == before + 1


async def test_while_tracing_is_on_the_path_goes_through_fastapi(monkeypatch: Any) -> None:
    monkeypatch.setattr(telemetry, "tracing_enabled", lambda: True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as client:
        r = await client.post("/api/v1/hot")
    assert r.status_code == 200 and r.json() == {"by": "fastapi"}
