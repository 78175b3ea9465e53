"""All SQL of the webhooks service.

Row-level security (see migration webhooks_0002) hides every store's rows until the
transaction is scoped: `scope_store` for one store (API, consumer), `scope_system` for the
delivery workers that serve every store.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

Row = dict[str, Any]

ENDPOINT_COLUMNS = (
    "id, store_id, url, description, event_types, active, secret, secret_hint, previous_secret,"
    " previous_secret_expires_at, failing_since, disabled_reason, disabled_at, created_by, created_at, updated_at"
)
EVENT_COLUMNS = (
    "id, seq, endpoint_id, store_id, event_id, type, payload::text AS payload, occurred_at, delivery_status,"
    " retry_count, attempt_count, next_attempt_at, last_attempt_at, last_status_code, last_error,"
    " delivered_at, created_at, updated_at"
)
ATTEMPT_COLUMNS = (
    "id, webhook_event_id, endpoint_id, attempt_number, url, started_at, duration_ms, status_code, success,"
    " response_body, error"
)


async def _one(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> Row | None:
    row = (await conn.execute(text(sql), params)).mappings().first()
    return dict(row) if row is not None else None


async def _all(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> list[Row]:
    return [dict(r) for r in (await conn.execute(text(sql), params)).mappings()]


# --- scope ---------------------------------------------------------------------------------------
async def scope_store(conn: AsyncConnection, store_id: uuid.UUID) -> None:
    await conn.execute(
        text("SELECT set_config('dropslot.store', :s, true), set_config('dropslot.scope', '', true)"),
        {"s": str(store_id)},
    )


async def scope_system(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT set_config('dropslot.scope', 'system', true)"))


async def endpoint_store(conn: AsyncConnection, endpoint_id: uuid.UUID) -> uuid.UUID | None:
    """Which store an endpoint belongs to (looked up across stores, before authorizing)."""
    await scope_system(conn)
    try:
        row = await _one(conn, "SELECT store_id FROM webhook_endpoints WHERE id = :e", {"e": endpoint_id})
    finally:
        await conn.execute(text("SELECT set_config('dropslot.scope', '', true)"))
    return row["store_id"] if row else None


# --- endpoints -----------------------------------------------------------------------------------
async def count_endpoints(conn: AsyncConnection, store_id: uuid.UUID) -> int:
    row = await _one(conn, "SELECT count(*) AS n FROM webhook_endpoints WHERE store_id = :s", {"s": store_id})
    return int(row["n"]) if row else 0


async def insert_endpoint(conn: AsyncConnection, values: Row) -> Row:
    row = await _one(
        conn,
        "INSERT INTO webhook_endpoints (id, store_id, url, description, event_types, event_type_regex, active,"
        " secret, secret_hint, created_by) VALUES (:id, :store_id, :url, :description, :event_types,"
        " :event_type_regex, :active, :secret, :secret_hint,"
        f" :created_by) RETURNING {ENDPOINT_COLUMNS}",
        values,
    )
    assert row is not None
    return row


async def list_endpoints(
    conn: AsyncConnection, store_id: uuid.UUID, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[Row]:
    where = "store_id = :s"
    params: dict[str, Any] = {"s": store_id, "n": limit}
    if after is not None:
        where += " AND (created_at, id) > (:ac, :ai)"
        params.update(ac=after[0], ai=after[1])
    return await _all(
        conn,
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE {where} ORDER BY created_at, id LIMIT :n",
        params,
    )


async def get_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    lock = " FOR NO KEY UPDATE" if for_update else ""
    return await _one(conn, f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = :e{lock}",
                      {"e": endpoint_id})


UPDATABLE = ("url", "description", "event_types", "event_type_regex", "active")


async def update_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID, changes: Row) -> Row | None:
    sets = [f"{k} = :{k}" for k in changes if k in UPDATABLE]
    if changes.get("active") is True:
        # Re-enabled by its owner: forget why it was disabled, and start the failure clock anew.
        sets += ["disabled_reason = NULL", "disabled_at = NULL", "failing_since = NULL", "next_probe_at = NULL"]
    sets.append("updated_at = now()")
    return await _one(
        conn,
        f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = :e RETURNING {ENDPOINT_COLUMNS}",
        {**{k: v for k, v in changes.items() if k in UPDATABLE}, "e": endpoint_id},
    )


async def rotate_secret(
    conn: AsyncConnection, endpoint_id: uuid.UUID, secret: str, hint: str,
    previous: str | None, previous_expires_at: datetime | None,
) -> Row | None:
    return await _one(
        conn,
        "UPDATE webhook_endpoints SET secret = :s, secret_hint = :h, previous_secret = :p,"
        " previous_secret_expires_at = :px, updated_at = now()"
        f" WHERE id = :e RETURNING {ENDPOINT_COLUMNS}",
        {"e": endpoint_id, "s": secret, "h": hint, "p": previous, "px": previous_expires_at},
    )


async def delete_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID) -> Row | None:
    return await _one(conn, f"DELETE FROM webhook_endpoints WHERE id = :e RETURNING {ENDPOINT_COLUMNS}",
                      {"e": endpoint_id})


# --- deliveries ----------------------------------------------------------------------------------
_FAN_OUT = text("SELECT fan_out(:store, :event, :type, CAST(:payload AS json), :occurred, :tp)")


async def fan_out(
    conn: AsyncConnection, *, store_id: uuid.UUID, event_id: uuid.UUID, event_type: str, payload: str,
    occurred_at: datetime, traceparent: str | None = None,
) -> int:
    """One delivery per active endpoint of the store whose filter matches, in one round trip
    (the function in migration webhooks_0003 scopes the transaction to the store, then
    inserts); a repeat of the same event adds nothing. Returns how many were created."""
    result = await conn.execute(_FAN_OUT, {"store": store_id, "event": event_id, "type": event_type,
                                           "payload": payload, "occurred": occurred_at, "tp": traceparent})
    return int(result.scalar_one())


async def list_events(
    conn: AsyncConnection, endpoint_id: uuid.UUID, limit: int, before_seq: int | None,
    status: str | None, event_type: str | None,
) -> list[Row]:
    where = ["endpoint_id = :e"]
    params: dict[str, Any] = {"e": endpoint_id, "n": limit}
    if before_seq is not None:
        where.append("seq < :b")
        params["b"] = before_seq
    if status is not None:
        where.append("delivery_status = :st")
        params["st"] = status
    if event_type is not None:
        where.append("type = :t")
        params["t"] = event_type
    return await _all(
        conn,
        f"SELECT {EVENT_COLUMNS} FROM webhook_events WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT :n",
        params,
    )


# A delivery is addressed by its own id (the webhook-id receivers see) or by the id of the event
# it carries: both are unique within an endpoint.
_BY_ID = "endpoint_id = :e AND (id = :i OR event_id = :i)"


async def get_event(conn: AsyncConnection, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> Row | None:
    return await _one(conn, f"SELECT {EVENT_COLUMNS} FROM webhook_events WHERE {_BY_ID} LIMIT 1",
                      {"i": delivery_id, "e": endpoint_id})


async def list_attempts(conn: AsyncConnection, delivery_id: uuid.UUID, limit: int, after_id: int | None) -> list[Row]:
    params: dict[str, Any] = {"d": delivery_id, "n": limit, "a": after_id or 0}
    return await _all(
        conn,
        f"SELECT {ATTEMPT_COLUMNS} FROM webhook_attempts WHERE webhook_event_id = :d AND id > :a"
        " ORDER BY id LIMIT :n",
        params,
    )


_REQUEUE = (
    "delivery_status = 'pending', retry_count = 0, next_attempt_at = now(), delivered_at = NULL,"
    " updated_at = now()"
)


async def requeue_event(conn: AsyncConnection, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> Row | None:
    row = await _one(
        conn,
        f"UPDATE webhook_events SET {_REQUEUE} WHERE {_BY_ID} RETURNING {EVENT_COLUMNS}",
        {"i": delivery_id, "e": endpoint_id},
    )
    await notify_workers(conn)
    return row


async def requeue_since(conn: AsyncConnection, endpoint_id: uuid.UUID, since: datetime, only_failed: bool) -> int:
    extra = " AND delivery_status = 'failed'" if only_failed else " AND delivery_status <> 'pending'"
    result = await conn.execute(
        text(f"UPDATE webhook_events SET {_REQUEUE} WHERE endpoint_id = :e AND occurred_at >= :since{extra}"),
        {"e": endpoint_id, "since": since},
    )
    await notify_workers(conn)
    return int(result.rowcount or 0)


async def notify_workers(conn: AsyncConnection) -> None:
    """Wake the delivery workers when this transaction commits."""
    await conn.execute(text("SELECT pg_notify('webhooks_deliveries', '')"))


# --- the workers' side (system scope) ------------------------------------------------------------
# Claiming is two statements, so that the second sees every lease committed before it: under
# READ COMMITTED a statement reads one snapshot, taken when it starts. Had the endpoint rows been
# locked and the leases counted in one statement, a worker that started it while another was
# claiming for the same endpoint would wait for that one's commit to lock the endpoint, and then
# count the endpoint's leases in its older snapshot, without the ones just committed: both
# workers would fill the endpoint's cap (seen in CI: 8 attempts in flight against a cap of 4).
_LOCK_DUE_ENDPOINTS = text("""
WITH due AS (
    SELECT endpoint_id, min(next_attempt_at) AS due_at
    FROM webhook_events
    WHERE delivery_status = 'pending' AND next_attempt_at <= now()
      AND (locked_until IS NULL OR locked_until < now())
    GROUP BY endpoint_id
    ORDER BY due_at
    LIMIT :max_endpoints
)
SELECT e.id, d.due_at
FROM webhook_endpoints e JOIN due d ON d.endpoint_id = e.id
WHERE e.active
FOR NO KEY UPDATE OF e SKIP LOCKED
""")

_CLAIM = text("""
WITH eps AS (
    SELECT e.id, e.failing_since, x.due_at
    FROM unnest(CAST(:ids AS uuid[]), CAST(:due AS timestamptz[])) AS x(id, due_at)
    JOIN webhook_endpoints e ON e.id = x.id
), picked AS (
    SELECT w.id, eps.due_at
    FROM eps CROSS JOIN LATERAL (
        SELECT x.id FROM webhook_events x
        WHERE x.endpoint_id = eps.id AND x.delivery_status = 'pending' AND x.next_attempt_at <= now()
          AND (x.locked_until IS NULL OR x.locked_until < now())
        ORDER BY x.next_attempt_at, x.seq
        LIMIT GREATEST(0, (CASE WHEN eps.failing_since IS NULL THEN :cap ELSE 1 END) - (
            SELECT count(*) FROM webhook_events f
            WHERE f.endpoint_id = eps.id AND f.delivery_status = 'pending'
              AND f.locked_until IS NOT NULL AND f.locked_until >= now()))
        FOR UPDATE OF x SKIP LOCKED
    ) w
    ORDER BY eps.due_at
    LIMIT :free
)
UPDATE webhook_events ev
SET locked_until = now() + make_interval(secs => CAST(:lease AS double precision)), lock_token = :token
FROM picked, webhook_endpoints e
WHERE ev.id = picked.id AND e.id = ev.endpoint_id
RETURNING ev.id, ev.endpoint_id, ev.store_id, ev.type, ev.payload::text AS payload, ev.traceparent, ev.retry_count,
          ev.attempt_count, ev.occurred_at, ev.created_at, e.url, e.secret, e.previous_secret,
          e.previous_secret_expires_at, false AS probe
