"""Fixtures for catalog's tests.

`client` runs every API scenario twice: `direct` against an in-process catalog app whose
tokens come from a JWKS this suite controls (so it runs without identity), and `gateway`
(marked e2e) against the whole system through the gateway, with real sign-ups. The
scenarios are the same code; only where requests go and where tokens come from differ.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dropslot_catalog.config import Settings
from dropslot_catalog.main import create_app
from dropslot_contracts import Envelope
from dropslot_kit.broker import envelopes_in
from dropslot_kit.testing import sign_up


# --- tokens this suite signs, and the JWKS that vouches for them ---------------------------------
@dataclass
class TokenIssuer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    kid: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    url: str = ""

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}

    def mint(self, user_id: uuid.UUID, roles: list[dict[str, Any]] | None = None, ttl: int = 900) -> str:
        now = int(time.time())
        claims = {"iss": "dropslot-identity", "aud": "dropslot", "sub": str(user_id), "typ": "access",
                  "roles": roles or [{"code": "customer", "store_id": None}], "iat": now, "exp": now + ttl,
                  "email": f"{user_id.hex[:8]}@example.com", "email_verified": True}
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})


@pytest.fixture(scope="session")
async def issuer() -> AsyncIterator[TokenIssuer]:
    iss = TokenIssuer()
    app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(iss.jwks())

    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    iss.url = f"http://127.0.0.1:{port}/jwks.json"
    yield iss
    await runner.cleanup()


@pytest.fixture(scope="session")
def catalog_settings(test_settings: Any, issuer: TokenIssuer) -> Settings:
    base = test_settings.model_dump(exclude={"service"})
    # This app and the `system`'s catalog are two replicas of one catalog (same database,
    # broker namespace and cache keys), so their queue declarations must agree: the retry
    # delays are those `dropslot_kit.testing.start_system` gives the system.
    return Settings(**{**base, "jwks_url": issuer.url, "catalog_scheduler_tick_seconds": 0.2,
                       "retry_delays_ms": [200, 500, 1000], "log_json": False, "log_level": "WARNING"})


@pytest.fixture(scope="session")
async def catalog_app(catalog_settings: Settings) -> AsyncIterator[Any]:
    """The catalog service in this process: its lifespan runs the broker, relay, consumers
    and scheduler against this session's database and broker namespace."""
    app = create_app(catalog_settings)
    async with app.router.lifespan_context(app):
        yield app


# --- one client shape for both modes -------------------------------------------------------------
@dataclass
class Api:
    http: httpx.AsyncClient
    make_user: Callable[[], Awaitable[dict[str, Any]]]
    mode: str

    async def user(self) -> dict[str, Any]:
        return await self.make_user()

    async def store(self, owner: dict[str, Any], **body: Any) -> dict[str, Any]:
        slug = f"store-{uuid.uuid4().hex[:10]}"
        r = await self.http.post("/stores", json={"name": slug, "slug": slug, **body}, headers=owner["headers"])
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def branch(self, owner: dict[str, Any], store: dict[str, Any], **body: Any) -> dict[str, Any]:
        payload = {"name": "Main", "address": "1 Main St", "lat": 52.52, "lng": 13.405, "phone": "+49 30 1234567",
                   "opening_hours": {"mon": [["09:00", "18:00"]]}, **body}
        r = await self.http.post(f"/stores/{store['id']}/branches", json=payload, headers=owner["headers"])
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def product(self, owner: dict[str, Any], store: dict[str, Any], **body: Any) -> dict[str, Any]:
        payload = {"name": "Sneaker", "sku": f"SKU-{uuid.uuid4().hex[:8]}", "description": "A shoe",
                   "images": ["https://img.example.com/a.png"], "price_cents": 12900, "currency": "EUR",
                   "is_active": True, **body}
        r = await self.http.post(f"/stores/{store['id']}/products", json=payload, headers=owner["headers"])
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def drop(self, owner: dict[str, Any], store: dict[str, Any], product: dict[str, Any],
                   **body: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        payload = {"product_id": product["id"], "name": "Launch", "starts_at": iso(now + timedelta(hours=1)),
                   "ends_at": iso(now + timedelta(hours=5)), **body}
        r = await self.http.post(f"/stores/{store['id']}/drops", json=payload, headers=owner["headers"])
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def publish(self, owner: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(f"/drops/{drop['id']}/publish", headers=owner["headers"])
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def shop(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """An owner with a store, a branch and a product."""
        owner = await self.user()
        store = await self.store(owner)
        branch = await self.branch(owner, store)
        product = await self.product(owner, store)
        return owner, store, branch, product


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(params=["direct", pytest.param("gateway", marks=pytest.mark.e2e)])
def target(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """Where requests go. Resolved in a plain (sync) fixture: the session fixtures behind
    it run `asyncio.run`, which cannot happen inside a running loop."""
    if request.param == "direct":
        return "direct", request.getfixturevalue("catalog_app")
    return "gateway", request.getfixturevalue("system")


@contextlib.asynccontextmanager
async def _direct(app: Any, issuer: TokenIssuer) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://catalog.test/api/v1", timeout=20) as http:

        async def make_user() -> dict[str, Any]:
            uid = uuid.uuid4()
            return {"id": str(uid), "headers": {"Authorization": f"Bearer {issuer.mint(uid)}"}}

        yield Api(http, make_user, "direct")


@pytest.fixture
async def direct_api(catalog_app: Any, issuer: TokenIssuer) -> AsyncIterator[Api]:
    """The in-process catalog only (integration tests that also look into the database)."""
    async with _direct(catalog_app, issuer) as api:
        yield api


@pytest.fixture
async def api(target: tuple[str, Any], issuer: TokenIssuer) -> AsyncIterator[Api]:
    mode, where = target
    if mode == "direct":
        async with _direct(where, issuer) as api:
            yield api
    else:
        async with httpx.AsyncClient(base_url=where.api, timeout=20) as http:

            async def make_user() -> dict[str, Any]:
                return await sign_up(http)

            yield Api(http, make_user, "gateway")


# --- the events catalog publishes, read from the real broker -------------------------------------
class EventTap:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def of(self, type_: str, **match: Any) -> list[Envelope]:
        out = []
        for e in self.envelopes:
            if e.type != type_:
                continue
            if all(_dig(e.data, k) == v for k, v in match.items()):
                out.append(e)
        return out


def _dig(data: dict[str, Any], path: str) -> Any:
    cur: Any = data
    for part in path.split("__"):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


@pytest.fixture(scope="session")
async def events(test_settings: Any) -> AsyncIterator[EventTap]:
    """Every catalog.* event published in this session's namespace, via an exclusive queue."""
    tap = EventTap()
    conn = await aio_pika.connect_robust(test_settings.rabbit_url)
    ch = await conn.channel()
    exchange = await ch.declare_exchange(f"{test_settings.broker_namespace}.events", aio_pika.ExchangeType.TOPIC,
                                         durable=True)
    queue = await ch.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="catalog.#")

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with msg.process():
            tap.envelopes.extend(envelopes_in(msg.body))

    tag = await queue.consume(on_message)
    yield tap
    with contextlib.suppress(Exception):
        await queue.cancel(tag)
    await conn.close()


__all__ = ["Api", "EventTap", "TokenIssuer", "iso"]
