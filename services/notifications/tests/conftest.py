"""Fixtures for notifications' end-to-end tests.

They start a system of their own (`notif_system`: own database, own broker namespace) because
notifications must be pointed at test doubles the shared `system` knows nothing of:

- `smtp`: a real SMTP server (aiosmtpd) on a free port, which a test can stop and restart
  on the same port to play an outage;
- `receiver`: a real HTTP server (aiohttp) standing in for the SMS and push providers,
  checking every request's HMAC signature;
- a template override directory with one deliberately broken template (`refund_issued`'s
  email text), so a test can watch a rendering error become a FAILED notification.
- `bus`: publishes envelopes to the system's exchange exactly as a producing service's outbox
  relay would, for events whose producers a test cannot easily drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from dropslot_contracts import Envelope
from dropslot_kit.launcher import free_port, prepare_database
from dropslot_kit.testing import (
    Infra,
    RunningSystem,
    drop_test_resources,
    eventually,
    settings_for,
    sign_up,
    start_system,
)
from dropslot_notifications.adapters.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

SMS_SECRET = "sms-test-secret"
PUSH_SECRET = "push-test-secret"
BROKEN_TEMPLATE = "refund_issued"
# How long a reservation mail of the test system waits for a drop it does not know yet (30 s in
# production): long enough for a catalog event published around the same time to arrive even on a
# busy machine, short enough that tests about drops nobody announces stay quick.
DROP_WAIT_SECONDS = 3.0


# --- a real SMTP server ------------------------------------------------------------------------------
class _Collect:
    def __init__(self, sink: SmtpServer):
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        with self.sink.lock:
            self.sink.messages.append(msg)  # type: ignore[arg-type]
        return "250 OK"


@dataclass
class SmtpServer:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def to(self, address: str, template: str | None = None) -> list[EmailMessage]:
        with self.lock:
            found = [m for m in self.messages if address in str(m["To"])]
        if template is not None:
            found = [m for m in found if m["X-DropSlot-Template"] == template]
        return found


@pytest.fixture(scope="session")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    yield server
    server.stop()


# --- a real HTTP provider for SMS and push ------------------------------------------------------------
@dataclass
class Receiver:
    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, channel: str, address: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["channel"] == channel and r["to"] == address]


@pytest.fixture(scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(port=free_port())

    def endpoint(channel: str, secret: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            ts = request.headers.get(TIMESTAMP_HEADER, "")
            if not verify(secret, ts, body, request.headers.get(SIGNATURE_HEADER, "")):
                rec.bad_signatures += 1
                return web.Response(status=401, text="bad signature")
            data = json.loads(body)
            assert data["channel"] == channel
            rec.received.append({**data, "idempotency_key": request.headers.get("Idempotency-Key")})
            return web.json_response({"accepted": True})

        return handle

    app = web.Application()
    app.router.add_post("/sms", endpoint("sms", SMS_SECRET))
    app.router.add_post("/push", endpoint("push", PUSH_SECRET))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", rec.port)
    await site.start()
    yield rec
    await runner.cleanup()


# --- the system under test, wired to them --------------------------------------------------------------
@pytest.fixture(scope="session")
def notif_system(
    infra: Infra, smtp: SmtpServer, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    suffix = uuid.uuid4().hex[:10]
    settings = settings_for(infra, f"dropslot_t_{suffix}", f"t{suffix}")
    with open(os.devnull, "w") as quiet:
        prepare_database(settings, log=quiet)
    templates = tmp_path_factory.mktemp("templates")
    (templates / BROKEN_TEMPLATE).mkdir()
    (templates / BROKEN_TEMPLATE / "email.txt").write_text("Refund of {{ refund.refunded_cents|money( }}\n")
    env = {
        "DROPSLOT_NOTIFICATIONS_SMTP_HOST": "127.0.0.1",
        "DROPSLOT_NOTIFICATIONS_SMTP_PORT": str(smtp.port),
        "DROPSLOT_NOTIFICATIONS_SMTP_FROM": "DropSlot <no-reply@dropslot.test>",
        "DROPSLOT_NOTIFICATIONS_SMTP_TIMEOUT_SECONDS": "5",
        "DROPSLOT_NOTIFICATIONS_SMS_URL": receiver.url("/sms"),
        "DROPSLOT_NOTIFICATIONS_SMS_SECRET": SMS_SECRET,
        "DROPSLOT_NOTIFICATIONS_PUSH_URL": receiver.url("/push"),
        "DROPSLOT_NOTIFICATIONS_PUSH_SECRET": PUSH_SECRET,
        "DROPSLOT_NOTIFICATIONS_TEMPLATES_DIR": str(templates),
        "DROPSLOT_NOTIFICATIONS_RETRY_BASE_SECONDS": "0.5",
        "DROPSLOT_NOTIFICATIONS_RETRY_MAX_SECONDS": "2",
        "DROPSLOT_NOTIFICATIONS_POLL_SECONDS": "0.25",
        "DROPSLOT_NOTIFICATIONS_DROP_WAIT_SECONDS": str(DROP_WAIT_SECONDS),
        # Several engineers' test systems share one PostgreSQL (100 connections): keep few idle.
        "DROPSLOT_DB_POOL_SIZE": "2",
        "DROPSLOT_DB_MAX_OVERFLOW": "8",
    }
    log_dir = tmp_path_factory.mktemp("notif-system-logs")
    try:
        running = start_system(settings, log_dir, extra_env=env)
    except Exception:
        drop_test_resources(settings)
        raise
    yield running
    running.system.stop()
    drop_test_resources(settings)


@pytest.fixture
async def api(notif_system: RunningSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=notif_system.api, timeout=20.0) as client:
        yield client


# --- publishing events as a producer's relay would -------------------------------------------------------
class Bus:
    def __init__(self, connection: Any, exchange: Any):
        self.connection = connection
        self.exchange = exchange

    async def publish(self, env: Envelope) -> None:
        await self.exchange.publish(
            aio_pika.Message(env.model_dump_json().encode(), message_id=str(env.id), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=env.routing_key,
        )


@pytest.fixture(scope="session")
async def bus(notif_system: RunningSystem) -> AsyncIterator[Bus]:
    conn = await aio_pika.connect(notif_system.settings.rabbit_url)
    channel = await conn.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(f"{notif_system.settings.broker_namespace}.events")
    yield Bus(conn, exchange)
    with contextlib.suppress(Exception):
        await conn.close()


# --- a database and namespace of its own, with only the notifications schema ------------------------
@pytest.fixture
async def own_notifications_settings(infra: Infra, tmp_path: Path) -> AsyncIterator[Any]:
    """For tests that run notifications in-process: nothing else may consume its queues or
    claim its rows, so neither the shared test database nor its namespace will do."""
    from dropslot_kit.bootstrap import bootstrap
    from dropslot_kit.migrate import upgrade
    from dropslot_notifications.config import Settings

    suffix = uuid.uuid4().hex[:10]
    base = settings_for(infra, f"dropslot_t_{suffix}", f"t{suffix}")
    settings = Settings(**{**base.model_dump(), "service": "notifications",
                           "notifications_mailbox_dir": str(tmp_path / "mail")})
    await bootstrap(settings, services=("notifications",))
    await asyncio.to_thread(upgrade, "notifications", settings)
    try:
        yield settings
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(drop_test_resources, settings)


# --- a signed-up customer whose contact notifications already knows -------------------------------------
async def verified_contact_customer(api: httpx.AsyncClient, smtp: SmtpServer) -> dict[str, Any]:
    """Sign up through identity and wait for the welcome mail: once it is out, the
    identity.user.registered event was handled, so notifications has the contact."""
    user = await sign_up(api, name="Nora Notify")

    async def welcome() -> bool:
        return bool(smtp.to(user["email"], "email_verification"))

    await eventually(welcome, timeout=30, what="the welcome mail")
    return user


@pytest.fixture
async def customer(api: httpx.AsyncClient, smtp: SmtpServer) -> dict[str, Any]:
    return await verified_contact_customer(api, smtp)


@pytest.fixture
async def second_customer(api: httpx.AsyncClient, smtp: SmtpServer) -> dict[str, Any]:
    return await verified_contact_customer(api, smtp)


def log_tail(system: RunningSystem, name: str = "notifications", lines: int = 60) -> str:
    path = Path(system.log_dir) / f"{name}.log"
    return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""
