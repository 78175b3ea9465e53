"""Booking's rules without I/O: capacity arithmetic, rule decisions, states, check-in tokens, and
how long a replica's cache repeats a refusal."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dropslot_booking.domain import rules, states
from dropslot_booking.domain.capacity import Capacity
from dropslot_booking.domain.tokens import CheckinTokens, InvalidCheckinToken, SigningKey
from dropslot_booking.service.runtime import SlotCache
from dropslot_booking.service.slotnews import heard

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


# --- capacity ------------------------------------------------------------------------------------
def test_available_counts_held_offers_as_taken() -> None:
    c = Capacity(total=10, reserved=7, waitlist=2)
    assert c.taken == 9 and c.available == 1 and not c.sold_out
    assert Capacity(10, 8, 2).sold_out and Capacity(10, 8, 2).available == 0


def test_a_batch_gets_at_most_the_free_seats() -> None:
    c = Capacity(total=50, reserved=47, waitlist=0)
    assert c.grant(10) == 3 and c.grant(2) == 2 and c.grant(0) == 0
    assert Capacity(5, 5, 0).grant(3) == 0


def test_capacity_grows_freely_and_shrinks_only_to_what_is_taken() -> None:
    c = Capacity(total=10, reserved=4, waitlist=2)
    assert c.can_resize(20) and c.can_resize(6) and not c.can_resize(5)


def test_freed_seats_are_offered_to_waiting_people_first() -> None:
    full = Capacity(total=3, reserved=3, waitlist=0)
    after = full.release(reserved=1)
    assert after.available == 1 and after.offers_possible(waiting=5) == 1 and after.offers_possible(waiting=0) == 0
    with pytest.raises(ValueError):
        full.release(waitlist=1)


# --- the rule ------------------------------------------------------------------------------------
def test_rule_defaults_are_api_md_defaults() -> None:
    r = rules.parse_rule({})
    assert (r.max_per_user, r.hold_minutes, r.waitlist_enabled, r.waitlist_offer_minutes,
            r.cancel_until_minutes_before, r.refund_on_cancel, r.require_verified_email) == (1, 10, True, 15, 60, True, False)


def test_a_bad_field_falls_back_to_its_default_without_losing_the_rest() -> None:
    r = rules.parse_rule({"max_per_user": 0, "hold_minutes": 3, "unknown": "x"})
    assert r.max_per_user == 1 and r.hold_minutes == 3


def test_hold_and_offer_lengths_follow_the_rule_and_the_minute_scale() -> None:
    r = rules.parse_rule({"hold_minutes": 5, "waitlist_offer_minutes": 2})
    assert rules.hold_expires_at(NOW, r) == NOW + timedelta(minutes=5)
    assert rules.hold_expires_at(NOW, r, minute_seconds=1) == NOW + timedelta(seconds=5)
    assert rules.offer_expires_at(NOW, r) == NOW + timedelta(minutes=2)


def test_customer_may_cancel_until_the_deadline() -> None:
    r = rules.parse_rule({"cancel_until_minutes_before": 60})
    start = NOW + timedelta(hours=2)
    assert rules.may_customer_cancel(NOW, start, r)
    assert rules.may_customer_cancel(start - timedelta(minutes=60), start, r)
    assert not rules.may_customer_cancel(start - timedelta(minutes=59), start, r)
    assert rules.cancel_deadline(start, r) == NOW + timedelta(hours=1)


def test_refunds_follow_who_cancels() -> None:
    no_refund = rules.parse_rule({"refund_on_cancel": False})
    assert rules.refund_on_cancel(by_store=True, requires_payment=True, rule=no_refund) is True
    assert rules.refund_on_cancel(by_store=False, requires_payment=True, rule=no_refund) is False
    assert rules.refund_on_cancel(by_store=False, requires_payment=True, rule=rules.parse_rule({})) is True
    assert rules.refund_on_cancel(by_store=True, requires_payment=False, rule=no_refund) is False


def test_checkin_window_opens_before_the_slot_and_closes_at_its_end() -> None:
    start, end = NOW, NOW + timedelta(minutes=30)
    w = {"opens_before": 30 * 60, "closes_after": 0}
    assert rules.in_checkin_window(start - timedelta(minutes=30), start, end, **w)
    assert not rules.in_checkin_window(start - timedelta(minutes=31), start, end, **w)
    assert rules.in_checkin_window(end, start, end, **w)
    assert not rules.in_checkin_window(end + timedelta(seconds=1), start, end, **w)


def test_reminder_only_for_holds_longer_than_the_reminder() -> None:
    assert rules.reminder_due_at(NOW, NOW + timedelta(minutes=10), 180) == NOW + timedelta(minutes=7)
    assert rules.reminder_due_at(NOW, NOW + timedelta(minutes=2), 180) is None


# --- states --------------------------------------------------------------------------------------
def test_reservation_state_machine() -> None:
    assert states.initial_state(0) == states.CONFIRMED and states.initial_state(1) == states.PENDING
    assert states.can_transition(states.PENDING, states.CONFIRMED)
    assert states.can_transition(states.CONFIRMED, states.CHECKED_IN)
    assert states.can_transition(states.EXPIRED, states.CONFIRMED)  # a late payment wins the seat back
    assert not states.can_transition(states.CHECKED_IN, states.CANCELLED)
    assert not states.can_transition(states.CANCELLED, states.PENDING)
    assert states.ACTIVE == {"PENDING", "CONFIRMED", "CHECKED_IN"}


# --- check-in tokens -----------------------------------------------------------------------------
def _sign(tokens: CheckinTokens, rid: uuid.UUID | None = None) -> str:
    return tokens.sign(reservation_id=rid or uuid.uuid4(), store_id=uuid.uuid4(),
                       window=(NOW, NOW + timedelta(hours=1)))


def test_token_round_trip_and_compactness() -> None:
    tokens = CheckinTokens(SigningKey.generate())
    rid = uuid.uuid4()
    token = _sign(tokens, rid)
    assert len(token) < 400
    claims = tokens.verify(token)
    assert claims.reservation_id == rid and claims.kid == tokens.active.kid


def test_token_verifies_offline_with_the_published_key_only() -> None:
    import jwt

    tokens = CheckinTokens(SigningKey.generate())
    token = _sign(tokens)
    public = SigningKey.from_pem(tokens.active.kid, None, tokens.active.public_pem())
    offline = jwt.decode(token, public.public, algorithms=["EdDSA"], audience="dropslot-checkin",
                         options={"verify_exp": False, "verify_nbf": False})
    assert offline["iss"] == "dropslot-booking"
    from_jwk = jwt.PyJWK(tokens.active.jwk()).key
    assert jwt.decode(token, from_jwk, algorithms=["EdDSA"], audience="dropslot-checkin",
                      options={"verify_exp": False, "verify_nbf": False})["sub"] == offline["sub"]


def test_tokens_are_what_pyjwt_would_write_for_the_same_key_and_claims() -> None:
    import jwt

    key = SigningKey.generate()
    token = _sign(CheckinTokens(key))
    claims = jwt.decode(token, key.public, algorithms=["EdDSA"], audience="dropslot-checkin",
                        options={"verify_exp": False, "verify_nbf": False})
    header = jwt.get_unverified_header(token)
    assert jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": header["kid"], "typ": "checkin"}) == token
    loaded = SigningKey.from_pem(key.kid, key.private_pem(), key.public_pem())  # how replicas load it
    assert _sign(CheckinTokens(loaded)).split(".")[0] == token.split(".")[0]
    assert CheckinTokens(loaded).verify(token).kid == key.kid


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_forged_and_altered_tokens_are_refused() -> None:
    tokens = CheckinTokens(SigningKey.generate())
    token = _sign(tokens)
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    altered = ".".join([header, _b64({**claims, "sub": str(uuid.uuid4())}), sig])
    forged = _sign(CheckinTokens(SigningKey.generate()))  # right shape, someone else's key
    same_kid = CheckinTokens(SigningKey(tokens.active.kid, *(lambda k: (k, k.public_key()))(
        __import__("cryptography.hazmat.primitives.asymmetric.ed25519", fromlist=["x"]).Ed25519PrivateKey.generate())))
    impostor = _sign(same_kid)
    unsigned = ".".join([_b64({"alg": "none", "kid": tokens.active.kid}), payload, ""])
    for bad in (altered, forged, impostor, unsigned, "garbage", "a.b.c", token[:-4] + "AAAA", ""):
        with pytest.raises(InvalidCheckinToken):
            tokens.verify(bad)


def test_tokens_of_a_previous_key_still_verify_after_rotation() -> None:
    old = SigningKey.generate()
    token = _sign(CheckinTokens(old))
    rotated = CheckinTokens(SigningKey.generate(), [old])
    assert rotated.verify(token).kid == old.kid


# --- the reserve batch's outbox rows ---------------------------------------------------------------
def test_a_reserve_batch_writes_each_seats_events_in_order() -> None:
    """Each reservation's events in their order (created, then confirmed), seat by seat, each
    owned by its seat (the refused seats' events are left out by owner)."""
    from dropslot_booking.adapters.hotpath import Outbox, Seat, reserve_args

    def seat() -> Seat:
        sid = uuid.uuid4()
        return Seat(id=sid, user_id=uuid.uuid4(), key=None, fingerprint="f", response="{}", state="CONFIRMED",
                    expires_at=None, confirmed_at=NOW, note=None, token=None, qr_code_url=None, amount_cents=0,
                    currency="EUR", requires_payment=False,
                    outbox=[Outbox(uuid.uuid4(), rk, "{}", None)
                            for rk in ("booking.reservation.created", "booking.reservation.confirmed")])

    seats = [seat() for _ in range(3)]
    owners, ids, rks = reserve_args(uuid.uuid4(), NOW, seats)[-5:-2]
    assert rks == ["booking.reservation.created", "booking.reservation.confirmed"] * 3
    assert owners == [1, 1, 2, 2, 3, 3]
    assert ids == [ob.id for s in seats for ob in s.outbox]


# --- how long a replica repeats "sold out" (what the gateway is told, kit refusals) -------------
def test_a_sold_out_slot_is_repeatable_for_the_cache_life_left_and_never_past_its_start() -> None:
    slot = uuid.uuid4()
    view = {"drop_status": "LIVE", "sellable": True, "capacity_total": 5, "capacity_reserved": 4,
            "capacity_waitlist": 1, "start_time": NOW + timedelta(hours=1), "require_verified_email": False}
    cache = SlotCache(0.25)
    assert cache.sold_out_for(slot, NOW) is None  # nothing cached
    cache.entries[slot] = (time.monotonic() - 0.1, view)
    left, verified_only = cache.sold_out_for(slot, NOW) or (0.0, True)
    assert 0.1 < left <= 0.15 and verified_only is False
    cache.entries[slot] = (time.monotonic(), {**view, "require_verified_email": True})
    assert (cache.sold_out_for(slot, NOW) or (0, False))[1] is True
    almost = view["start_time"] - timedelta(seconds=0.05)  # the slot starts sooner than the cache ends
    assert 0 < (cache.sold_out_for(slot, almost) or (1.0, False))[0] <= 0.05
    for other in ({"capacity_waitlist": 0}, {"drop_status": "PAUSED"}, {"sellable": False}):
        cache.entries[slot] = (time.monotonic(), {**view, **other})  # a seat free, or another refusal
        assert cache.sold_out_for(slot, NOW) is None, other
    cache.entries[slot] = (time.monotonic() - 0.3, view)  # stale: the replica would read it again
    assert cache.sold_out_for(slot, NOW) is None
    cache.entries[slot] = (time.monotonic(), view)
    assert cache.sold_out_for(slot, view["start_time"]) is None  # started: slot-closed from now on


def test_an_announcement_forgets_the_slots_and_drops_it_names_and_skips_the_rest() -> None:
    cache = SlotCache(30)
    drop, other_drop = uuid.uuid4(), uuid.uuid4()
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    for slot, of in ((a, drop), (b, drop), (c, other_drop), (d, other_drop)):
        cache.entries[slot] = (time.monotonic(), {"drop_id": of})
    heard(cache, f"s{c},x{d},s-not-an-id,,d{drop}")
    assert set(cache.entries) == {d}
