"""All the SQL of notifications (schema `notifications`, on the search path)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain.messages import DropInfo
from ..domain.model import Channel, PlannedMessage, Preferences


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


# --- contacts ---------------------------------------------------------------------------------
_UPSERT_PROFILE = text("""
    INSERT INTO contacts (user_id, email, name, status, email_verified, profile_at, status_at)
    VALUES (:u, :email, :name, :status, :verified, :at, :at)
    ON CONFLICT (user_id) DO UPDATE SET
        email = CASE WHEN contacts.profile_at IS NULL OR contacts.profile_at <= :at
                     THEN EXCLUDED.email ELSE contacts.email END,
        name = CASE WHEN contacts.profile_at IS NULL OR contacts.profile_at <= :at
                    THEN EXCLUDED.name ELSE contacts.name END,
        email_verified = CASE WHEN contacts.profile_at IS NULL OR contacts.profile_at <= :at
                              THEN EXCLUDED.email_verified
                                   OR (contacts.email_verified AND contacts.email = EXCLUDED.email)
                              ELSE contacts.email_verified END,
        profile_at = GREATEST(contacts.profile_at, :at),
        status = CASE WHEN contacts.status_at IS NULL OR contacts.status_at <= :at
                      THEN EXCLUDED.status ELSE contacts.status END,
        status_at = GREATEST(contacts.status_at, :at),
        updated_at = now()
""")


async def upsert_contact(
    conn: AsyncConnection, user_id: uuid.UUID, *, email: str, name: str | None, status: str,
    email_verified: bool, at: datetime,
) -> None:
    await conn.execute(_UPSERT_PROFILE, {"u": user_id, "email": email, "name": name, "status": status,
                                         "verified": email_verified, "at": at})


async def set_contact_status(conn: AsyncConnection, user_id: uuid.UUID, status: str, at: datetime) -> None:
    await conn.execute(text("""
        INSERT INTO contacts (user_id, status, status_at) VALUES (:u, :s, :at)
        ON CONFLICT (user_id) DO UPDATE SET status = EXCLUDED.status, status_at = EXCLUDED.status_at,
            updated_at = now()
        WHERE contacts.status_at IS NULL OR contacts.status_at <= EXCLUDED.status_at
    """), {"u": user_id, "s": status, "at": at})


async def forget_user(conn: AsyncConnection, user_id: uuid.UUID, at: datetime) -> None:
    """A deleted account: keep only the fact (so late events fail instead of mailing), drop the
    address, name, phone number, device token and drop subscriptions. profile_at moves on, so an
    older profile event arriving late cannot bring the address back."""
    await conn.execute(text("""
        UPDATE contacts SET email = NULL, name = NULL, profile_at = GREATEST(profile_at, :at), updated_at = now()
        WHERE user_id = :u
    """), {"u": user_id, "at": at})
    await conn.execute(text("DELETE FROM preferences WHERE user_id = :u"), {"u": user_id})
    await conn.execute(text("DELETE FROM drop_subscriptions WHERE user_id = :u"), {"u": user_id})


async def mark_contact_verified(conn: AsyncConnection, user_id: uuid.UUID, email: str, name: str | None) -> None:
    # Verification is about one address: it only sticks while that is still the address we know.
    await conn.execute(text("""
        INSERT INTO contacts (user_id, email, name, email_verified) VALUES (:u, :e, :n, true)
        ON CONFLICT (user_id) DO UPDATE SET email_verified = true, email = EXCLUDED.email,
            name = COALESCE(contacts.name, EXCLUDED.name), updated_at = now()
        WHERE contacts.status <> 'deleted' AND (contacts.email IS NULL OR contacts.email = EXCLUDED.email)
    """), {"u": user_id, "e": email, "n": name})


@dataclass(frozen=True)
class Contact:
    user_id: uuid.UUID
    email: str | None
    name: str | None
    status: str


async def contacts_for(conn: AsyncConnection, user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Contact]:
    ids = list(set(user_ids))
    if not ids:
        return {}
    rows = await conn.execute(
        text("SELECT user_id, email, name, status FROM contacts WHERE user_id = ANY(:ids)"), {"ids": ids}
    )
    return {r.user_id: Contact(r.user_id, r.email, r.name, r.status) for r in rows}


# --- preferences ------------------------------------------------------------------------------
async def get_preferences(conn: AsyncConnection, user_id: uuid.UUID) -> Preferences:
    return (await preferences_for(conn, [user_id]))[user_id]


async def preferences_for(conn: AsyncConnection, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Preferences]:
    out = {u: Preferences() for u in user_ids}
    if not user_ids:
        return out
    rows = await conn.execute(
        text("SELECT user_id, email, sms, push, phone, push_token FROM preferences WHERE user_id = ANY(:ids)"),
        {"ids": list(set(user_ids))},
    )
    for r in rows:
        out[r.user_id] = Preferences(r.email, r.sms, r.push, r.phone, r.push_token)
    return out


async def put_preferences(conn: AsyncConnection, user_id: uuid.UUID, prefs: Preferences) -> None:
    await conn.execute(text("""
        INSERT INTO preferences (user_id, email, sms, push, phone, push_token)
        VALUES (:u, :email, :sms, :push, :phone, :token)
        ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, sms = EXCLUDED.sms, push = EXCLUDED.push,
            phone = EXCLUDED.phone, push_token = EXCLUDED.push_token, updated_at = now()
    """), {"u": user_id, "email": prefs.email, "sms": prefs.sms, "push": prefs.push, "phone": prefs.phone,
           "token": prefs.push_token})


async def lock_preferences(conn: AsyncConnection, user_id: uuid.UUID) -> Preferences:
    """Current preferences, row-locked so a concurrent PUT cannot interleave its merge."""
    await conn.execute(text("INSERT INTO preferences (user_id) VALUES (:u) ON CONFLICT DO NOTHING"), {"u": user_id})
    r = (await conn.execute(
        text("SELECT email, sms, push, phone, push_token FROM preferences WHERE user_id = :u FOR UPDATE"),
        {"u": user_id},
    )).one()
    return Preferences(r.email, r.sms, r.push, r.phone, r.push_token)


# --- notification rows ------------------------------------------------------------------------
_INSERT_NOTIFICATION = text("""
    INSERT INTO notifications (id, user_id, channel, template, payload, recipient, priority, event_id,
                               event_type, dedupe_key)
    VALUES (:id, :u, :channel, :template, CAST(:payload AS jsonb), :recipient, :priority, :event_id,
            :event_type, :dedupe)
    ON CONFLICT DO NOTHING
