"""Who may act for a store, known locally in every service that checks it.

Access tokens carry roles, but a token minted before a role was granted does not: the
creator of a store must be able to manage it at once, without signing in again. So each
service that authorizes store roles keeps `store_members`, fed by events
(`catalog.store.created` makes the creator owner; `identity.role.granted/revoked`), and
`authorize_store` accepts a role found in the token *or* in that table. A revoked role
lingers only until the short-lived token carrying it expires.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from dropslot_contracts import Envelope
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .auth import Principal
from .broker import EventConsumers
from .errors import NotFound

OWNER = ("store_owner",)
STAFF = ("store_owner", "store_staff")


def membership_ddl(schema: str) -> list[str]:
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {schema}.store_members (
            store_id uuid NOT NULL,
            user_id uuid NOT NULL,
            role text NOT NULL,
            granted_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (store_id, user_id, role)
        )""",
        f"CREATE INDEX IF NOT EXISTS ix_store_members_user ON {schema}.store_members (user_id)",
    ]


def create_membership_table(op: Any, schema: str) -> None:
    for stmt in membership_ddl(schema):
        op.execute(stmt)


async def grant(conn: AsyncConnection, store_id: uuid.UUID, user_id: uuid.UUID, role: str) -> None:
    await conn.execute(
        text("INSERT INTO store_members (store_id, user_id, role) VALUES (:s, :u, :r) ON CONFLICT DO NOTHING"),
        {"s": store_id, "u": user_id, "r": role},
    )


async def revoke(conn: AsyncConnection, store_id: uuid.UUID, user_id: uuid.UUID, role: str) -> None:
    await conn.execute(
        text("DELETE FROM store_members WHERE store_id = :s AND user_id = :u AND role = :r"),
        {"s": store_id, "u": user_id, "r": role},
    )


async def has_store_role(
    conn: AsyncConnection, principal: Principal, store_id: uuid.UUID, roles: Iterable[str] = STAFF
) -> bool:
    roles = tuple(roles)
    if principal.is_platform_admin or any(principal.has_role(r, store_id) for r in roles):
        return True
    row = await conn.execute(
        text("SELECT 1 FROM store_members WHERE store_id = :s AND user_id = :u AND role = ANY(:r) LIMIT 1"),
        {"s": store_id, "u": principal.user_id, "r": list(roles)},
    )
    return row.first() is not None


async def authorize_store(
    conn: AsyncConnection, principal: Principal, store_id: uuid.UUID, roles: Iterable[str] = OWNER
) -> None:
    """404, not 403: a store's private data does not even exist for outsiders."""
    if not await has_store_role(conn, principal, store_id, roles):
        raise NotFound("no such resource in your stores")


async def member_store_ids(conn: AsyncConnection, principal: Principal, roles: Iterable[str] = STAFF) -> set[uuid.UUID]:
    roles = tuple(roles)
    rows = await conn.execute(
        text("SELECT store_id FROM store_members WHERE user_id = :u AND role = ANY(:r)"),
        {"u": principal.user_id, "r": list(roles)},
    )
    return {r[0] for r in rows} | principal.store_ids(*roles)


def _about_a_store(event_type: str, data: dict[str, Any]) -> bool:
    """A store's creation or a store role: every sign-up grants the customer role, which no
    service keeps, so those are acknowledged without a transaction (in five services)."""
    return event_type == "catalog.store.created" or bool(data.get("store_id") and data.get("code") in STAFF)


def consume_memberships(consumers: EventConsumers) -> None:
    """Register the consumer that keeps `store_members` current in this service."""

    @consumers.on("catalog.store.created", "identity.role.granted", "identity.role.revoked", name="memberships",
                  wants=_about_a_store)
    async def on_membership(env: Envelope, uow: Any) -> None:
        d = env.data
        if env.type == "catalog.store.created":
            await grant(uow.conn, uuid.UUID(d["store_id"]), uuid.UUID(d["owner_user_id"]), "store_owner")
        elif _about_a_store(env.type, d):
            store, user = uuid.UUID(d["store_id"]), uuid.UUID(d["user_id"])
            if env.type == "identity.role.granted":
                await grant(uow.conn, store, user, d["code"])
            else:
                await revoke(uow.conn, store, user, d["code"])