""")

_CLAIM_PROBES = text("""
WITH eps AS (
    SELECT e.id FROM webhook_endpoints e
    WHERE e.active AND e.failing_since IS NOT NULL AND e.next_probe_at <= now()
      AND NOT EXISTS (SELECT 1 FROM webhook_events f WHERE f.endpoint_id = e.id
                      AND f.delivery_status = 'pending' AND f.locked_until IS NOT NULL AND f.locked_until >= now())
    ORDER BY e.next_probe_at
    LIMIT :n
    FOR NO KEY UPDATE OF e SKIP LOCKED
), bump AS (
    UPDATE webhook_endpoints SET next_probe_at = now() + make_interval(secs => CAST(:interval AS double precision))
    WHERE id IN (SELECT id FROM eps)
), picked AS (
    SELECT x.id FROM eps CROSS JOIN LATERAL (
        SELECT w.id FROM webhook_events w
        WHERE w.endpoint_id = eps.id AND w.delivery_status = 'pending'
          AND (w.locked_until IS NULL OR w.locked_until < now())
        ORDER BY w.next_attempt_at, w.seq
        LIMIT 1
        FOR UPDATE OF w SKIP LOCKED
    ) x
)
UPDATE webhook_events ev
SET locked_until = now() + make_interval(secs => CAST(:lease AS double precision)), lock_token = :token
FROM picked, webhook_endpoints e
WHERE ev.id = picked.id AND e.id = ev.endpoint_id
RETURNING ev.id, ev.endpoint_id, ev.store_id, ev.type, ev.payload::text AS payload, ev.traceparent, ev.retry_count,
          ev.attempt_count, ev.occurred_at, ev.created_at, e.url, e.secret, e.previous_secret,
          e.previous_secret_expires_at, true AS probe