""")


async def insert_notifications(
    conn: AsyncConnection, messages: Sequence[PlannedMessage], *, event_id: uuid.UUID, event_type: str
) -> None:
    if not messages:
        return
    await conn.execute(_INSERT_NOTIFICATION, [
        {"id": uuid.uuid4(), "u": m.user_id, "channel": str(m.channel), "template": m.template,
         "payload": _json(m.payload), "recipient": m.recipient, "priority": m.priority, "event_id": event_id,
         "event_type": event_type, "dedupe": m.dedupe_key}
        for m in messages
    ])


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    user_id: uuid.UUID
    channel: Channel
    template: str
    payload: dict[str, Any]
    recipient: str | None
    attempts: int
    created_at: datetime


_CLAIM = text("""
    WITH due AS (
        SELECT id FROM notifications
        WHERE status = 'PENDING' AND next_attempt_at <= now()
        ORDER BY priority DESC, next_attempt_at
        LIMIT :n
        FOR UPDATE SKIP LOCKED
    )
    UPDATE notifications AS n
    SET attempts = n.attempts + 1,
        next_attempt_at = now() + make_interval(secs => :lease),
        updated_at = now()
    FROM due WHERE n.id = due.id
    RETURNING n.id, n.user_id, n.channel, n.template, n.payload, n.recipient, n.attempts, n.created_at
