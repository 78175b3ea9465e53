"""The sender loop against the real database and a real SMTP server: several replicas share
the work without sending anything twice, and a replica whose lease ran out cannot overwrite
the newer attempt."""

from __future__ import annotations

import asyncio
import uuid

from dropslot_kit.db import Database
from dropslot_notifications.adapters import repository as repo
from dropslot_notifications.adapters.channels import SmtpTransport
from dropslot_notifications.domain.model import Channel, PlannedMessage, Status
from dropslot_notifications.rendering import Renderer
from dropslot_notifications.service.sender import Sender
from sqlalchemy import text


def planned(n: int, tag: str) -> list[PlannedMessage]:
    return [
        PlannedMessage(uuid.uuid4(), "password_reset", Channel.EMAIL,
                       {"name": "R", "email": f"{tag}-{i}@example.com", "token": f"t{i}", "expires_at": None,
                        "link": f"http://x/reset-password?token=t{i}"},
                       f"{tag}-{i}@example.com", None, 5)
        for i in range(n)
    ]


async def statuses(db: Database, tag: str) -> dict[str, int]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT status, attempts, count(*) AS n FROM notifications WHERE recipient LIKE :t GROUP BY 1, 2"
        ), {"t": f"{tag}-%"})
        return {f"{r.status}/{r.attempts}": r.n for r in rows}


async def test_two_replicas_send_every_message_exactly_once(own_notifications_settings, smtp):
    settings = own_notifications_settings.model_copy(update={
        "notifications_send_batch": 7, "notifications_send_concurrency": 4})
    tag = f"replica-{uuid.uuid4().hex[:8]}"
    dbs = [Database(settings), Database(settings)]
    try:
        async with dbs[0].uow() as uow:
            await repo.insert_notifications(uow.conn, planned(60, tag), event_id=uuid.uuid4(),
                                            event_type="identity.password_reset.requested")

        def transport() -> SmtpTransport:
            return SmtpTransport(target=lambda: ("127.0.0.1", smtp.port), sender="DropSlot <n@dropslot.test>")

        senders = [Sender(settings, db, Renderer(), {Channel.EMAIL: transport()}) for db in dbs]

        async def drain(sender: Sender) -> int:
            total = 0
            while (n := await sender.send_once()) > 0:
                total += n
            return total

        done = await asyncio.gather(*(drain(s) for s in senders))
        assert sum(done) == 60
        assert all(n > 0 for n in done), f"one replica did all the work: {done}"
        assert await statuses(dbs[0], tag) == {"SENT/1": 60}
        mails = [m for m in smtp.messages if str(m["To"]).startswith(f"{tag}-")]
        ids = [m["X-DropSlot-Notification-Id"] for m in mails]
        assert len(ids) == 60 and len(set(ids)) == 60
    finally:
        for db in dbs:
            await db.dispose()


async def test_a_replica_whose_lease_ran_out_cannot_overwrite_the_newer_attempt(own_notifications_settings):
    db = Database(own_notifications_settings)
    tag = f"lease-{uuid.uuid4().hex[:8]}"
    try:
        async with db.uow() as uow:
            await repo.insert_notifications(uow.conn, planned(1, tag), event_id=uuid.uuid4(), event_type="x.y.z")
        async with db.uow() as uow:
            [first] = await repo.claim_due(uow.conn, 10, lease_seconds=60)
        async with db.uow() as uow:  # nobody else sees it while leased
            assert await repo.claim_due(uow.conn, 10, lease_seconds=60) == []
            # ... until the lease runs out (the first replica hung)
            await uow.execute("UPDATE notifications SET next_attempt_at = now() WHERE id = :id", {"id": first.id})
        async with db.uow() as uow:
            [second] = await repo.claim_due(uow.conn, 10, lease_seconds=60)
        assert (first.id, first.attempts, second.attempts) == (second.id, 1, 2)
        async with db.uow() as uow:
            assert await repo.mark_sent(uow.conn, second, second.recipient, "s") is True
            assert await repo.mark_failed(uow.conn, first, "late", None, None) is False
        assert await statuses(db, tag) == {f"{Status.SENT}/2": 1}
    finally:
        await db.dispose()
