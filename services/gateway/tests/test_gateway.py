"""The gateway in front of real HTTP upstreams, real Redis, and a JWKS it fetches over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from aiohttp import web
from dropslot_gateway.config import Settings
from dropslot_gateway.main import Gateway
from dropslot_gateway.main import Upstream as Replicas
from dropslot_gateway.ratelimit import RateLimiter
from dropslot_gateway.routes import service_for
from dropslot_gateway.server import GatewayServer
from dropslot_kit.auth import gateway_proof
from dropslot_kit.launcher import free_port
from dropslot_kit.testkeys import JwksServer, TestSigner

PROOF_KEY = "gateway-test-proof-key-" + "x" * 20


class Upstream:
    """A tiny service: echoes what it received; /ready is 200; /slow sleeps."""

    def __init__(self, name: str):
        self.name = name
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def echo(request: web.Request) -> web.Response:
            self.hits += 1
            text = await request.text()
            if request.path == "/api/v1/auth/login" and text.startswith('{"issue"'):  # identity issues a token
                return web.json_response({"access_token": json.loads(text)["issue"], "token_type": "bearer"})
            if request.path.endswith("/slow"):
                await asyncio.sleep(5)
            return web.json_response({
                "upstream": self.name, "path": request.path_qs, "method": request.method,
                "body": text, "headers": dict(request.headers),
            }, status=201 if request.method == "POST" else 200)

        async def ready(_: web.Request) -> web.Response:
            return web.json_response({"status": "ready"})

        app = web.Application()
        app.router.add_get("/ready", ready)
        app.router.add_route("*", "/{tail:.*}", echo)
        self.runner = web.AppRunner(app, shutdown_timeout=2.0)  # a teardown never waits long
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def gw(infra):
    signer = TestSigner()
    jwks = JwksServer(signer)
    await jwks.start()
    b1, b2, ident = Upstream("booking-1"), Upstream("booking-2"), Upstream("identity")
    for u in (b1, b2, ident):
        await u.start()
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(
        upstreams={"booking": [b1.url, b2.url], "identity": [ident.url], "payments": [dead]},
        jwks_url=jwks.url, redis_url=infra.redis_url, upstream_timeout_seconds=1.0,
        rate_limit_user_per_minute=8, rate_limit_ip_per_minute=40, rate_limit_reserve_per_minute=3,
        log_json=False, rate_limit_prefix=f"rl-test:{uuid.uuid4().hex}", trusted_proxies=["127.0.0.0/8"],
        gateway_proof_keys=[PROOF_KEY],
    )
    port = free_port()
    server = GatewayServer(Gateway(settings), "127.0.0.1", port)
    await server.start()
    # A per-test client address keeps per-address budgets of different tests apart.
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                               headers={"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250}"})
    yield {"client": client, "signer": signer, "b1": b1, "b2": b2, "ident": ident, "port": port, "server": server}
    await client.aclose()
    await server.stop()
    for u in (b1, b2, ident):
        await u.stop()
    await jwks.stop()


def test_routes_follow_the_public_api():
    assert service_for("/api/v1/auth/login") == "identity"
    assert service_for("/api/v1/users/me") == "identity"
    assert service_for("/api/v1/stores") == "catalog"
    assert service_for("/api/v1/stores/x/reservations") == "booking"
    assert service_for("/api/v1/stores/x/webhook-endpoints/y") == "webhooks"
    assert service_for("/api/v1/drops/x/slots/generate") == "booking"
    assert service_for("/api/v1/drops/x") == "catalog"
    assert service_for("/api/v1/reservations/x/qr.svg") == "booking"
    assert service_for("/api/v1/payments/providers/sandbox/webhook") == "payments"
    assert service_for("/api/v1/webhook-endpoints/x/events") == "webhooks"
    assert service_for("/api/v1/audit-logs") == "audit"
    assert service_for("/api/v1/notifications") == "notifications"
    assert service_for("/api/v1/storesx") is None
    assert service_for("/elsewhere") is None


async def test_proxies_path_query_body_and_request_id(gw):
    c = gw["client"]
    r = await c.post("/api/v1/auth/register?x=1", content=b'{"a":1}', headers={"X-Request-ID": "req-42",
                                                                             "content-type": "application/json"})
    assert r.status_code == 201
    echoed = r.json()
    assert echoed["path"] == "/api/v1/auth/register?x=1" and echoed["body"] == '{"a":1}'
    assert echoed["headers"]["X-Request-ID"] == "req-42" and r.headers["x-request-id"] == "req-42"
    assert echoed["headers"]["X-Forwarded-For"].startswith("198.51.100.")
    assert echoed["headers"]["X-Real-IP"].startswith("198.51.100.")  # behind a trusted proxy: the caller


async def test_a_request_without_an_id_gets_a_fresh_one_upstream_and_back(gw):
    c = gw["client"]
    seen = set()
    for _ in range(3):
        r = await c.post("/api/v1/auth/register", content=b"{}", headers={"content-type": "application/json"})
        rid = r.headers["x-request-id"]
        assert r.json()["headers"]["X-Request-ID"] == rid
        assert len(rid) == 32 and int(rid, 16) >= 0  # 32 hex digits, as a uuid4's hex
        seen.add(rid)
    assert len(seen) == 3


async def test_answers_carry_their_length_and_head_has_no_body(gw):
    c = gw["client"]
    r = await c.get("/api/v1/slots/1")
    assert r.headers["content-length"] == str(len(r.content)) and "transfer-encoding" not in r.headers
    h = await c.head("/api/v1/slots/1")
    assert h.status_code == 200 and h.content == b"" and int(h.headers["content-length"]) > 0


async def test_client_cannot_choose_its_audited_address(gw):
    r = await gw["client"].get("/api/v1/auth/x", headers={"X-Real-IP": "1.2.3.4"})
    assert r.json()["headers"]["X-Real-IP"] != "1.2.3.4"


async def test_auth_routes_are_not_blocked_by_a_stale_access_token(gw):
    stale = gw["signer"].token(ttl=-600)
    r = await gw["client"].post("/api/v1/auth/refresh", json={}, headers={"Authorization": f"Bearer {stale}"})
    assert r.status_code == 201 and r.json()["upstream"] == "identity"


async def test_balances_booking_replicas_and_skips_a_dead_one(gw):
    c = gw["client"]
    for _ in range(6):
        assert (await c.get("/api/v1/slots/1")).status_code == 200
    assert gw["b1"].hits == 3 and gw["b2"].hits == 3
    await gw["b2"].stop()
    answers = [(await c.get("/api/v1/slots/1")).json()["upstream"] for _ in range(4)]
    assert answers == ["booking-1"] * 4


def test_replicas_with_fewer_requests_in_flight_come_first_and_equals_take_turns():
    replicas = Replicas("booking", ["http://a/", "http://b", "http://c"])
    assert [replicas.order()[0] for _ in range(6)] == ["http://a", "http://b", "http://c"] * 2
    replicas.inflight.update({"http://a": 3, "http://b": 1, "http://c": 2})
    assert replicas.order() == ["http://b", "http://c", "http://a"]
    replicas.inflight.update({"http://a": 0, "http://b": 0, "http://c": 5})
    firsts = [replicas.order()[0] for _ in range(4)]
    assert sorted(firsts) == ["http://a", "http://a", "http://b", "http://b"]
    assert all(o[-1] == "http://c" for o in (replicas.order() for _ in range(3)))


def test_a_replica_just_found_unreachable_comes_last_for_a_while():
    replicas = Replicas("booking", ["http://a", "http://b"], down_seconds=0.05)
    replicas.inflight["http://b"] = 4
    replicas.unreachable("http://a")  # nothing in flight there, yet it is not tried first
    assert all(replicas.order() == ["http://b", "http://a"] for _ in range(3))
    time.sleep(0.06)
    assert replicas.order()[0] == "http://a"  # its time is up: tried again
    replicas.unreachable("http://a")
    replicas.reached("http://a")  # it answered after all
    assert replicas.order()[0] == "http://a"


async def test_a_replica_still_busy_with_a_request_gets_the_next_ones_after_the_others(gw):
    c = gw["client"]
    slow = asyncio.create_task(c.get("/api/v1/slots/slow"))  # held 1 s (the gateway's timeout)
    async with asyncio.timeout(5):
        while gw["b1"].hits + gw["b2"].hits == 0:
            await asyncio.sleep(0.01)
    busy, free = ("b1", "b2") if gw["b1"].hits else ("b2", "b1")
    answers = [(await c.get("/api/v1/slots/1")).json()["upstream"] for _ in range(4)]
    assert answers == [gw[free].name] * 4 and gw[busy].hits == 1
    assert (await slow).status_code == 504
    # Once it has answered, the two take turns again.
    answers = [(await c.get("/api/v1/slots/1")).json()["upstream"] for _ in range(4)]
    assert sorted(answers) == ["booking-1", "booking-1", "booking-2", "booking-2"]


async def test_down_service_is_a_fast_502_and_slow_one_a_bounded_504(gw):
    c = gw["client"]
    started = time.monotonic()
    r = await c.get("/api/v1/payments/abc")
    assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/bad-gateway")
    started = time.monotonic()
    r = await c.get("/api/v1/slots/slow")
    assert r.status_code == 504 and r.json()["type"].endswith("/gateway-timeout")
    assert time.monotonic() - started < 3


async def test_ready_reports_every_service(gw):
    r = await gw["client"].get("/ready")
    assert r.status_code == 503  # payments is down
    services = r.json()["services"]
    assert set(services) == {"booking", "identity", "payments"}
    assert all(v == "ready" for v in services["booking"].values())
    assert next(iter(services["payments"].values())).startswith("down")


async def test_tokens_are_checked_before_routing(gw):
    c, signer = gw["client"], gw["signer"]
    good = signer.token()
    assert (await c.get("/api/v1/slots/1", headers={"Authorization": f"Bearer {good}"})).status_code == 200
    before = gw["b1"].hits + gw["b2"].hits
    for bad in (TestSigner(kid=signer.kid).token(), signer.token(ttl=-30), good[:-4] + "AAAA", "x.y.z"):
        r = await c.get("/api/v1/slots/1", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and r.json()["type"].endswith("/invalid-token")
    assert gw["b1"].hits + gw["b2"].hits == before  # refused requests never reached booking


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def test_a_checked_token_travels_with_the_gateways_proof_and_a_client_cannot_send_one(gw):
    c, signer = gw["client"], gw["signer"]
    token = signer.token()
    forged = gateway_proof(PROOF_KEY, "a token of my own making")
    r = await c.get("/api/v1/slots/1", headers={"Authorization": f"Bearer {token}",
                                                "X-DropSlot-Gateway-Proof": forged})
    assert _lower(r.json()["headers"])["x-dropslot-gateway-proof"] == gateway_proof(PROOF_KEY, token)
    # Without a token (or on identity's own /auth routes, which it does not check) there is no
    # proof, and what the client sent is dropped.
    r = await c.get("/api/v1/slots/1", headers={"X-DropSlot-Gateway-Proof": forged})
    assert "x-dropslot-gateway-proof" not in _lower(r.json()["headers"])
    r = await c.post("/api/v1/auth/login", headers={"Authorization": f"Bearer {token}",
                                                    "X-DropSlot-Gateway-Proof": forged})
    assert "x-dropslot-gateway-proof" not in _lower(r.json()["headers"])


async def clear_of_the_minute_edge(margin: float = 8.0) -> None:
    """Budgets count per fixed minute: a test that counts up to a limit must not straddle the
    minute's end (seen in CI: 42 requests from :59.935 to :00.083 found a fresh budget)."""
    into = time.time() % 60
    if into > 60 - margin:
        await asyncio.sleep(60 - into + 0.05)


