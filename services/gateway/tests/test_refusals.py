"""The sold-out shortcut (gateway refusals.py) in front of a small stand-in for booking that speaks
booking's side of it: sold-out answers marked repeatable, and the key lookup behind the gateway
proof. The real booking behind the real gateway is in booking's e2e tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from aiohttp import web
from dropslot_gateway.config import Settings
from dropslot_gateway.main import Gateway
from dropslot_gateway.server import GatewayServer
from dropslot_kit import refusals
from dropslot_kit.auth import PROOF_HEADER, body_proof
from dropslot_kit.launcher import free_port
from dropslot_kit.testkeys import JwksServer, TestSigner

PROOF_KEY = "refusals-test-proof-key-" + "x" * 20
SLOT = str(uuid.uuid4())
SOLD_OUT = json.dumps({"type": "https://dropslot.dev/problems/sold-out", "title": "Slot is sold out",
                       "status": 409, "detail": "every seat of this slot is taken",
                       "instance": "/api/v1/reservations", "waitlist_open": True, "slot_id": SLOT}).encode()


class FakeBooking:
    """Refuses every reservation as sold out, marked repeatable for `seconds`; knows the
    (user, key) pairs in `stored`; counts what reaches it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.reserves = 0
        self.lookups: list[list[list[str]]] = []
        self.stored: set[tuple[str, str]] = set()
        self.seconds = 30.0
        self.verified_only = False
        self.lookup_status = 200
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def reserve(request: web.Request) -> web.Response:
            self.reserves += 1
            if any(request.headers.get("Idempotency-Key") == key for _, key in self.stored):
                return web.json_response({"id": "replayed"}, status=201)
            name, value = refusals.directive(SLOT, self.seconds, self.verified_only)
            return web.Response(status=409, body=SOLD_OUT, content_type="application/problem+json",
                                headers={name.decode(): value.decode()})

        async def lookup(request: web.Request) -> web.Response:
            text = await request.text()
            if request.headers.get(PROOF_HEADER) != body_proof(PROOF_KEY, text):
                return web.json_response({"status": 403}, status=403)
            if self.lookup_status != 200:
                return web.json_response({"status": self.lookup_status}, status=self.lookup_status)
            pairs = json.loads(text)["keys"]
            self.lookups.append(pairs)
            return web.json_response({"found": [i for i, (u, k) in enumerate(pairs) if (u, k) in self.stored]})

        async def cancel(_: web.Request) -> web.Response:
            return web.json_response({"state": "CANCELLED"})

        app = web.Application()
        app.router.add_post("/api/v1/reservations", reserve)
        app.router.add_post(refusals.LOOKUP_PATH, lookup)
        app.router.add_post("/api/v1/reservations/{id}/cancel", cancel)
        self.runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def setup(infra: Any, request: pytest.FixtureRequest) -> Any:
    signer = TestSigner()
    jwks = JwksServer(signer)
    await jwks.start()
    booking = FakeBooking()
    await booking.start()
    settings = Settings(upstreams={"booking": [booking.url]}, jwks_url=jwks.url, redis_url=infra.redis_url,
                        log_json=False, rate_limit_prefix=f"rl-test:{uuid.uuid4().hex}",
                        gateway_proof_keys=[PROOF_KEY], **getattr(request, "param", {}))
    port = free_port()
    server = GatewayServer(Gateway(settings), "127.0.0.1", port)
    await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=10)
    yield {"client": client, "signer": signer, "booking": booking, "gateway": server.gateway}
    await client.aclose()
    await server.stop()
    await booking.stop()
    await jwks.stop()


def reserve(client: httpx.AsyncClient, token: str, body: Any = None, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}", **({"Idempotency-Key": key} if key is not None else {})}
    return client.post("/reservations", json={"slot_id": SLOT} if body is None else body, headers=headers)


async def test_a_marked_refusal_is_repeated_byte_for_byte_and_the_mark_never_leaves(setup: Any) -> None:
    c, booking, token = setup["client"], setup["booking"], setup["signer"].token()
    first = await reserve(c, token)
    assert first.status_code == 409 and booking.reserves == 1
    for _ in range(5):
        r = await reserve(c, token)
        assert (r.status_code, r.content, r.headers["content-type"]) == (409, SOLD_OUT, "application/problem+json")
        assert "x-dropslot-repeatable-refusal" not in r.headers and r.headers["x-request-id"]
    assert "x-dropslot-repeatable-refusal" not in first.headers
    assert booking.reserves == 1  # the five were answered by the gateway