""")


async def claim(conn: AsyncConnection, *, free: int, cap: int, lease_seconds: float, token: uuid.UUID) -> list[Row]:
    """Lease up to `free` due deliveries, at most `cap` in flight per endpoint across all workers
    (1 while the endpoint is failing: a single probe, not a flood). Locking the endpoint rows
    first, then counting in a statement of its own (see _LOCK_DUE_ENDPOINTS), makes the
    per-endpoint count exact between replicas; the lease (`locked_until`) keeps any
    other worker off a delivery while it is being sent, and lets another take it over if this
    worker dies."""
    if free <= 0:
        return []
    endpoints = (await conn.execute(_LOCK_DUE_ENDPOINTS, {"max_endpoints": max(free * 4, 32)})).all()
    if not endpoints:
        return []
    result = await conn.execute(_CLAIM, {
        "ids": [r.id for r in endpoints], "due": [r.due_at for r in endpoints],
        "cap": cap, "free": free, "lease": lease_seconds, "token": token,
    })
    return [dict(r) for r in result.mappings()]


async def claim_probes(
    conn: AsyncConnection, *, free: int, interval_seconds: float, lease_seconds: float, token: uuid.UUID
) -> list[Row]:
    """Failing endpoints whose probe is due and that have nothing in flight: lease each one's
    oldest pending delivery, ahead of its schedule, and set the next probe."""
    if free <= 0:
        return []
    result = await conn.execute(
        _CLAIM_PROBES, {"n": free, "interval": interval_seconds, "lease": lease_seconds, "token": token}
    )
    return [dict(r) for r in result.mappings()]


async def release_leases(conn: AsyncConnection, ids: Sequence[uuid.UUID], token: uuid.UUID) -> None:
    """Hand deliveries back (a worker stopping mid-attempt) so others need not wait for the lease."""
    if ids:
        await conn.execute(
            text("UPDATE webhook_events SET locked_until = NULL, lock_token = NULL"
                 " WHERE id = ANY(:ids) AND lock_token = :t"),
            {"ids": list(ids), "t": token},
        )


async def lock_deliveries(
    conn: AsyncConnection, ids: Sequence[uuid.UUID], endpoint_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of these deliveries that still exist, locked so they cannot be deleted (with their
    endpoint) before the caller's transaction ends. Endpoints first, in id order, as an
    endpoint's deletion locks it before its deliveries: no deadlock either way round."""
    await conn.execute(
        text("SELECT id FROM webhook_endpoints WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"),
        {"ids": sorted(set(endpoint_ids))},
    )
    rows = await _all(conn, "SELECT id FROM webhook_events WHERE id = ANY(:ids) FOR KEY SHARE", {"ids": list(ids)})
    return {r["id"] for r in rows}