async def test_rate_limits_per_user_with_retry_after(gw):
    await clear_of_the_minute_edge()
    c, signer = gw["client"], gw["signer"]
    h = {"Authorization": f"Bearer {signer.token()}"}
    codes = [(await c.get("/api/v1/slots/1", headers=h)).status_code for _ in range(10)]
    assert codes[:8] == [200] * 8 and codes[8:] == [429, 429]
    r = await c.get("/api/v1/slots/1", headers=h)
    assert r.headers["content-type"] == "application/problem+json"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # another user is not affected
    assert (await c.get("/api/v1/slots/1", headers={"Authorization": f"Bearer {signer.token()}"})).status_code == 200


async def test_reservations_have_a_stricter_budget(gw):
    await clear_of_the_minute_edge()
    c, signer = gw["client"], gw["signer"]
    h = {"Authorization": f"Bearer {signer.token()}"}
    codes = [(await c.post("/api/v1/reservations", json={}, headers=h)).status_code for _ in range(5)]
    assert codes == [201, 201, 201, 429, 429]


async def test_rate_limits_per_address_without_token(gw):
    await clear_of_the_minute_edge()
    c = gw["client"]
    codes = [(await c.get("/api/v1/slots/1")).status_code for _ in range(42)]
    assert codes.count(429) == 2 and codes[-1] == 429
    # behind a trusted proxy the budget is the caller's, not the proxy's
    other = {"X-Forwarded-For": "203.0.113.7"}
    assert (await c.get("/api/v1/slots/1", headers=other)).status_code == 200