""")


async def claim_due(conn: AsyncConnection, limit: int, lease_seconds: float) -> list[Claimed]:
    """Lease due rows to this sender: other replicas skip them until the lease runs out, so
    no transaction stays open while SMTP talks; `attempts` doubles as the lease's fencing token."""
    rows = await conn.execute(_CLAIM, {"n": limit, "lease": lease_seconds})
    out = []
    for r in rows:
        payload = r.payload if isinstance(r.payload, dict) else json.loads(r.payload)
        out.append(Claimed(r.id, r.user_id, Channel(r.channel), r.template, payload, r.recipient, r.attempts,
                           r.created_at))
    return out


async def mark_sent(conn: AsyncConnection, n: Claimed, recipient: str | None, subject: str | None) -> bool:
    res = await conn.execute(text("""
        UPDATE notifications SET status = 'SENT', sent_at = now(), updated_at = now(), recipient = :r,
            subject = :s, last_error = NULL
        WHERE id = :id AND status = 'PENDING' AND attempts = :a
    """), {"id": n.id, "a": n.attempts, "r": recipient, "s": subject})
    return bool(res.rowcount)


async def mark_retry(conn: AsyncConnection, n: Claimed, error: str, delay_seconds: float) -> bool:
    res = await conn.execute(text("""
        UPDATE notifications SET next_attempt_at = now() + make_interval(secs => :d), last_error = :e,
            updated_at = now()
        WHERE id = :id AND status = 'PENDING' AND attempts = :a
    """), {"id": n.id, "a": n.attempts, "e": error[:2000], "d": delay_seconds})
    return bool(res.rowcount)


async def mark_failed(conn: AsyncConnection, n: Claimed, error: str, recipient: str | None,
                      subject: str | None) -> bool:
    res = await conn.execute(text("""
        UPDATE notifications SET status = 'FAILED', last_error = :e, updated_at = now(),
            recipient = COALESCE(:r, recipient), subject = COALESCE(:s, subject)
        WHERE id = :id AND status = 'PENDING' AND attempts = :a
    """), {"id": n.id, "a": n.attempts, "e": error[:2000], "r": recipient, "s": subject})
    return bool(res.rowcount)


_LIST_COLUMNS = ("id, channel, template, status, subject, recipient, attempts, last_error, event_type, "
                 "created_at, updated_at, sent_at, next_attempt_at")


async def list_for_user(
    conn: AsyncConnection, user_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None,
    status: str | None, channel: str | None, template: str | None,
) -> list[dict[str, Any]]:
    where = ["user_id = :u"]
    params: dict[str, Any] = {"u": user_id, "n": limit}
    if after is not None:
        where.append("(created_at, id) < (:c_at, :c_id)")
        params.update(c_at=after[0], c_id=after[1])
    for col, value in (("status", status), ("channel", channel), ("template", template)):
        if value is not None:
            where.append(f"{col} = :{col}")
            params[col] = value
    rows = await conn.execute(text(
        f"SELECT {_LIST_COLUMNS} FROM notifications WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, id DESC LIMIT :n"
    ), params)
    return [dict(r._mapping) for r in rows]


async def get_for_user(conn: AsyncConnection, user_id: uuid.UUID, nid: uuid.UUID) -> dict[str, Any] | None:
    row = (await conn.execute(
        text(f"SELECT {_LIST_COLUMNS} FROM notifications WHERE id = :id AND user_id = :u"), {"id": nid, "u": user_id}
    )).first()
    return dict(row._mapping) if row else None


# --- local copies of catalog and booking data ---------------------------------------------------
async def upsert_store(conn: AsyncConnection, store_id: uuid.UUID, name: str, at: datetime) -> None:
    await conn.execute(text("""
        INSERT INTO stores (store_id, name, source_at) VALUES (:s, :n, :at)
        ON CONFLICT (store_id) DO UPDATE SET name = EXCLUDED.name, source_at = EXCLUDED.source_at
        WHERE stores.source_at <= EXCLUDED.source_at
    """), {"s": store_id, "n": name, "at": at})