async def insert_attempts(conn: AsyncConnection, rows: Sequence[Row]) -> None:
    await conn.execute(
        text(
            "INSERT INTO webhook_attempts (webhook_event_id, endpoint_id, store_id, attempt_number, url,"
            " started_at, duration_ms, status_code, success, response_body, error, worker)"
            " VALUES (:webhook_event_id, :endpoint_id, :store_id, :attempt_number, :url, :started_at,"
            " :duration_ms, :status_code, :success, :response_body, :error, :worker)"
        ),
        list(rows),
    )


async def finish_attempts(conn: AsyncConnection, rows: Sequence[Row]) -> None:
    """Record outcomes on their deliveries, where the worker still holds the lease (`token`):
    if a lease lapsed and another worker took the delivery over, that worker owns its state."""
    await conn.execute(
        text(
            "UPDATE webhook_events SET attempt_count = attempt_count + 1,"
            " retry_count = CASE WHEN :ok OR :probe THEN retry_count ELSE retry_count + 1 END,"
            " delivery_status = :status, next_attempt_at = COALESCE(:next, next_attempt_at),"
            " delivered_at = CASE WHEN :ok THEN now() ELSE delivered_at END,"
            " last_attempt_at = :started, last_status_code = :code, last_error = :err,"
            " locked_until = NULL, lock_token = NULL, updated_at = now()"
            " WHERE id = :id AND lock_token = :token"
        ),
        list(rows),
    )


