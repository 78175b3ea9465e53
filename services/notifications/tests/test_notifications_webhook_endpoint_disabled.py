"""A store owner hears when one of the store's webhook endpoints is switched off.

The system of its own (see conftest) with a real SMTP server: the owner signs up and creates
the store through the gateway (so notifications learns the owner from catalog's real
`catalog.store.created`); webhooks' events are published to the real broker as webhooks'
outbox relay would publish them, and the mail is read at the SMTP server.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from dropslot_contracts import Envelope
from dropslot_contracts.events.webhooks import EndpointCreated, EndpointDisabled
from dropslot_kit.testing import create_store, eventually

from .test_notifications_e2e import my_notifications, plain, wait_status

pytestmark = pytest.mark.e2e

TEMPLATE = "webhook_endpoint_disabled"
FAILING_SINCE = datetime(2031, 3, 9, 6, 15, tzinfo=UTC)


def disabled(store_id: uuid.UUID, endpoint_id: uuid.UUID, url: str, **over: Any) -> Envelope:
    fields: dict[str, Any] = dict(endpoint_id=endpoint_id, store_id=store_id, url=url, reason="failing",
                                  failing_since=FAILING_SINCE, last_status_code=503, last_error=None)
    fields.update(over)
    return Envelope.wrap(EndpointDisabled(**fields), producer="webhooks", store_id=store_id)


async def test_the_owner_is_mailed_once_which_endpoint_why_since_when_and_how_to_re_enable(
    api, bus, smtp, customer
):
    store = await create_store(api, customer, name=f"Hooked {uuid.uuid4().hex[:6]}")
    store_id = uuid.UUID(store["id"])
    endpoint_id, url = uuid.uuid4(), f"https://erp-{uuid.uuid4().hex[:6]}.example.com/hooks"
    await bus.publish(Envelope.wrap(EndpointCreated(endpoint_id=endpoint_id, store_id=store_id, url=url,
                                                    description="ERP stock sync"),
                                    producer="webhooks", store_id=store_id))
    env = disabled(store_id, endpoint_id, url)
    await bus.publish(env)
    await bus.publish(env)  # a redelivery: same envelope, same id
    await bus.publish(disabled(store_id, endpoint_id, url))  # another event about the same disablement
    # A marker behind them on the same queue: a second endpoint, gone.
    other_id, other_url = uuid.uuid4(), f"https://old-{uuid.uuid4().hex[:6]}.example.com/in"
    await bus.publish(disabled(store_id, other_id, other_url, reason="gone", failing_since=None,
                               last_status_code=410))

    def mails(about: str) -> list[Any]:
        return [m for m in smtp.to(customer["email"], TEMPLATE) if about in plain(m)]

    async def both() -> bool:
        return bool(mails(url)) and bool(mails(other_url))

    await eventually(both, timeout=45, what="the owner's endpoint-disabled mails")
    await wait_status(api, customer, TEMPLATE, "SENT")
    [mail] = mails(url)
    text = plain(mail)
    assert mail["Subject"] == f"Webhook endpoint disabled for {store['name']}: ERP stock sync"
    assert "ERP stock sync" in text and url in text and str(endpoint_id) in text
    assert "no delivery to it has succeeded for too long" in text
    assert "failing since Sun 9 Mar 2031, 06:15 UTC" in text and "HTTP 503" in text
    assert re.search(rf"PATCH https?://\S+/api/v1/stores/{store_id}/webhook-endpoints/{endpoint_id}\s+"
                     r'\{"active": true\}', text), text
    html = str(mail.get_body(("html",)).get_content())
    assert url in html and "ERP stock sync" in html

    [gone] = mails(other_url)
    assert "410 Gone" in plain(gone) and "failing since" not in plain(gone)
    mine = await my_notifications(api, customer, template=TEMPLATE)
    assert len(mine) == 2 and all(n["channel"] == "email" for n in mine)


async def test_an_owner_known_before_the_stores_name_waits_for_the_name(api, bus, smtp, customer):
    """identity.role.granted (the owner) and catalog.store.created (the name) travel on different
    queues: a disablement handled between the two waits (retried) for the name instead of mailing
    a subject without it (seen in CI)."""
    import asyncio

    from dropslot_contracts.events.catalog import StoreCreated
    from dropslot_contracts.events.identity import RoleGranted

    store_id, owner = uuid.uuid4(), uuid.UUID(customer["id"])
    endpoint_id, url = uuid.uuid4(), f"https://wait-{uuid.uuid4().hex[:6]}.example.com/hooks"
    await bus.publish(Envelope.wrap(RoleGranted(user_id=owner, code="store_owner", store_id=store_id),
                                    producer="identity", store_id=store_id))
    await bus.publish(Envelope.wrap(EndpointCreated(endpoint_id=endpoint_id, store_id=store_id, url=url,
                                                    description="POS"), producer="webhooks", store_id=store_id))
    await bus.publish(disabled(store_id, endpoint_id, url))
    await asyncio.sleep(0.4)  # handled at least once by now, with the owner known and the name not
    name = f"Late {uuid.uuid4().hex[:6]}"
    await bus.publish(Envelope.wrap(StoreCreated(store_id=store_id, tenant_key=f"t-{store_id.hex[:8]}", name=name,
                                                 slug=f"late-{store_id.hex[:8]}", owner_user_id=owner),
                                    producer="catalog", store_id=store_id))

    def mails() -> list[Any]:
        return [m for m in smtp.to(customer["email"], TEMPLATE) if url in plain(m)]

    async def sent() -> bool:
        return bool(mails())

    await eventually(sent, timeout=45, what="the endpoint-disabled mail")
    [mail] = mails()
    assert mail["Subject"] == f"Webhook endpoint disabled for {name}: POS"