@pytest.mark.parametrize("setup", [{"repeat_refusals": False}], indirect=True)
async def test_with_repeat_refusals_off_every_request_is_forwarded(setup: Any) -> None:
    c, booking, token = setup["client"], setup["booking"], setup["signer"].token()
    for _ in range(3):
        r = await reserve(c, token)
        assert r.status_code == 409 and "x-dropslot-repeatable-refusal" not in r.headers
    assert booking.reserves == 3


async def test_requests_booking_might_answer_otherwise_are_forwarded(setup: Any) -> None:
    c, booking, token = setup["client"], setup["booking"], setup["signer"].token()
    await reserve(c, token)
    assert booking.reserves == 1
    forwarded = [
        reserve(c, token, {"slot_id": SLOT, "customer_note": "hi"}),  # notes are booking's to validate
        reserve(c, token, {"slot_id": SLOT.upper()}),  # not the id booking marked
        reserve(c, token, {"slot_id": str(uuid.uuid4())}),  # another slot
        reserve(c, token, [SLOT]),  # not an object: booking's 422
        reserve(c, token, key="k" * 256),  # too long a key: booking's 422
    ]
    for request in forwarded:
        await request
    assert booking.reserves == 6
    r = await c.post("/reservations", content=b"not json", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 409 and booking.reserves == 7
    await c.post("/reservations", json={"slot_id": SLOT})  # no token: booking's 401
    assert booking.reserves == 8


async def test_a_key_with_a_stored_answer_is_forwarded_and_lookups_are_shared(setup: Any) -> None:
    c, booking, signer = setup["client"], setup["booking"], setup["signer"]
    user = uuid.uuid4()
    token = signer.token(user)
    booking.stored.add((str(user), "paid-for"))
    await reserve(c, token)
    assert booking.reserves == 1
    r = await reserve(c, token, key="paid-for")  # the retry of a reservation that succeeded
    assert r.status_code == 201 and r.json() == {"id": "replayed"} and booking.reserves == 2
    answers = await asyncio.gather(*(reserve(c, signer.token(), key=uuid.uuid4().hex) for _ in range(40)))
    assert {a.status_code for a in answers} == {409} and booking.reserves == 2
    asked = sum(len(batch) for batch in booking.lookups)
    assert asked == 41 and len(booking.lookups) < 41  # every key asked about, in fewer calls


async def test_when_the_lookup_fails_the_request_is_forwarded(setup: Any) -> None:
    c, booking, token = setup["client"], setup["booking"], setup["signer"].token()
    await reserve(c, token)
    booking.lookup_status = 503
    r = await reserve(c, token, key="k1")
    assert r.status_code == 409 and booking.reserves == 2
    r = await reserve(c, token)  # no key: nothing to ask
    assert r.status_code == 409 and booking.reserves == 2


async def test_a_verified_only_refusal_is_repeated_only_to_verified_people(setup: Any) -> None:
    c, booking, signer = setup["client"], setup["booking"], setup["signer"]
    booking.verified_only = True
    await reserve(c, signer.token())
    assert booking.reserves == 1
    await reserve(c, signer.token())  # unverified: booking answers email-not-verified
    assert booking.reserves == 2
    await reserve(c, signer.token(email_verified=True))
    assert booking.reserves == 2


async def test_the_refusal_lasts_as_booking_said_and_a_change_through_the_gateway_ends_it(setup: Any) -> None:
    c, booking, token = setup["client"], setup["booking"], setup["signer"].token()
    booking.seconds = 0.2
    await reserve(c, token)
    await reserve(c, token)
    assert booking.reserves == 1
    await asyncio.sleep(0.25)
    booking.seconds = 30
    await reserve(c, token)
    assert booking.reserves == 2  # forwarded, and learned again, for 30 s now
    await reserve(c, token)
    assert booking.reserves == 2
    r = await c.post(f"/reservations/{uuid.uuid4()}/cancel", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    await reserve(c, token)
    assert booking.reserves == 3


def test_the_mark_is_read_only_as_written() -> None:
    name, value = refusals.directive(SLOT, 0.25, True)
    assert name == refusals.HEADER and refusals.parse(value) == (SLOT, 0.25, True)
    assert refusals.parse(refusals.directive(SLOT, 1.5, False)[1]) == (SLOT, 1.5, False)
    for bad in (b"", SLOT.encode(), b"%s 0.25" % SLOT.encode(), b"%s x 1" % SLOT.encode(),
                b"%s 0.25 2" % SLOT.encode(), b"%s 0 1" % SLOT.encode(), b"%s -1 1" % SLOT.encode(),
                b"%s 3600 1" % SLOT.encode(), b"%s nan 1" % SLOT.encode()):
        assert refusals.parse(bad) is None, bad