async def endpoints_recovered(conn: AsyncConnection, endpoint_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Successes: these endpoints are healthy. Those that had been failing get what waits on
    the retry schedule now (the receiver is back; no reason to make it wait hours)."""
    if not endpoint_ids:
        return []
    rows = await _all(
        conn,
        "UPDATE webhook_endpoints SET failing_since = NULL, next_probe_at = NULL"
        " WHERE id = ANY(:ids) AND failing_since IS NOT NULL RETURNING id",
        {"ids": list(endpoint_ids)},
    )
    recovered = [r["id"] for r in rows]
    if recovered:
        await conn.execute(
            text("UPDATE webhook_events SET next_attempt_at = now() WHERE endpoint_id = ANY(:ids)"
                 " AND delivery_status = 'pending' AND next_attempt_at > now() AND retry_count > 0"),
            {"ids": recovered},
        )
        await notify_workers(conn)
    return recovered


async def endpoints_failed(
    conn: AsyncConnection, first_failure: dict[uuid.UUID, datetime], probe_interval_seconds: float
) -> dict[uuid.UUID, datetime]:
    """Failures: when did each endpoint's current run of failures start? (A newly failing
    endpoint gets its first probe scheduled.)"""
    if not first_failure:
        return {}
    ids = list(first_failure)
    rows = await _all(
        conn,
        "UPDATE webhook_endpoints e SET failing_since = COALESCE(e.failing_since, v.t),"
        " next_probe_at = COALESCE(e.next_probe_at, now() + make_interval(secs => CAST(:p AS double precision)))"
        " FROM unnest(CAST(:ids AS uuid[]), CAST(:ts AS timestamptz[])) AS v(id, t)"
        " WHERE e.id = v.id RETURNING e.id, e.failing_since",
        {"ids": ids, "ts": [first_failure[i] for i in ids], "p": probe_interval_seconds},
    )
    return {r["id"]: r["failing_since"] for r in rows}


async def disable_endpoint(conn: AsyncConnection, endpoint_id: uuid.UUID, reason: str) -> Row | None:
    """Returns the endpoint if this call disabled it (None if it was already inactive)."""
    return await _one(
        conn,
        "UPDATE webhook_endpoints SET active = false, disabled_reason = :r, disabled_at = now(), updated_at = now()"
        f" WHERE id = :e AND active RETURNING {ENDPOINT_COLUMNS}",
        {"e": endpoint_id, "r": reason},
    )


async def purge_finished(conn: AsyncConnection, older_than: datetime, batch: int) -> int:
    result = await conn.execute(
        text("DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events"
             " WHERE delivery_status <> 'pending' AND updated_at < :t LIMIT :n)"),
        {"t": older_than, "n": batch},
    )
    return int(result.rowcount or 0)


async def drop_expired_previous_secrets(conn: AsyncConnection) -> int:
    result = await conn.execute(
        text("UPDATE webhook_endpoints SET previous_secret = NULL, previous_secret_expires_at = NULL"
             " WHERE previous_secret IS NOT NULL AND previous_secret_expires_at < now()")
    )
    return int(result.rowcount or 0)
