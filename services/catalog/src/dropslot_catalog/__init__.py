"""DropSlot catalog: stores, branches, products and drops, isolated per store.

Layout: `domain/` (the lifecycle and what may change after publishing, opening hours,
currencies, distances; no I/O), `service/` (use cases, the scheduler, public reads),
`adapters/` (all SQL in `repo`, the Redis cache), `api/` (routes and request models),
`views.py` (rows -> answers and event snapshots), `errors.py` (problem types).

Decisions (where API.md and the seed are silent):

- Tenancy. `stores` is the tenant directory (public fields only) and has no row-level
  security; `branches`, `products`, `drops` carry the store's `tenant_key` (a composite
  foreign key keeps it equal to the store's) and are guarded by RLS, FORCEd so the owning
  service role is bound too. Store-admin requests authorize with the kit's memberships
  (token roles, or `store_members`: the creator is granted owner in the store's own
  transaction) and then set the store's tenant. Outsiders get 404, never 403.
- Public reads only see published data, by construction: they run with no tenant, so the
  only rows visible are those the `public_read` SELECT policies allow (a drop that is not
  a DRAFT, a product featured in one, a branch of a store that has one), and the queries
  also filter on status. Writes never pass through those policies. A draft is visible to
  its store's owner and staff only (`GET /drops/{id}` with their token).
- Drops addressed by id alone (`/drops/{id}/publish`) are found without a tenant when
  published, else in the caller's own stores one tenant at a time. Consequence: a
  platform admin who is no member of the store cannot see or act on its drafts.
- Lifecycle and edits: see `domain/lifecycle.py`. In short, after publishing the window
  can only grow, the product cannot change, a LIVE drop's price, waitlist, refund and
  cancellation terms cannot get worse for customers; refusals are 409
  `drop-not-editable` listing each refused field. Publishing a drop of an inactive
  product is 409 `product-inactive`; a lifecycle move from the wrong state is 409
  `invalid-transition`. The clock's moves (SCHEDULED->LIVE at opens_at, LIVE->ENDED at
  ends_at) are made by `service/scheduler.py` in every replica, safely.
- Events: every change emits its `catalog.*` event with envelope store/tenant and
  before/after; every drop event carries the full `DropSnapshot` (rule with defaults and
  the effective opens_at, price, currency, store, product, branches). A product change
  that alters name/price/currency re-announces its open drops as `catalog.drop.updated`
  (`changed=["product"]`). Branch and store changes are announced by their own events
  only (drop snapshots are refreshed on the drops' next event).
- Public browsing (`GET /drops`): `status=live|upcoming` (default both), `store=` (id or
  slug), `near=lat,lng` + `radius_km` (default 25; a drop matches when any branch of its
  store is within the radius; answers then carry `distance_km`), `from`/`to` (drops
  overlapping the window), ordered by (starts_at, id), cursor-paginated. Answers are
  cached in Redis under a version key bumped after every committed write (and every
  clock move), with a strong ETag (304 on If-None-Match) and `Cache-Control: public,
  no-cache` by default (configurable max-age), so a change is visible on the next read.
"""
