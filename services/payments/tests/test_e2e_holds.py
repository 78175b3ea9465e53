"""Holds that lapse, end to end, on a system of this module's own: the flows depend on time,
so booking's rule minute is 3 s here (a 1-minute hold lapses in 3 s, the payment grace is 3 s)
and the slow test card takes 10 s. The sandbox also runs with its chaos on (half of its
callbacks twice, in shuffled order), so every flow here also shows one effect per fact.
Everything is driven through the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from dropslot_kit.testing import (
    Infra,
    RunningSystem,
    eventually,
    own_system,
    sign_up,
)

from .flows import (
    SLOW,
    SUCCESS,
    PaymentsDb,
    available,
    confirm_card,
    intent_id_of,
    paid_slot,
    payment_of,
    reservation,
    reserve,
    wait_state,
)

pytestmark = pytest.mark.e2e
HOLD = {"hold_minutes": 1}  # 3 s here


@pytest.fixture(scope="module")
def holds_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with own_system(infra, "payh", tmp_path_factory.mktemp("payments-holds"), extra_env={
        "DROPSLOT_BOOKING_MINUTE_SECONDS": "3",
        "DROPSLOT_BOOKING_PAYMENT_GRACE_SECONDS": "3",
        "DROPSLOT_PAYMENTS_SANDBOX_SLOW_PROCESSING_SECONDS": "10",
        "DROPSLOT_PAYMENTS_SANDBOX_DUPLICATE_RATE": "0.5",
        "DROPSLOT_PAYMENTS_SANDBOX_SHUFFLE": "true",
        "DROPSLOT_PAYMENTS_SANDBOX_SHUFFLE_WINDOW_SECONDS": "0.3",
    }) as running:
        yield running


@pytest.fixture
async def api(holds_system: RunningSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=holds_system.api, timeout=20) as client:
        yield client


@pytest.fixture
async def db(holds_system: RunningSystem) -> AsyncIterator[PaymentsDb]:
    d = PaymentsDb(holds_system.settings)
    yield d
    await d.dispose()


async def _free(api: httpx.AsyncClient, shop: dict[str, Any], seats: int) -> bool:
    return await available(api, shop["drop"]["id"], shop["slot"]["id"]) == seats


async def test_unpaid_hold_expires_intent_canceled_seat_freed(api: httpx.AsyncClient, db: PaymentsDb) -> None:
    shop = await paid_slot(api, capacity=1, rule=HOLD)
    customer = await sign_up(api)
    res = (await reserve(api, customer, shop["slot"]["id"])).json()
    payment = await payment_of(api, customer, res["id"])
    await wait_state(api, customer, res["id"], "EXPIRED")
    canceled = await payment_of(api, customer, res["id"], "canceled")
    assert canceled["captured_cents"] == 0
    intent = await db.rows("SELECT status FROM sandbox_intents WHERE id = :i", i=intent_id_of(payment))
    assert intent[0].status == "canceled"
    late = await confirm_card(api, customer, payment["id"], SUCCESS)
    assert late.status_code == 409
    await eventually(lambda: _free(api, shop, 1), timeout=20, what="the seat back")
    other = await sign_up(api)
    assert (await reserve(api, other, shop["slot"]["id"])).status_code == 201


async def test_payment_after_expiry_is_released_when_the_seat_is_gone(api: httpx.AsyncClient, db: PaymentsDb) -> None:
    shop = await paid_slot(api, capacity=1, rule=HOLD)
    late, other = await sign_up(api), await sign_up(api)
    started = time.monotonic()
    res = (await reserve(api, late, shop["slot"]["id"])).json()
    payment = await payment_of(api, late, res["id"])
    assert (await confirm_card(api, late, payment["id"], SLOW)).status_code == 200
    await payment_of(api, late, res["id"], "processing")
    await wait_state(api, late, res["id"], "EXPIRED")
    # Booking held the seat once more (the payment was in flight) before letting it go.
    assert time.monotonic() - started > 4.5
    taken = await reserve(api, other, shop["slot"]["id"])
    assert taken.status_code == 201, taken.text
    # The other customer pays at once, so the seat stays taken (their hold is 3 s too).
    theirs = await payment_of(api, other, taken.json()["id"])
    assert (await confirm_card(api, other, theirs["id"], SUCCESS)).status_code == 200
    await wait_state(api, other, taken.json()["id"], "CONFIRMED")
    released = await payment_of(api, late, res["id"], "canceled", within=40)
    assert released["captured_cents"] == 0
    intent = await db.rows("SELECT status, amount_received FROM sandbox_intents WHERE id = :i",
                           i=intent_id_of(payment))
    assert (intent[0].status, intent[0].amount_received) == ("canceled", 0)
    statuses = [to for _, to, _ in await db.transitions(payment["id"])]
    assert statuses.count("requires_capture") == 1 and statuses[-1] == "canceled"
    assert (await reservation(api, late, res["id"]))["state"] == "EXPIRED"


async def test_payment_after_expiry_gets_the_seat_back_when_one_is_free(api: httpx.AsyncClient) -> None:
    shop = await paid_slot(api, capacity=1, rule=HOLD)
    customer = await sign_up(api)
    res = (await reserve(api, customer, shop["slot"]["id"])).json()
    payment = await payment_of(api, customer, res["id"])
    assert (await confirm_card(api, customer, payment["id"], SLOW)).status_code == 200
    await wait_state(api, customer, res["id"], "EXPIRED")
    confirmed = await wait_state(api, customer, res["id"], "CONFIRMED", within=40)
    assert confirmed["checkin_token"]
    await payment_of(api, customer, res["id"], "succeeded")
    assert await _free(api, shop, 0)


async def test_paying_in_time_under_duplicate_shuffled_callbacks(api: httpx.AsyncClient, db: PaymentsDb) -> None:
    shop = await paid_slot(api, rule={"hold_minutes": 5})
    customer = await sign_up(api)
    res = (await reserve(api, customer, shop["slot"]["id"])).json()
    payment = await payment_of(api, customer, res["id"])
    assert (await confirm_card(api, customer, payment["id"], SUCCESS)).status_code == 200
    await wait_state(api, customer, res["id"], "CONFIRMED")
    await payment_of(api, customer, res["id"], "succeeded")
    await db.quiet(payment)
    await asyncio.sleep(0.5)
    statuses = [to for _, to, _ in await db.transitions(payment["id"])]
    assert statuses.count("requires_capture") == 1 and statuses.count("succeeded") == 1
    # Each event the processor sent (some of them twice) was stored once.
    sent = await db.rows("SELECT count(*) AS n FROM sandbox_events WHERE intent_id = :i", i=intent_id_of(payment))
    stored = await db.rows("SELECT count(*) AS n FROM provider_events WHERE intent_id = :i", i=intent_id_of(payment))
    assert stored[0].n == sent[0].n >= 4
