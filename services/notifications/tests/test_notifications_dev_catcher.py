"""`make dev` needs no mail configuration: with no SMTP host set, the notifications process runs
its own SMTP catcher, keeps each message as an .eml file and lists them over HTTP.

The app runs in-process against a database and broker namespace of its own (only the
notifications schema), with the real consumer, sender loop and catcher.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dropslot_contracts import Envelope
from dropslot_contracts.events.catalog import StoreCreated
from dropslot_contracts.events.identity import UserRegistered
from dropslot_contracts.events.webhooks import EndpointCreated, EndpointDisabled
from dropslot_kit.launcher import free_port
from dropslot_kit.testing import eventually
from dropslot_notifications.config import Settings
from dropslot_notifications.main import create_app


@pytest.fixture
async def dev_app(own_notifications_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Path, Settings]]:
    settings = own_notifications_settings.model_copy(update={
        "notifications_smtp_catcher_port": free_port(), "notifications_poll_seconds": 0.2,
        "public_base_url": "http://dev.test",
    })
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n") as client:
            yield client, Path(settings.notifications_mailbox_dir), settings


async def test_without_an_smtp_host_mail_is_caught_into_a_folder_and_listed(dev_app) -> None:
    client, folder, settings = dev_app
    assert settings.smtp_catcher_enabled
    address = f"newcomer-{uuid.uuid4().hex[:8]}@example.com"
    env = Envelope.wrap(UserRegistered(user_id=uuid.uuid4(), email=address, name="Newcomer",
                                       verification_token="dev-token-123"), producer="identity")
    rt = client._transport.app.state.rt  # type: ignore[attr-defined]
    await rt.messaging.publish_raw(env.routing_key, env.model_dump_json().encode(), message_id=str(env.id),
                                   headers={})

    async def listed() -> list[dict]:
        r = await client.get("/api/v1/notifications/dev/mailbox")
        assert r.status_code == 200, r.text
        return [m for m in r.json()["items"] if address in m["to"]]

    [item] = await eventually(listed, timeout=30, what="the caught mail in the listing")
    assert item["template"] == "email_verification" and item["notification_id"]
    assert len(list(folder.glob("*.eml"))) == 1
    detail = (await client.get(f"/api/v1/notifications/dev/mailbox/{item['id']}")).json()
    assert "http://dev.test/verify-email?token=dev-token-123" in detail["text"]
    page = await client.get(f"/api/v1/notifications/dev/mailbox/{item['id']}/html")
    assert page.status_code == 200 and "Confirm my email" in page.text
    assert (await client.get("/api/v1/notifications/dev/mailbox/..%2Fetc")).status_code == 404


async def test_a_disabled_webhook_endpoint_is_mailed_to_the_store_owner_in_the_catcher(dev_app) -> None:
    client, _, _ = dev_app
    rt = client._transport.app.state.rt  # type: ignore[attr-defined]
    owner, store_id, endpoint_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    address = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    url = "https://erp.example.com/dropslot"
    for env in (
        Envelope.wrap(UserRegistered(user_id=owner, email=address, name="Olga Owner", email_verified=True),
                      producer="identity"),
        Envelope.wrap(StoreCreated(store_id=store_id, tenant_key="t-hooked", name="Hooked", slug="hooked",
                                   owner_user_id=owner), producer="catalog", store_id=store_id),
        Envelope.wrap(EndpointCreated(endpoint_id=endpoint_id, store_id=store_id, url=url, description="ERP"),
                      producer="webhooks", store_id=store_id),
        Envelope.wrap(EndpointDisabled(endpoint_id=endpoint_id, store_id=store_id, url=url, reason="gone",
                                       last_status_code=410), producer="webhooks", store_id=store_id),
    ):
        await rt.messaging.publish_raw(env.routing_key, env.model_dump_json().encode(), message_id=str(env.id),
                                       headers={})

    async def listed() -> list[dict]:
        r = await client.get("/api/v1/notifications/dev/mailbox")
        return [m for m in r.json()["items"] if address in m["to"] and m["template"] == "webhook_endpoint_disabled"]

    [item] = await eventually(listed, timeout=45, what="the endpoint-disabled mail in the catcher")
    detail = (await client.get(f"/api/v1/notifications/dev/mailbox/{item['id']}")).json()
    assert url in detail["text"] and "ERP" in detail["text"] and "410 Gone" in detail["text"]
    assert f"http://dev.test/api/v1/stores/{store_id}/webhook-endpoints/{endpoint_id}" in detail["text"]


def test_the_catcher_is_off_once_a_real_smtp_host_is_configured() -> None:
    assert Settings(notifications_smtp_host="smtp.example.com").smtp_catcher_enabled is False
    assert Settings(notifications_smtp_host=None).smtp_catcher_enabled is True
    assert Settings(notifications_smtp_host="smtp.example.com", notifications_smtp_catcher=True).smtp_catcher_enabled
