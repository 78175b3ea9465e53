"""With every sandbox callback lost (`payments_sandbox_drop_rate=1.0`), payments still gets
everything right: reconciliation asks the processor, and our own calls' answers are applied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dropslot_kit.testing import Infra

from .conftest import Harness, running_payments


@pytest.fixture(scope="module")
async def deaf(infra: Infra) -> AsyncIterator[Harness]:
    async with running_payments(
        infra, payments_sandbox_drop_rate=1.0, payments_sandbox_processing_seconds=0.2,
        payments_reconcile_stale_seconds=1.0, payments_reconcile_interval_seconds=0.3,
    ) as harness:
        yield harness


async def test_saga_completes_without_a_single_callback(deaf: Harness) -> None:
    r = await deaf.reserve(amount_cents=990)
    p = await deaf.payment_of(r)
    assert (await deaf.confirm_card(p, r, "4242424242424242")).status_code == 200
    await deaf.wait_event("payments.payment.authorized", p["id"])
    await deaf.confirm_reservation(r)
    await deaf.wait_event("payments.payment.succeeded", p["id"])
    received = await deaf.query("SELECT count(*) AS n FROM provider_events")
    assert received[0].n == 0  # nothing ever arrived
    causes = {cause.split(":")[0] + ":" + cause.split(":")[1] for _, to, cause in await deaf.transitions(p["id"])
              if to in ("requires_capture", "succeeded")}
    assert causes == {"sync:reconcile", "capture:booking.reservation.confirmed"}
