"""DropSlot audit: who did what, when, to what - from every event.

README
======

What it does
------------
- The `trail` consumer binds `#` on the events exchange and appends one `audit_logs` row per
  event. The kit's inbox (same transaction) makes a redelivery a no-op; a unique
  `(event_id, created_at)` with `ON CONFLICT DO NOTHING` would too.
- `GET /api/v1/audit-logs?entity=&entity_id=&actor_user_id=&store_id=&action=&from=&to=&limit=&cursor=`
  -> `{items, next_cursor}`, oldest first, ordered by (created_at, id). `from` inclusive, `to`
  exclusive, both ISO 8601 with a zone. Platform admins see every row; a store owner (token role
  or `store_members`, fed by `catalog.store.created` / `identity.role.*`) sees the rows of their
  stores only (`store_id` of another store: 404, as everywhere); anyone else 403; no token 401;
  a bad cursor 400 `invalid-cursor`; other bad parameters 422.
- Items: `{id, event_id, actor_user_id, action, entity, entity_id, store_id, before, after, data,
  ip, ua, producer, correlation_id, created_at}`.

What a row says (decisions)
---------------------------
- `created_at` is when the action happened: the envelope's `occurred_at`, stamped by the
  producing service - not when audit got round to writing it (`recorded_at`, not exposed).
  Events reach audit out of order (several producers, retries); the trail is read in the order
  things happened.
- `action` = the event type. `entity` = its middle segment (`booking.reservation.confirmed` ->
  `reservation`); `entity_id` = that entity's id in the payload (`reservation.reservation_id`,
  `drop.drop_id`, `store_id`, `entry.entry_id` for the waitlist, ...), else the most specific id
  the payload carries (`booking.refund.requested` -> its reservation; `identity.role.granted` ->
  the user).
- Actor = the envelope's actor (user id, ip, user agent of the request that caused it; the kit
  carries it through consumers, so `payments.payment.created` caused by a reservation names the
  customer). Sign-up, sign-in, e-mail verification and password change are anonymous requests
  made by the user themselves: for those, an anonymous actor becomes the event's user. Events
  no person caused (a provider callback, a sweeper) keep a null actor.
- `store_id` = the envelope's, else the payload's (top level or inside its entity): what the
  owner view filters on. There is no row-level security on this table: it is a platform table
  read across tenants, and the filter is part of every owner query.
- `before`/`after` are exactly what the producer put in the envelope; `data` is the event's
  payload. All three have secrets redacted (any key containing `token`, `secret` or
  `password`: check-in tokens, verification tokens, payment client secrets, webhook secrets).

Append-only, partitioned, retained
----------------------------------
- A trigger refuses UPDATE and DELETE on every row and TRUNCATE on the table and on each
  partition, for every role including the owning one; UPDATE/DELETE/TRUNCATE are also revoked.
  Nothing in the application changes a row; retention removes whole partitions.
- Declarative RANGE partitioning by month on `created_at` (`audit_logs_y2026m11`, UTC months).
  The seed's indexes (actor; entity + id; created_at) live on the parent, each extended with
  `(created_at, id)` for ordered pages, plus `(store_id, created_at, id)` for owners.
- The `audit-partitions` loop (supervised; at start-up and every
  `DROPSLOT_AUDIT_MAINTENANCE_INTERVAL_SECONDS`, default daily; one replica at a time via an
  advisory lock) creates this month and the next `DROPSLOT_AUDIT_PARTITIONS_AHEAD` (2). An event
  for a month with no partition (a replay from long ago) creates its month in the consumer.
- `DROPSLOT_AUDIT_RETENTION_MONTHS=N` (0 = keep forever) keeps the current month and the N whole
  months before it. Each older partition is detached (committed at once, so the parent is locked
  only briefly), archived when `DROPSLOT_AUDIT_ARCHIVE_DIR` is set - `COPY ... TO STDOUT` as CSV
  with a header into `<dir>/<partition>.csv.gz`, fsynced and renamed into place - and then dropped
  in the same transaction that emits `audit.partition.dropped {partition, archived_to}` (which
  lands in the trail itself). A failed archive leaves the partition detached, not dropped; the
  next run retries it.
"""