async def test_forwarded_for_is_ignored_from_untrusted_peers(infra):
    gw = Gateway(Settings(trusted_proxies=["10.0.0.0/8"], log_json=False))
    assert gw.client_ip("127.0.0.1", b"203.0.113.7") == "127.0.0.1"
    assert gw.client_ip("10.1.2.3", b"203.0.113.7, 10.9.9.9") == "203.0.113.7"


async def test_oversized_body_is_a_413_problem_and_never_reaches_the_service(gw):
    before = gw["b1"].hits + gw["b2"].hits
    r = await gw["client"].post("/api/v1/reservations", content=b"x" * 1_100_000)
    assert r.status_code == 413 and r.json()["type"].endswith("/payload-too-large")
    assert gw["b1"].hits + gw["b2"].hits == before


async def test_limits_are_shared_between_replicas_through_redis(infra):
    """Two gateway replicas' limiters on one Redis: a budget spent on one is refused on the other."""
    await clear_of_the_minute_edge()
    prefix = f"rl-test:{uuid.uuid4().hex}"
    a, b = RateLimiter(infra.redis_url, prefix), RateLimiter(infra.redis_url, prefix)
    try:
        assert [a.hit([("user:u", 5)]) for _ in range(5)] == [None] * 5
        await a.sync()
        assert b.hit([("user:u", 5)]) is None  # b has not heard yet: the bounded overshoot
        await b.sync()  # pushes its own count, learns the global 6
        wait = b.hit([("user:u", 5)])
        assert wait is not None and 1 <= wait <= 60
        assert b.hit([("user:other", 5)]) is None  # per key
        keys = await a.redis.keys(f"{prefix}:*")
        assert [k.decode().rsplit(":", 1)[0] for k in keys] == [f"{prefix}:user:u"]
        assert int(await a.redis.get(keys[0])) == 6
        assert 0 < await a.redis.ttl(keys[0]) <= 61  # a counter lives one window (and a second)
    finally:
        await a.close()
        await b.close()


