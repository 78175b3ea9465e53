"""Every SQL statement of identity. Functions take the unit of work's connection."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

Row = dict[str, Any]

_USER_COLS = "id, email, name, status, email_verified_at, password_hash, created_at, updated_at"


async def _one(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> Row | None:
    row = (await conn.execute(text(sql), params)).mappings().first()
    return dict(row) if row is not None else None


# --- users ----------------------------------------------------------------------------------------
async def insert_user(conn: AsyncConnection, *, user_id: uuid.UUID, email: str, password_hash: str, name: str,
                      verified_at: datetime | None = None) -> Row | None:
    """None when a live account already has this address (case-insensitively)."""
    return await _one(conn, f"""
        INSERT INTO users (id, email, password_hash, name, email_verified_at)
        VALUES (:id, :email, :ph, :name, :verified)
        ON CONFLICT (lower(email)) WHERE status <> 'deleted' DO NOTHING
        RETURNING {_USER_COLS}""",
        {"id": user_id, "email": email, "ph": password_hash, "name": name, "verified": verified_at})


async def get_user(conn: AsyncConnection, user_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await _one(conn, f"SELECT {_USER_COLS} FROM users WHERE id = :id{lock}", {"id": user_id})


async def get_user_by_email(conn: AsyncConnection, email: str, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await _one(
        conn, f"SELECT {_USER_COLS} FROM users WHERE lower(email) = lower(:e) AND status <> 'deleted'{lock}",
        {"e": email},
    )


async def set_status(conn: AsyncConnection, user_id: uuid.UUID, status: str) -> None:
    await conn.execute(text("UPDATE users SET status = :s, updated_at = now() WHERE id = :id"),
                       {"s": status, "id": user_id})


async def set_password(conn: AsyncConnection, user_id: uuid.UUID, password_hash: str) -> None:
    await conn.execute(
        text("UPDATE users SET password_hash = :ph, password_changed_at = now(), updated_at = now() WHERE id = :id"),
        {"ph": password_hash, "id": user_id},
    )


async def rehash_password(conn: AsyncConnection, user_id: uuid.UUID, old_hash: str, new_hash: str) -> None:
    """Upgrade a hash made with older parameters, unless the password changed meanwhile."""
    await conn.execute(text("UPDATE users SET password_hash = :new WHERE id = :id AND password_hash = :old"),
                       {"new": new_hash, "old": old_hash, "id": user_id})


async def set_name(conn: AsyncConnection, user_id: uuid.UUID, name: str) -> None:
    await conn.execute(text("UPDATE users SET name = :n, updated_at = now() WHERE id = :id"),
                       {"n": name, "id": user_id})


async def mark_email_verified(conn: AsyncConnection, user_id: uuid.UUID) -> datetime | None:
    """The verification time; None when it was already verified."""
    row = await _one(conn, """
        UPDATE users SET email_verified_at = now(), updated_at = now()
        WHERE id = :id AND email_verified_at IS NULL RETURNING email_verified_at""", {"id": user_id})
    return row["email_verified_at"] if row else None


async def list_users(conn: AsyncConnection, *, limit: int, after: tuple[datetime, uuid.UUID] | None,
                     email: str | None = None, status: str | None = None) -> list[Row]:
    where: list[str] = ["true"]
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        where.append("(created_at, id) > (:after_ts, :after_id)")
        params.update(after_ts=after[0], after_id=after[1])
    if email is not None:
        where.append("lower(email) = lower(:email)")
        params["email"] = email
    if status is not None:
        where.append("status = :status")
        params["status"] = status
    rows = await conn.execute(text(
        f"SELECT {_USER_COLS} FROM users WHERE {' AND '.join(where)} ORDER BY created_at, id LIMIT :limit"
    ), params)
    return [dict(r) for r in rows.mappings()]


# --- roles ----------------------------------------------------------------------------------------
async def roles_of(conn: AsyncConnection, user_id: uuid.UUID) -> list[tuple[str, uuid.UUID | None]]:
    rows = await conn.execute(text("""
        SELECT r.code, ur.store_id FROM user_roles ur JOIN roles r ON r.id = ur.role_id
        WHERE ur.user_id = :u ORDER BY r.code, ur.store_id NULLS FIRST"""), {"u": user_id})
    return [(r[0], r[1]) for r in rows]


async def roles_of_many(conn: AsyncConnection, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    out: dict[uuid.UUID, list[Any]] = {u: [] for u in user_ids}
    if not user_ids:
        return out
    rows = await conn.execute(text("""
        SELECT ur.user_id, r.code, ur.store_id FROM user_roles ur JOIN roles r ON r.id = ur.role_id
        WHERE ur.user_id = ANY(:u) ORDER BY r.code, ur.store_id NULLS FIRST"""), {"u": list(user_ids)})
    for user_id, code, store_id in rows:
        out[user_id].append((code, store_id))
    return out


async def grant_role(conn: AsyncConnection, user_id: uuid.UUID, code: str, store_id: uuid.UUID | None,
                     granted_by: uuid.UUID | None) -> bool:
    """True when newly granted (a repeated grant changes nothing)."""
    row = await _one(conn, """
        INSERT INTO user_roles (user_id, role_id, store_id, granted_by)
        SELECT :u, r.id, :s, :by FROM roles r WHERE r.code = :c
        ON CONFLICT ON CONSTRAINT uq_user_roles_user_id_role_id_store_id DO NOTHING
        RETURNING id""", {"u": user_id, "c": code, "s": store_id, "by": granted_by})
    return row is not None


async def revoke_role(conn: AsyncConnection, user_id: uuid.UUID, code: str, store_id: uuid.UUID | None) -> bool:
    row = await _one(conn, """
        DELETE FROM user_roles ur USING roles r
        WHERE ur.role_id = r.id AND ur.user_id = :u AND r.code = :c AND ur.store_id IS NOT DISTINCT FROM :s
        RETURNING ur.id""", {"u": user_id, "c": code, "s": store_id})
    return row is not None


# --- sessions and refresh tokens --------------------------------------------------------------------
async def create_session(conn: AsyncConnection, *, session_id: uuid.UUID, user_id: uuid.UUID,
                         ip: str | None, user_agent: str | None) -> None:
    await conn.execute(text(
        "INSERT INTO sessions (id, user_id, ip, user_agent) VALUES (:id, :u, :ip, :ua)"
    ), {"id": session_id, "u": user_id, "ip": ip, "ua": (user_agent or "")[:500] or None})


async def insert_refresh_token(conn: AsyncConnection, *, token_id: uuid.UUID, session_id: uuid.UUID,
                               token_hash: bytes, expires_at: datetime, generation: int = 0) -> None:
    await conn.execute(text("""
        INSERT INTO refresh_tokens (id, session_id, token_hash, expires_at, generation)
        VALUES (:id, :s, :h, :exp, :g)"""),
        {"id": token_id, "s": session_id, "h": token_hash, "exp": expires_at, "g": generation})


async def lock_session_of_refresh_token(conn: AsyncConnection, token_hash: bytes) -> uuid.UUID | None:
    """Lock the session (token family) the token belongs to; None for an unknown token.

    Every change to a family's tokens happens under this lock, so concurrent refreshes of one
    session queue here. Read the token only afterwards, in a new statement: under READ COMMITTED
    that one sees what the previous holder of the lock committed (a join locking only the session
    would re-check the session row but keep the token row it read before waiting)."""
    row = await _one(conn, """
        SELECT s.id FROM sessions s
        WHERE s.id = (SELECT t.session_id FROM refresh_tokens t WHERE t.token_hash = :h)
        FOR UPDATE""", {"h": token_hash})
    return row["id"] if row else None


async def refresh_token_state(conn: AsyncConnection, token_hash: bytes, grace_seconds: float) -> Row | None:
    """The token with its session and user (call with the session locked).

    `in_grace`: the token belongs to the generation the session just left, was spent by that move
    (or never used: a sibling of the token that was) and the move happened less than
    `grace_seconds` ago."""
    return await _one(conn, """
        SELECT t.id, t.session_id, t.generation, t.used_at, t.expires_at <= now() AS expired,
               s.user_id, s.revoked_at, s.revoked_reason, s.generation AS session_generation,
               (CAST(:grace AS double precision) > 0 AND t.generation = s.generation - 1
                AND s.rotated_at > now() - make_interval(secs => CAST(:grace AS double precision))
                AND (t.used_at IS NULL OR t.used_at >= s.rotated_at)) AS in_grace,
               u.status AS user_status
        FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id
        WHERE t.token_hash = :h""", {"h": token_hash, "grace": float(grace_seconds)})


async def spend_refresh_token(conn: AsyncConnection, token_id: uuid.UUID) -> None:
    """Mark the token used (the first use is kept)."""
    await conn.execute(text("UPDATE refresh_tokens SET used_at = now() WHERE id = :id AND used_at IS NULL"),
                       {"id": token_id})


async def advance_session(conn: AsyncConnection, session_id: uuid.UUID) -> int:
    """A rotation: the family moves to its next generation (returned); the previous one is spent."""
    row = await _one(conn, """
        UPDATE sessions SET generation = generation + 1, rotated_at = now(), last_used_at = now()
        WHERE id = :id RETURNING generation""", {"id": session_id})
    assert row is not None
    return int(row["generation"])


async def touch_session(conn: AsyncConnection, session_id: uuid.UUID) -> None:
    await conn.execute(text("UPDATE sessions SET last_used_at = now() WHERE id = :id"), {"id": session_id})


async def revoke_session(conn: AsyncConnection, session_id: uuid.UUID, reason: str) -> Row | None:
    """The session when this call revoked it; None when it was already revoked (or unknown)."""
    return await _one(conn, """
        UPDATE sessions SET revoked_at = now(), revoked_reason = :r
        WHERE id = :id AND revoked_at IS NULL RETURNING id, user_id""", {"id": session_id, "r": reason})


async def revoke_user_sessions(conn: AsyncConnection, user_id: uuid.UUID, reason: str,
                               keep: uuid.UUID | None = None) -> list[uuid.UUID]:
    rows = await conn.execute(text("""
        UPDATE sessions SET revoked_at = now(), revoked_reason = :r
        WHERE user_id = :u AND revoked_at IS NULL AND id IS DISTINCT FROM :keep RETURNING id"""),
        {"u": user_id, "r": reason, "keep": keep})
    return [r[0] for r in rows]


async def session_of_refresh_token(conn: AsyncConnection, token_hash: bytes) -> Row | None:
    return await _one(conn, """
        SELECT s.id, s.user_id, s.revoked_at FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id
        WHERE t.token_hash = :h""", {"h": token_hash})


async def caller_state(conn: AsyncConnection, user_id: uuid.UUID, session_id: uuid.UUID | None) -> Row | None:
    """What identity checks beyond the token's signature: account status and session liveness."""
    return await _one(conn, """
        SELECT u.status,
               (SELECT s.revoked_at IS NOT NULL FROM sessions s WHERE s.id = :sid AND s.user_id = u.id)
                   AS session_revoked
        FROM users u WHERE u.id = :u""", {"u": user_id, "sid": session_id})