async def set_store_owner(conn: AsyncConnection, store_id: uuid.UUID, user_id: uuid.UUID, is_owner: bool,
                          at: datetime) -> None:
    """Record (or revoke) an owner; an older event never overrides a newer one."""
    await conn.execute(text("""
        INSERT INTO store_owners (store_id, user_id, is_owner, source_at) VALUES (:s, :u, :o, :at)
        ON CONFLICT (store_id, user_id) DO UPDATE SET is_owner = EXCLUDED.is_owner, source_at = EXCLUDED.source_at
        WHERE store_owners.source_at <= EXCLUDED.source_at
    """), {"s": store_id, "u": user_id, "o": is_owner, "at": at})


async def store_owners(conn: AsyncConnection, store_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.execute(text(
        "SELECT user_id FROM store_owners WHERE store_id = :s AND is_owner ORDER BY user_id"), {"s": store_id})
    return [r.user_id for r in rows]


async def upsert_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID, store_id: uuid.UUID, url: str,
                          at: datetime, *, description: str | None = None, set_description: bool = False) -> None:
    """`endpoint.updated` carries no description: it keeps the one `endpoint.created` gave."""
    await conn.execute(text("""
        INSERT INTO webhook_endpoints (endpoint_id, store_id, url, description, source_at)
        VALUES (:e, :s, :url, :d, :at)
        ON CONFLICT (endpoint_id) DO UPDATE SET url = EXCLUDED.url, source_at = EXCLUDED.source_at,
            description = CASE WHEN :set_d THEN EXCLUDED.description ELSE webhook_endpoints.description END
        WHERE webhook_endpoints.source_at <= EXCLUDED.source_at
    """), {"e": endpoint_id, "s": store_id, "url": url, "d": description, "set_d": set_description, "at": at})


async def forget_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID) -> None:
    await conn.execute(text("DELETE FROM webhook_endpoints WHERE endpoint_id = :e"), {"e": endpoint_id})


async def endpoint_description(conn: AsyncConnection, endpoint_id: uuid.UUID) -> str | None:
    r = (await conn.execute(text("SELECT description FROM webhook_endpoints WHERE endpoint_id = :e"),
                            {"e": endpoint_id})).first()
    return r.description if r else None


async def upsert_drop(conn: AsyncConnection, snap: dict[str, Any], at: datetime) -> None:
    branches = [{"id": str(b.get("id")), "name": b.get("name"), "address": b.get("address"), "phone": b.get("phone"),
                 "timezone": (b.get("opening_hours") or {}).get("timezone")}
                for b in snap.get("branches") or []]
    await conn.execute(text("""
        INSERT INTO drops (drop_id, store_id, name, product_name, store_name, status, starts_at, ends_at,
                           branches, source_at)
        VALUES (:d, :s, :name, :product, :store_name, :status, :starts, :ends, CAST(:branches AS jsonb), :at)
        ON CONFLICT (drop_id) DO UPDATE SET store_id = EXCLUDED.store_id, name = EXCLUDED.name,
            product_name = EXCLUDED.product_name, store_name = EXCLUDED.store_name, status = EXCLUDED.status,
            starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, branches = EXCLUDED.branches,
            source_at = EXCLUDED.source_at
        WHERE drops.source_at <= EXCLUDED.source_at
    """), {"d": snap["drop_id"], "s": snap["store_id"], "name": snap.get("name"),
           "product": snap.get("product_name"), "store_name": snap.get("store_name"), "status": snap["status"],
           "starts": _ts(snap.get("starts_at")), "ends": _ts(snap.get("ends_at")), "branches": _json(branches),
           "at": at})


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


async def drop_info(conn: AsyncConnection, drop_id: uuid.UUID | str | None) -> DropInfo | None:
    if drop_id is None:
        return None
    return (await drops_info(conn, [drop_id])).get(str(uuid.UUID(str(drop_id))))


