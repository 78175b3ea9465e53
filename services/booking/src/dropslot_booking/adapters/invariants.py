"""The invariants of booking's counters, as one query the tests run after every concurrency test.

- slots.capacity_reserved = reservations PENDING + CONFIRMED + CHECKED_IN of the slot;
- slots.capacity_waitlist = waitlist entries OFFERED for the slot;
- capacity_reserved + capacity_waitlist <= capacity_total (also a CHECK constraint);
- drop_user_counts.active = the user's active reservations in the drop;
- at most one active reservation and one entry in line per (slot, user) (unique indexes).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .sql import all_rows, set_scope

INVARIANT_SQL = """
WITH res AS (
    SELECT slot_id, count(*) AS n FROM reservations
    WHERE state IN ('PENDING', 'CONFIRMED', 'CHECKED_IN') GROUP BY slot_id
), offers AS (
    SELECT slot_id, count(*) AS n FROM waitlist WHERE state = 'OFFERED' GROUP BY slot_id
), per_user AS (
    SELECT drop_id, user_id, count(*) AS n FROM reservations
    WHERE state IN ('PENDING', 'CONFIRMED', 'CHECKED_IN') GROUP BY drop_id, user_id
)
SELECT 'slot ' || s.id || ': capacity_reserved=' || s.capacity_reserved || ' but active reservations='
       || COALESCE(res.n, 0) AS problem
FROM slots s LEFT JOIN res ON res.slot_id = s.id
WHERE s.capacity_reserved <> COALESCE(res.n, 0) AND (CAST(:slot AS uuid) IS NULL OR s.id = CAST(:slot AS uuid))
UNION ALL
SELECT 'slot ' || s.id || ': capacity_waitlist=' || s.capacity_waitlist || ' but open offers=' || COALESCE(offers.n, 0)
FROM slots s LEFT JOIN offers ON offers.slot_id = s.id
WHERE s.capacity_waitlist <> COALESCE(offers.n, 0) AND (CAST(:slot AS uuid) IS NULL OR s.id = CAST(:slot AS uuid))
UNION ALL
SELECT 'slot ' || s.id || ': oversold ' || s.capacity_reserved || '+' || s.capacity_waitlist || '>' || s.capacity_total
FROM slots s WHERE s.capacity_reserved + s.capacity_waitlist > s.capacity_total
UNION ALL
SELECT 'user ' || COALESCE(c.user_id, p.user_id) || ' in drop ' || COALESCE(c.drop_id, p.drop_id)
       || ': counter=' || COALESCE(c.active, 0) || ' but active reservations=' || COALESCE(p.n, 0)
FROM drop_user_counts c FULL JOIN per_user p ON p.drop_id = c.drop_id AND p.user_id = c.user_id
WHERE COALESCE(c.active, 0) <> COALESCE(p.n, 0)
"""


async def violations(conn: AsyncConnection, slot_id: Any = None) -> list[str]:
    """Every broken invariant, as readable lines (empty when all hold). Reads all tenants."""
    await set_scope(conn, all_rows=True)
    rows = await all_rows(conn, INVARIANT_SQL, slot=slot_id)
    return [r["problem"] for r in rows]