# --- one-time tokens (email verification, password reset) ---------------------------------------
async def insert_one_time_token(conn: AsyncConnection, *, user_id: uuid.UUID, purpose: str, token_hash: bytes,
                                expires_at: datetime) -> None:
    await conn.execute(text("""
        INSERT INTO one_time_tokens (id, user_id, purpose, token_hash, expires_at)
        VALUES (:id, :u, :p, :h, :exp)"""),
        {"id": uuid.uuid4(), "u": user_id, "p": purpose, "h": token_hash, "exp": expires_at})


async def retire_unused_tokens(conn: AsyncConnection, user_id: uuid.UUID, purpose: str) -> None:
    """A newer token replaces older unused ones: only the latest mail's link works."""
    await conn.execute(text("""
        UPDATE one_time_tokens SET used_at = now()
        WHERE user_id = :u AND purpose = :p AND used_at IS NULL"""), {"u": user_id, "p": purpose})


async def one_time_token(conn: AsyncConnection, token_hash: bytes, purpose: str, *,
                         for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE OF t" if for_update else ""
    return await _one(conn, f"""
        SELECT t.id, t.user_id, t.used_at, t.expires_at <= now() AS expired,
               u.email, u.name, u.status, u.email_verified_at
        FROM one_time_tokens t JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = :h AND t.purpose = :p{lock}""", {"h": token_hash, "p": purpose})


async def use_one_time_token(conn: AsyncConnection, token_id: uuid.UUID) -> bool:
    row = await _one(conn, "UPDATE one_time_tokens SET used_at = now() WHERE id = :id AND used_at IS NULL "
                           "RETURNING id", {"id": token_id})
    return row is not None


# --- signing keys -----------------------------------------------------------------------------------
async def lock_signing_keys(conn: AsyncConnection) -> None:
    """Serialise key creation/rotation across replicas (transaction-scoped advisory lock)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('dropslot.identity.signing_keys'))"))


async def newest_signing_key(conn: AsyncConnection) -> Row | None:
    return await _one(conn, """
        SELECT kid, algorithm, private_key, public_jwk, created_at FROM signing_keys
        WHERE retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1""", {})


async def current_signing_key(conn: AsyncConnection, publish_seconds: int, keep_retired_seconds: int) -> Row | None:
    """The key to sign with: the newest one published for at least `publish_seconds` (so every
    verifier can already fetch it), else the newest of all (the very first key)."""
    return await _one(conn, """
        SELECT kid, algorithm, private_key, public_jwk, created_at FROM signing_keys
        WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => :keep)
        ORDER BY (created_at <= now() - make_interval(secs => :publish)) DESC, created_at DESC, kid
        LIMIT 1""", {"publish": publish_seconds, "keep": keep_retired_seconds})


async def published_keys(conn: AsyncConnection, keep_retired_seconds: int) -> list[Row]:
    """Keys that may still have live tokens: the current ones and those retired recently."""
    rows = await conn.execute(text("""
        SELECT kid, algorithm, public_jwk, created_at, retired_at FROM signing_keys
        WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => :keep)
        ORDER BY created_at DESC, kid"""), {"keep": keep_retired_seconds})
    return [dict(r) for r in rows.mappings()]


async def insert_signing_key(conn: AsyncConnection, *, kid: str, algorithm: str, private_key: str,
                             public_jwk: dict[str, Any]) -> None:
    await conn.execute(text("""
        INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk)
        VALUES (:kid, :alg, :pk, CAST(:jwk AS jsonb))"""),
        {"kid": kid, "alg": algorithm, "pk": private_key, "jwk": json.dumps(public_jwk)})


async def retire_signing_keys_except(conn: AsyncConnection, kid: str) -> list[str]:
    rows = await conn.execute(text(
        "UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL AND kid <> :kid RETURNING kid"
    ), {"kid": kid})
    return [r[0] for r in rows]


async def purge_signing_keys(conn: AsyncConnection, keep_retired_seconds: int) -> int:
    """Private keys nobody can need any more (every token they signed has expired)."""
    rows = await conn.execute(text("""
        DELETE FROM signing_keys
        WHERE retired_at IS NOT NULL AND retired_at < now() - make_interval(secs => :keep) RETURNING kid"""),
        {"keep": keep_retired_seconds})
    return len(rows.all())


# --- stores -------------------------------------------------------------------------------------------
async def remember_store(conn: AsyncConnection, store_id: uuid.UUID, tenant_key: str, owner: uuid.UUID) -> None:
    await conn.execute(text("""
        INSERT INTO known_stores (store_id, tenant_key, owner_user_id) VALUES (:s, :t, :o)
        ON CONFLICT (store_id) DO NOTHING"""), {"s": store_id, "t": tenant_key, "o": owner})


async def tenant_key_of(conn: AsyncConnection, store_id: uuid.UUID) -> str | None:
    row = await _one(conn, "SELECT tenant_key FROM known_stores WHERE store_id = :s", {"s": store_id})
    return row["tenant_key"] if row else None


# --- housekeeping ---------------------------------------------------------------------------------------
async def purge_expired(conn: AsyncConnection, keep_days: int = 7) -> int:
    """Spent or expired tokens and long-dead sessions, kept a few days for investigation."""
    n = 0
    for sql in (
        "DELETE FROM refresh_tokens WHERE expires_at < now() - make_interval(days => :d)",
        "DELETE FROM one_time_tokens WHERE expires_at < now() - make_interval(days => :d)",
        "DELETE FROM sessions WHERE revoked_at < now() - make_interval(days => :d) "
        "AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.session_id = sessions.id "
        "AND t.expires_at > now())",
    ):
        n += (await conn.execute(text(sql), {"d": keep_days})).rowcount or 0
    return n