async def test_limits_hold_per_replica_while_redis_is_unreachable():
    await clear_of_the_minute_edge()
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", "rl-test:down")
    try:
        codes = []
        for _ in range(6):
            codes.append(limiter.hit([("user:u", 3)]))
            await limiter.sync()  # fails: nothing listens there
        assert codes[:3] == [None] * 3 and all(c is not None for c in codes[3:])
    finally:
        await limiter.close()


async def test_requests_counted_while_a_sync_is_in_flight_still_count(infra):
    await clear_of_the_minute_edge()
    limiter = RateLimiter(infra.redis_url, f"rl-test:{uuid.uuid4().hex}")
    try:
        assert [limiter.hit([("user:u", 3)]) for _ in range(3)] == [None] * 3
        syncing = asyncio.create_task(limiter.sync())
        await asyncio.sleep(0)  # the sync has taken the counts and is waiting for Redis
        assert limiter.hit([("user:u", 3)]) is not None  # the fourth is over, round trip or not
        await syncing
        assert limiter.hit([("user:u", 3)]) is not None
    finally:
        await limiter.close()


async def test_a_token_identity_issues_through_the_gateway_is_known_at_its_first_request(gw):
    """Signed by a key the JWKS does not publish, so only the gateway's memory of identity's
    answer lets it through (and the booking upstream gets the gateway's proof with it)."""
    c = gw["client"]
    token = TestSigner().token(uuid.uuid4())
    assert (await c.get("/api/v1/slots/1", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    login = await c.post("/api/v1/auth/login", json={"issue": token})
    assert login.status_code == 200 and login.json()["access_token"] == token
    r = await c.get("/api/v1/slots/1", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert _lower(r.json()["headers"])["x-dropslot-gateway-proof"] == gateway_proof(PROOF_KEY, token)