async def drops_info(conn: AsyncConnection, drop_ids: Iterable[uuid.UUID | str]) -> dict[str, DropInfo]:
    """The drops of the local copy among these, keyed by the drop id as text."""
    ids = list({uuid.UUID(str(d)) for d in drop_ids})
    if not ids:
        return {}
    rows = await conn.execute(text("""
        SELECT d.drop_id, d.name, d.product_name, COALESCE(d.store_name, s.name) AS store_name, d.branches
        FROM drops d LEFT JOIN stores s ON s.store_id = d.store_id WHERE d.drop_id = ANY(:ids)
    """), {"ids": ids})
    out = {}
    for r in rows:
        branches = r.branches if isinstance(r.branches, list) else json.loads(r.branches or "[]")
        out[str(r.drop_id)] = DropInfo(r.name, r.product_name, r.store_name, branches)
    return out


async def store_name(conn: AsyncConnection, store_id: uuid.UUID | str) -> str | None:
    r = (await conn.execute(text("SELECT name FROM stores WHERE store_id = :s"),
                            {"s": uuid.UUID(str(store_id))})).first()
    return r.name if r else None


async def drop_status(conn: AsyncConnection, drop_id: uuid.UUID) -> str | None:
    r = (await conn.execute(text("SELECT status FROM drops WHERE drop_id = :d"), {"d": drop_id})).first()
    return r.status if r else None


async def remember_reservation(conn: AsyncConnection, snap: dict[str, Any], at: datetime) -> None:
    await conn.execute(text("""
        INSERT INTO reservations (reservation_id, user_id, snapshot, source_at)
        VALUES (:r, :u, CAST(:snap AS jsonb), :at)
        ON CONFLICT (reservation_id) DO UPDATE SET snapshot = EXCLUDED.snapshot, source_at = EXCLUDED.source_at
        WHERE reservations.source_at <= EXCLUDED.source_at
    """), {"r": snap["reservation_id"], "u": snap["user_id"], "snap": _json(snap), "at": at})


async def reservation_snapshot(conn: AsyncConnection, reservation_id: uuid.UUID) -> dict[str, Any] | None:
    r = (await conn.execute(text("SELECT snapshot FROM reservations WHERE reservation_id = :r"),
                            {"r": reservation_id})).first()
    if r is None:
        return None
    return r.snapshot if isinstance(r.snapshot, dict) else json.loads(r.snapshot)


# --- drop subscriptions -------------------------------------------------------------------------
async def subscribe(conn: AsyncConnection, drop_id: uuid.UUID, user_id: uuid.UUID) -> tuple[bool, datetime]:
    """(created now?, subscribed since)."""
    row = (await conn.execute(text("""
        INSERT INTO drop_subscriptions (drop_id, user_id) VALUES (:d, :u)
        ON CONFLICT (drop_id, user_id) DO NOTHING RETURNING created_at
    """), {"d": drop_id, "u": user_id})).first()
    if row is not None:
        return True, row.created_at
    existing = (await conn.execute(
        text("SELECT created_at FROM drop_subscriptions WHERE drop_id = :d AND user_id = :u"),
        {"d": drop_id, "u": user_id},
    )).one()
    return False, existing.created_at


async def unsubscribe(conn: AsyncConnection, drop_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    res = await conn.execute(text("DELETE FROM drop_subscriptions WHERE drop_id = :d AND user_id = :u"),
                             {"d": drop_id, "u": user_id})
    return bool(res.rowcount)


async def subscription(conn: AsyncConnection, drop_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await conn.execute(
        text("SELECT created_at, notified_at FROM drop_subscriptions WHERE drop_id = :d AND user_id = :u"),
        {"d": drop_id, "u": user_id},
    )).first()
    return dict(row._mapping) if row else None


async def take_live_subscribers(conn: AsyncConnection, drop_id: uuid.UUID) -> list[uuid.UUID]:
    """Subscribers not yet told that this drop is live, marked as told in the same transaction
    (a drop that is published LIVE and then reported live again notifies once)."""
    rows = await conn.execute(text("""
        UPDATE drop_subscriptions SET notified_at = now()
        WHERE drop_id = :d AND notified_at IS NULL RETURNING user_id
    """), {"d": drop_id})
    return [r.user_id for r in rows]
