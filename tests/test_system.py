"""The whole system, started as `make dev` starts it, answers through the gateway."""

import httpx
import pytest

pytestmark = pytest.mark.e2e


async def test_gateway_ready_reports_every_service_and_replica(system):
    async with httpx.AsyncClient(base_url=system.url) as c:
        r = await c.get("/ready")
    assert r.status_code == 200, r.text
    services = r.json()["services"]
    assert set(services) == {"identity", "catalog", "booking", "payments", "notifications", "webhooks", "audit"}
    assert len(services["booking"]) == 2
    assert all(state == "ready" for reps in services.values() for state in reps.values())


async def test_every_service_answers_health_and_ready_directly(system):
    async with httpx.AsyncClient() as c:
        for proc in system.system.procs:
            assert (await c.get(proc.url + "/health")).json()["status"] == "ok"
            r = await c.get(proc.url + "/ready")
            assert r.status_code == 200, (proc.name, r.text)


async def test_unknown_route_is_a_problem_json_404(system):
    async with httpx.AsyncClient(base_url=system.url) as c:
        r = await c.get("/api/v1/nowhere")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/not-found")
    assert r.headers["x-request-id"]


async def test_docs_and_merged_openapi(system):
    async with httpx.AsyncClient(base_url=system.url) as c:
        docs = await c.get("/docs")
        spec = await c.get("/openapi.json")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "DropSlot API"


async def test_bad_bearer_token_is_refused_by_the_gateway(system):
    async with httpx.AsyncClient(base_url=system.url) as c:
        r = await c.get("/api/v1/reservations", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401
    assert r.json()["type"].endswith("/invalid-token")
