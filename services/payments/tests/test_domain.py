"""Payment rules, the sandbox's state machine and callback signatures: no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from dropslot_payments.domain import sandbox as sm
from dropslot_payments.domain import signature
from dropslot_payments.domain.payment import (
    Command,
    IntentSnapshot,
    IntentStatus,
    Milestone,
    PaymentFacts,
    ReservationState,
    Status,
    apply_snapshot,
    next_command,
    refundable_cents,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def snap(status: IntentStatus, **kw: object) -> IntentSnapshot:
    return IntentSnapshot(id="pi_1", status=status, amount=1000, currency="EUR", **kw)  # type: ignore[arg-type]


def facts(status: Status = Status.REQUIRES_PAYMENT_METHOD, **kw: object) -> PaymentFacts:
    return PaymentFacts(status=status, amount_cents=1000, has_intent=True, **kw)  # type: ignore[arg-type]


# --- applying the provider's truth ------------------------------------------------------------------
def test_authorization_is_a_milestone_once() -> None:
    out = apply_snapshot(facts(Status.PROCESSING), snap(IntentStatus.REQUIRES_CAPTURE, amount_capturable=1000))
    assert (out.status, out.milestones) == (Status.REQUIRES_CAPTURE, (Milestone.AUTHORIZED,))
    again = apply_snapshot(facts(Status.REQUIRES_CAPTURE), snap(IntentStatus.REQUIRES_CAPTURE))
    assert again.milestones == () and not again.changed(facts(Status.REQUIRES_CAPTURE,
                                                              intent_status=IntentStatus.REQUIRES_CAPTURE))


def test_capture_then_refunds_accumulate() -> None:
    out = apply_snapshot(facts(Status.REQUIRES_CAPTURE), snap(IntentStatus.SUCCEEDED, amount_received=1000))
    assert (out.status, out.captured_cents, out.milestones) == (Status.SUCCEEDED, 1000, (Milestone.SUCCEEDED,))
    captured = facts(Status.SUCCEEDED, captured_cents=1000)
    partial = apply_snapshot(captured, snap(IntentStatus.SUCCEEDED, amount_received=1000, amount_refunded=300))
    assert (partial.status, partial.refunded_delta, partial.milestones) == (
        Status.PARTIALLY_REFUNDED, 300, (Milestone.REFUNDED,))
    full = apply_snapshot(replace(captured, status=Status.PARTIALLY_REFUNDED, refunded_cents=300),
                          snap(IntentStatus.SUCCEEDED, amount_received=1000, amount_refunded=1000))
    assert (full.status, full.refunded_delta) == (Status.REFUNDED, 700)


def test_stale_snapshots_never_move_money_backwards() -> None:
    refunded = facts(Status.PARTIALLY_REFUNDED, captured_cents=1000, refunded_cents=300)
    older = apply_snapshot(refunded, snap(IntentStatus.SUCCEEDED, amount_received=1000, amount_refunded=0))
    assert (older.status, older.refunded_cents, older.milestones) == (Status.PARTIALLY_REFUNDED, 300, ())
    before_capture = apply_snapshot(facts(Status.SUCCEEDED, captured_cents=1000), snap(IntentStatus.REQUIRES_CAPTURE))
    assert (before_capture.status, before_capture.milestones) == (Status.SUCCEEDED, ())
    canceled = apply_snapshot(facts(Status.CANCELED), snap(IntentStatus.REQUIRES_PAYMENT_METHOD))
    assert canceled.status == Status.CANCELED


def test_decline_fails_once_and_cleanup_cancel_is_quiet() -> None:
    declined = snap(IntentStatus.REQUIRES_PAYMENT_METHOD, last_error_code="insufficient_funds")
    out = apply_snapshot(facts(Status.PROCESSING), declined)
    assert (out.status, out.failure_reason, out.milestones) == (Status.FAILED, "insufficient_funds", (Milestone.FAILED,))
    failed = facts(Status.FAILED, failure_reason="insufficient_funds")
    assert apply_snapshot(failed, declined).milestones == ()
    closed = apply_snapshot(replace(failed, cancel_requested=True), snap(IntentStatus.CANCELED))
    assert (closed.status, closed.milestones) == (Status.FAILED, ())


def test_cancel_is_ours_or_the_providers() -> None:
    ours = apply_snapshot(facts(cancel_requested=True), snap(IntentStatus.CANCELED))
    assert (ours.status, ours.milestones) == (Status.CANCELED, (Milestone.CANCELED,))
    theirs = apply_snapshot(facts(Status.REQUIRES_CAPTURE), snap(IntentStatus.CANCELED, cancellation_reason="automatic"))
    assert (theirs.status, theirs.milestones) == (Status.FAILED, (Milestone.FAILED,))
    assert theirs.failure_reason == "canceled_by_provider:automatic"


def test_requires_action_carries_next_action() -> None:
    action = {"type": "sandbox_authenticate"}
    out = apply_snapshot(facts(), snap(IntentStatus.REQUIRES_ACTION, next_action=action))
    assert (out.status, out.next_action) == (Status.REQUIRES_ACTION, action)


# --- the saga's next provider call --------------------------------------------------------------------
@pytest.mark.parametrize(("f", "expected"), [
    (PaymentFacts(status=Status.CREATING, amount_cents=1000), Command.CREATE),
    (PaymentFacts(status=Status.CREATING, amount_cents=1000, reservation_state=ReservationState.EXPIRED),
     Command.ABANDON),
    (facts(), None),
    (facts(reservation_state=ReservationState.EXPIRED), Command.CANCEL),
    (facts(Status.REQUIRES_ACTION, reservation_state=ReservationState.CANCELLED), Command.CANCEL),
    (facts(Status.PROCESSING, reservation_state=ReservationState.EXPIRED), None),  # cannot cancel; wait
    (facts(Status.REQUIRES_CAPTURE), None),  # booking has not decided yet
    (facts(Status.REQUIRES_CAPTURE, reservation_state=ReservationState.CONFIRMED), Command.CAPTURE),
    (facts(Status.REQUIRES_CAPTURE, reservation_state=ReservationState.EXPIRED), None),  # booking re-seats or not
    (facts(Status.REQUIRES_CAPTURE, reservation_state=ReservationState.EXPIRED, refund_requested=True),
     Command.CANCEL),
    (facts(Status.REQUIRES_CAPTURE, reservation_state=ReservationState.CANCELLED, reservation_confirmed=True,
           refund_on_cancel=True), Command.CANCEL),
    (facts(Status.REQUIRES_CAPTURE, reservation_state=ReservationState.CANCELLED, reservation_confirmed=True),
     Command.CAPTURE),
    (facts(Status.SUCCEEDED, captured_cents=1000, reservation_state=ReservationState.CANCELLED,
           refund_on_cancel=True), Command.REFUND_REMAINING),
    (facts(Status.SUCCEEDED, captured_cents=1000, refund_requested=True, refund_ledger_cents=1000), None),
    (facts(Status.SUCCEEDED, captured_cents=1000, reservation_state=ReservationState.CANCELLED), None),
    (facts(Status.FAILED, intent_status=IntentStatus.REQUIRES_PAYMENT_METHOD,
           reservation_state=ReservationState.CANCELLED), Command.CANCEL),
    (facts(Status.FAILED, intent_status=IntentStatus.CANCELED, reservation_state=ReservationState.CANCELLED), None),
    (facts(Status.CANCELED, reservation_state=ReservationState.EXPIRED), None),
])
def test_next_command(f: PaymentFacts, expected: Command | None) -> None:
    assert next_command(f) == expected


def test_refundable_counts_pending_refunds() -> None:
    p = facts(Status.PARTIALLY_REFUNDED, captured_cents=1000, refunded_cents=200, refund_ledger_cents=700)
    assert refundable_cents(p) == 300
    assert refundable_cents(facts(Status.REQUIRES_CAPTURE)) == 0


# --- the sandbox processor --------------------------------------------------------------------------
def intent(**kw: object) -> sm.SandboxIntent:
    base = dict(id="pi_sbx_1", amount=1000, currency="EUR", status=IntentStatus.REQUIRES_PAYMENT_METHOD,
                client_secret="pi_sbx_1_secret_x", created_at=NOW)
    return sm.SandboxIntent(**{**base, **kw})  # type: ignore[arg-type]


def confirm(i: sm.SandboxIntent, number: str) -> sm.Step:
    return sm.confirm(i, sm.TEST_CARDS[number], now=NOW, processing=timedelta(seconds=1),
                      slow_processing=timedelta(seconds=30), authenticate_url="http://x/authenticate")


def test_success_card_processes_then_authorizes_then_captures() -> None:
    i, events = confirm(intent(), "4242424242424242")
    assert (i.status, i.settle_at, events) == (IntentStatus.PROCESSING, NOW + timedelta(seconds=1), [sm.EV_PROCESSING])
    i, events = sm.settle(i)
    assert (i.status, i.amount_capturable, events) == (IntentStatus.REQUIRES_CAPTURE, 1000, [sm.EV_CAPTURABLE])
    i, events = sm.capture(i)
    assert (i.status, i.amount_received, i.amount_capturable, events) == (
        IntentStatus.SUCCEEDED, 1000, 0, [sm.EV_SUCCEEDED])
    with pytest.raises(sm.UnexpectedState):
        sm.capture(i)
    with pytest.raises(sm.UnexpectedState):
        sm.cancel(i)


def test_declined_card_goes_back_to_requires_payment_method_with_an_error() -> None:
    i, events = confirm(intent(), "4000000000000002")
    assert i.status == IntentStatus.REQUIRES_PAYMENT_METHOD and events == [sm.EV_FAILED]
    assert i.last_payment_error and i.last_payment_error["decline_code"] == "generic_decline"
    i, _ = confirm(i, "4242424242424242")  # like Stripe, another card may be tried
    assert i.status == IntentStatus.PROCESSING and i.last_payment_error is None


def test_three_d_secure_needs_an_extra_step() -> None:
    i, events = confirm(intent(), "4000002500003155")
    assert (i.status, events) == (IntentStatus.REQUIRES_ACTION, [sm.EV_REQUIRES_ACTION])
    assert i.next_action and i.next_action["sandbox_authenticate"]["url"] == "http://x/authenticate"
    with pytest.raises(sm.UnexpectedState):
        confirm(i, "4242424242424242")
    ok, _ = sm.authenticate(i, succeed=True, now=NOW, processing=timedelta(seconds=1))
    assert ok.status == IntentStatus.PROCESSING and ok.next_action is None
    bad, events = sm.authenticate(i, succeed=False, now=NOW, processing=timedelta(seconds=1))
    assert bad.status == IntentStatus.REQUIRES_PAYMENT_METHOD and events == [sm.EV_FAILED]


def test_slow_and_silent_cards() -> None:
    slow, _ = confirm(intent(), "4000000000000259")
    assert slow.settle_at == NOW + timedelta(seconds=30)
    silent, _ = confirm(intent(), "4000000000000341")
    assert silent.callbacks_lost and silent.status == IntentStatus.PROCESSING


def test_cancel_rules_follow_stripe() -> None:
    for status in (IntentStatus.REQUIRES_PAYMENT_METHOD, IntentStatus.REQUIRES_ACTION, IntentStatus.REQUIRES_CAPTURE):
        i, events = sm.cancel(intent(status=status))
        assert (i.status, events) == (IntentStatus.CANCELED, [sm.EV_CANCELED])
    with pytest.raises(sm.UnexpectedState):
        sm.cancel(intent(status=IntentStatus.PROCESSING))
    with pytest.raises(sm.UnexpectedState):
        confirm(intent(status=IntentStatus.CANCELED), "4242424242424242")


def test_refunds_never_exceed_what_was_captured() -> None:
    paid = intent(status=IntentStatus.SUCCEEDED, amount_received=1000)
    i, events, amount = sm.refund(paid, 400)
    assert (i.amount_refunded, amount, events) == (400, 400, [sm.EV_REFUNDED])
    with pytest.raises(sm.AmountTooLarge):
        sm.refund(i, 601)
    i, _, amount = sm.refund(i)  # the rest
    assert (i.amount_refunded, amount) == (1000, 600)
    with pytest.raises(sm.AmountTooLarge):
        sm.refund(i, 1)
    with pytest.raises(sm.UnexpectedState):
        sm.refund(intent(status=IntentStatus.REQUIRES_CAPTURE), 1)


def test_test_cards_are_valid_numbers() -> None:
    assert all(sm.luhn_ok(n) for n in sm.TEST_CARDS)
    assert not sm.luhn_ok("4242424242424241")
    assert sm.normalize_card_number("4242 4242-4242 4242") == "4242424242424242"


# --- signatures (Stripe's scheme) -------------------------------------------------------------------
def test_signature_roundtrip_and_refusals() -> None:
    body = b'{"id":"evt_1"}'
    header = signature.sign_header("s3cret", body, timestamp=1_000_000)
    assert signature.verify("s3cret", header, body, now=1_000_100) == 1_000_000
    with pytest.raises(signature.InvalidSignature):
        signature.verify("other", header, body, now=1_000_100)
    with pytest.raises(signature.InvalidSignature):
        signature.verify("s3cret", header, body + b" ", now=1_000_100)
    with pytest.raises(signature.InvalidSignature):
        signature.verify("s3cret", header, body, now=1_000_000 + 301)  # a replay, too late
    for bad in (None, "", "t=abc,v1=00", "v1=00", "t=1000000"):
        with pytest.raises(signature.InvalidSignature):
            signature.verify("s3cret", bad, body, now=1_000_100)
    rotated = f"{header},v1={'0' * 64}"  # several v1 values: any match is enough
    assert signature.verify("s3cret", rotated, body, now=1_000_100)
