"""A change in one booking replica reaches the other replica's slot cache at once (service
slotnews), on a system of this module's own whose replicas trust a slot read for 30 s: without
the announcement, the other replica would go on refusing a freed seat for that long. Requests go
straight to the two replicas, so which one answers is known."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from dropslot_kit.testing import Infra, RunningSystem, eventually, own_system, sign_up

from .test_e2e import live_drop, make_slot, slug

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def news_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with own_system(infra, "bnews", tmp_path_factory.mktemp("booking-slot-news"), booking_replicas=2,
                    extra_env={"DROPSLOT_BOOKING_SLOT_CACHE_SECONDS": "30"}) as running:
        yield running


@pytest.fixture
async def clients(news_system: RunningSystem) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with (httpx.AsyncClient(base_url=news_system.api, timeout=20) as gateway,
                httpx.AsyncClient(base_url=news_system.service_url("booking-1") + "/api/v1", timeout=20) as one,
                httpx.AsyncClient(base_url=news_system.service_url("booking-2") + "/api/v1", timeout=20) as two):
        yield {"gateway": gateway, "one": one, "two": two}


async def _sold_out_slot(c: dict[str, httpx.AsyncClient]) -> tuple[dict[str, Any], ...]:
    """A slot of one seat, taken by `first` through replica one (its reservation is returned);
    `second` refused by replica two, which now holds the slot as sold out in its cache."""
    owner, first, second = [await sign_up(c["gateway"]) for _ in range(3)]
    _, drop = await live_drop(c["gateway"], owner)
    # Starting in three hours: the customer may cancel until an hour before (the rule's default).
    slot = await make_slot(c["gateway"], owner, drop, capacity=1, start_in=timedelta(hours=3))
    r = await c["one"].post("/reservations", headers=first["headers"], json={"slot_id": slot["id"]})
    assert r.status_code == 201, r.text
    taken = r.json()
    r = await c["two"].post("/reservations", headers=second["headers"], json={"slot_id": slot["id"]})
    assert r.status_code == 409 and slug(r) == "sold-out", r.text
    return owner, first, second, slot, taken


async def _reserved_through_two(c: dict[str, httpx.AsyncClient], who: dict[str, Any], slot: dict[str, Any]) -> None:
    async def reserved() -> bool:
        r = await c["two"].post("/reservations", headers=who["headers"], json={"slot_id": slot["id"]})
        return r.status_code == 201

    await eventually(reserved, timeout=3, interval=0.05, what="replica two to see the freed seat")


async def test_a_seat_cancelled_in_one_replica_is_reservable_through_the_other_at_once(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    _, first, second, slot, taken = await _sold_out_slot(clients)
    r = await clients["one"].post(f"/reservations/{taken['id']}/cancel", headers=first["headers"])
    assert r.status_code == 200, r.text
    await _reserved_through_two(clients, second, slot)


async def test_more_capacity_in_one_replica_is_reservable_through_the_other_at_once(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    owner, _, second, slot, _ = await _sold_out_slot(clients)
    r = await clients["one"].patch(f"/slots/{slot['id']}", headers=owner["headers"], json={"capacity_total": 2})
    assert r.status_code == 200, r.text
    await _reserved_through_two(clients, second, slot)
