"""DropSlot payments: provider intents, holds, refunds, and the saga with booking.

README
======

What it does
------------
- `booking.reservation.created` for a paid drop -> a provider intent with manual capture for
  exactly the reservation's amount and currency (idempotency key `<reservation>:create`),
  `payments.payment.created`. The customer pays (sandbox: `POST /payments/{id}/sandbox/confirm`);
  the provider's callback -> `payments.payment.authorized` (intent `requires_capture`) -> booking
  confirms -> `booking.reservation.confirmed` -> capture -> `payments.payment.succeeded`.
- A decline (or a provider-side cancel) -> `payments.payment.failed` -> booking cancels the
  reservation; payments then closes the intent.
- Reservation expired/cancelled while unpaid -> the intent is canceled (`payments.payment.canceled`).
  A `processing` intent cannot be canceled (Stripe's rule): payments waits, and if it
  authorizes, booking decides (seat again -> confirmed -> capture; no seat ->
  `booking.refund.requested` -> the authorization is released, `canceled`). A captured payment
  of a cancelled reservation is refunded when booking says `refund=True` (the rule's
  `refund_on_cancel`); `booking.refund.requested` on a captured payment refunds it in full.
- `booking.reservation.expiring` with `final_check=True` (booking held the seat once more
  because money may be on its way) -> payments asks the provider for the intent's true status.
- Every status change -> `payments.payment.status_changed`; milestones as above; refunds ->
  `payments.payment.refunded` (`refunded_cents` this time, `total_refunded_cents`). Every event
  carries payment_id, reservation_id, user_id, store_id, provider, status, amount_cents, currency.
- Every event's actor (what the audit trail shows) is the person who caused it, with their
  request's address and user agent, or nobody: `created` names the customer who reserved, the
  sandbox card steps name the customer, an owner's refund the owner; what the provider's
  callbacks and reconciliation bring names nobody. Provider calls queued for the worker keep
  the call context of whoever queued them (`payment_ops.origin`). Details: `service/payments.py`.

How it stays correct
--------------------
- The provider is the source of truth. A callback is authenticated, stored under its unique
  provider event id (`provider_events`) *before* it acts - a replay is a no-op - and it acts
  only by queueing a re-fetch of the intent. Whatever order callbacks come in, the payment
  converges to what the provider says (`domain.payment.apply_snapshot`); a snapshot fetched
  before the last applied one is ignored, captured/refunded amounts never shrink.
- What the saga needs next is decided declaratively from everything known
  (`domain.payment.next_command`) after every change, so a lost command is decided again.
- Provider calls never run inside a consumer's or request's transaction: they are rows in
  `payment_ops` (one pending per payment and kind), run by a worker in every replica (claimed
  with `FOR UPDATE SKIP LOCKED` and a lease, woken by LISTEN/NOTIFY), retried with backoff,
  with idempotency keys from (reservation, operation): `<r>:create`, `<r>:capture:<op id>`,
  `<r>:cancel:<op id>`, `<r>:refund:<refund id>` (an op's retries share its key; Stripe keeps
  even a refusal under a key, so a later attempt in another state needs a new one).
- The one exception is the sandbox's card form, the customer's own step: the request locks the
  payment, the sandbox commits the step (its own transaction, its own small pool), and the
  payment takes the intent's new status in the same request, so no callback's re-fetch can
  apply in between and the change is the customer's (`status_changed` to `processing` or
  `requires_action`; `failed` on a decline).
- Reconciliation (every `DROPSLOT_PAYMENTS_RECONCILE_INTERVAL_SECONDS`, 5 s) asks the provider
  about payments in a non-final state unchanged for `DROPSLOT_PAYMENTS_RECONCILE_STALE_SECONDS`
  (20 s), then with exponential backoff, through the same path as callbacks.
- Owner refunds lock the payment and count pending refunds, so concurrent requests can never
  together exceed what was captured (409 `refund-exceeds-captured`).
- Row-level security on `payments` and `payment_refunds` (tenant = the store's tenant key). The
  refund runs as the store's tenant; consumers, loops and a customer's own reads declare the
  system scope `*` explicitly (customers' reads are then filtered by their user id).

API (under /api/v1, through the gateway)
----------------------------------------
- `GET /payments?reservation_id=&limit=&cursor=` -> `{items, next_cursor}` (the customer's own;
  with `reservation_id`, also the payment's fields at the top level); `GET /payments/{id}` ->
  `{id, reservation_id, provider, status, amount_cents, currency, client_secret, captured_cents,
  refunded_cents, failure_reason, next_action, ...}`. The reservation's customer sees the
  client secret; the store's owner and staff may read the payment without it.
- `POST /payments/{id}/refund {amount_cents?}` (store owner) -> 202 `{id, payment_id,
  amount_cents, currency, status: "pending", reason}`; 409 `payment-not-captured`,
  409 `refund-exceeds-captured` (with `refundable_cents`).
- `POST /payments/providers/{provider}/webhook` -> 200 `{received, duplicate}`; 400
  `invalid-signature` (nothing stored, nothing changed); 404 for an unknown provider.
  Unauthenticated: the signature is the authentication.
- Statuses: `requires_payment_method`, `requires_action`, `processing`, `requires_capture`,
  `succeeded`, `partially_refunded`, `refunded`, `canceled`, and `failed` (declined; the
  intent goes back to `requires_payment_method` with `last_payment_error` as in Stripe,
  payments marks the payment failed and the saga cancels the reservation).

The sandbox provider (default)
------------------------------
A card processor with its own state (`sandbox_*` tables, its own transactions), intents
`requires_payment_method -> [requires_action ->] processing -> requires_capture -> succeeded`,
or `canceled`. Test cards for `POST /payments/{id}/sandbox/confirm {card_number}` (the
reservation's customer, while the payment is `requires_payment_method` and the hold stands):

    4242424242424242  authorizes: 200 `processing`, then `requires_capture` (~0.3 s)
    4000000000000002  declined: 402 `card-declined` (decline_code generic_decline)
    4000000000009995  declined: insufficient_funds     4000000000000069  declined: expired_card
    4000002500003155  3-D Secure: 200 `requires_action` with
                      `next_action.sandbox_authenticate = {method: POST, url: .../payments/{id}/
                      sandbox/authenticate, body: {succeed: true}}`; POST it with
                      `{"succeed": true}` to continue (-> processing -> requires_capture) or
                      `{"succeed": false}` to fail (402 `authentication-failed`)
    4000000000000259  authorizes after a long `processing` (..._SLOW_PROCESSING_SECONDS, 20 s)
    4000000000000341  authorizes, but its callbacks are lost (reconciliation finds it)

Other numbers: 422 `unknown-test-card`. Callbacks go to
`{DROPSLOT_PUBLIC_BASE_URL}/api/v1/payments/providers/sandbox/webhook` (through the gateway, like
a real provider), asynchronously after `DROPSLOT_PAYMENTS_SANDBOX_CALLBACK_DELAY_SECONDS` (0.5),
signed `Sandbox-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` with
`DROPSLOT_PAYMENTS_SANDBOX_WEBHOOK_SECRET` (a dev default; set it in any shared deployment), and
retried with backoff until a 2xx; pending ones survive restarts. Chaos on purpose:
`DROPSLOT_PAYMENTS_SANDBOX_DUPLICATE_RATE` (0.0-1.0: share of callbacks sent twice) and
`DROPSLOT_PAYMENTS_SANDBOX_SHUFFLE=true` (random order within
`DROPSLOT_PAYMENTS_SANDBOX_SHUFFLE_WINDOW_SECONDS`), `DROPSLOT_PAYMENTS_SANDBOX_DROP_RATE` (share of
callbacks never sent: reconciliation repairs them). `DROPSLOT_PAYMENTS_SANDBOX_ENABLED=false`
turns it off.

Switching on Stripe
-------------------
    DROPSLOT_PAYMENTS_PROVIDER=stripe
    DROPSLOT_STRIPE_API_KEY=sk_live_...            (or sk_test_... for Stripe's test mode)
    DROPSLOT_STRIPE_WEBHOOK_SECRET=whsec_...       (from the webhook endpoint in Stripe's dashboard)

In Stripe's dashboard add a webhook endpoint `https://<your gateway>/api/v1/payments/providers/
stripe/webhook` with the events `payment_intent.*` and `charge.refunded`. New payments then
create Stripe PaymentIntents (`capture_method=manual`, `automatic_payment_methods`); the client
confirms them with Stripe.js using the payment's `client_secret` (the sandbox confirm route is
for the sandbox only). Callbacks are verified with `Stripe-Signature` (300 s tolerance,
`DROPSLOT_PAYMENTS_WEBHOOK_TOLERANCE_SECONDS`). Payments made earlier with the sandbox keep
working while it stays enabled. `DROPSLOT_STRIPE_API_BASE` points the SDK elsewhere (tests use
an HTTP fake of Stripe's API; stripe-mock works too). Locally, `stripe listen --forward-to
localhost:8000/api/v1/payments/providers/stripe/webhook` prints the webhook secret to use.
"""
