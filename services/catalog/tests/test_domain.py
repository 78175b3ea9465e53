"""Unit tests of catalog's rules: no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dropslot_catalog.domain import lifecycle
from dropslot_catalog.domain.currency import normalize_currency
from dropslot_catalog.domain.geo import bounding_box, haversine_km, parse_point
from dropslot_catalog.domain.hours import OpeningHours
from dropslot_catalog.domain.lifecycle import ChangeRefused, DropState, DropStatus, TransitionRefused
from dropslot_contracts import ReservationRule, StrictReservationRule
from pydantic import ValidationError

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


# --- the reservation rule ------------------------------------------------------------------------
def test_rule_defaults_are_those_of_the_api():
    rule = ReservationRule.parse(None).as_json()
    assert rule == {
        "opens_at": None, "max_per_user": 1, "hold_minutes": 10, "waitlist_enabled": True,
        "waitlist_offer_minutes": 15, "cancel_until_minutes_before": 60, "refund_on_cancel": True,
        "require_verified_email": False,
    }


def test_rule_opens_at_defaults_to_publish_time_and_keeps_an_explicit_one():
    assert ReservationRule().effective(NOW).opens_at == NOW
    later = NOW + H
    assert ReservationRule(opens_at=later).effective(NOW).opens_at == later


def test_rule_times_are_utc_and_naive_is_taken_as_utc():
    naive = ReservationRule.model_validate({"opens_at": "2026-11-24T12:00:00"})
    berlin = ReservationRule.model_validate({"opens_at": "2026-11-24T13:00:00+01:00"})
    assert naive.opens_at == berlin.opens_at == NOW and naive.opens_at.tzinfo is not None


@pytest.mark.parametrize("bad", [{"max_per_user": 0}, {"hold_minutes": 0}, {"waitlist_offer_minutes": -1},
                                 {"cancel_until_minutes_before": -5}, {"hold_minutes": 7 * 24 * 60 + 1},
                                 {"max_per_user": "many"}])
def test_rule_rejects_out_of_range_values(bad):
    with pytest.raises(ValidationError) as exc:
        StrictReservationRule.model_validate(bad)
    assert exc.value.errors()[0]["loc"][0] == next(iter(bad))


def test_strict_rule_refuses_unknown_keys_but_the_shared_model_ignores_them():
    with pytest.raises(ValidationError):
        StrictReservationRule.model_validate({"max_per_users": 2})
    assert ReservationRule.model_validate({"future_setting": 1}).max_per_user == 1


# --- lifecycle -----------------------------------------------------------------------------------
def test_publish_goes_live_at_once_without_opens_at():
    p = lifecycle.publish(DropStatus.DRAFT, ReservationRule(), NOW + 3 * H, NOW)
    assert p.status is DropStatus.LIVE and p.opens_at == NOW and p.rule.opens_at == NOW


def test_publish_with_a_future_opens_at_is_scheduled():
    p = lifecycle.publish(DropStatus.DRAFT, ReservationRule(opens_at=NOW + H), NOW + 3 * H, NOW)
    assert p.status is DropStatus.SCHEDULED and p.opens_at == NOW + H


@pytest.mark.parametrize("status", [DropStatus.SCHEDULED, DropStatus.LIVE, DropStatus.ENDED, DropStatus.CANCELLED])
def test_only_a_draft_can_be_published(status):
    with pytest.raises(TransitionRefused):
        lifecycle.publish(status, ReservationRule(), NOW + H, NOW)


def test_a_drop_already_over_cannot_be_published():
    with pytest.raises(TransitionRefused, match="already over"):
        lifecycle.publish(DropStatus.DRAFT, ReservationRule(), NOW - H, NOW)


def test_cancel_from_open_states_only():
    for s in (DropStatus.DRAFT, DropStatus.SCHEDULED, DropStatus.LIVE):
        assert lifecycle.cancel(s) is DropStatus.CANCELLED
    for s in (DropStatus.ENDED, DropStatus.CANCELLED):
        with pytest.raises(TransitionRefused):
            lifecycle.cancel(s)


def test_clock_moves_one_step_at_a_time():
    assert lifecycle.due(DropStatus.SCHEDULED, NOW - H, NOW - H / 2, NOW) is DropStatus.LIVE
    assert lifecycle.due(DropStatus.SCHEDULED, NOW + H, NOW + 2 * H, NOW) is None
    assert lifecycle.due(DropStatus.LIVE, NOW - H, NOW, NOW) is DropStatus.ENDED
    assert lifecycle.due(DropStatus.LIVE, NOW - H, NOW + H, NOW) is None
    assert lifecycle.due(DropStatus.DRAFT, NOW - H, NOW - H / 2, NOW) is None


def _state(status: DropStatus, rule: ReservationRule | None = None) -> DropState:
    return DropState(status, uuid.UUID(int=1), NOW, NOW + 4 * H, rule or ReservationRule(opens_at=NOW))


def test_a_draft_may_change_anything():
    lifecycle.check_drop_change(_state(DropStatus.DRAFT), {
        "product_id": uuid.UUID(int=2), "starts_at": NOW + H, "ends_at": NOW + 2 * H,
        "reservation_rule": ReservationRule(refund_on_cancel=False, waitlist_enabled=False)})


@pytest.mark.parametrize("status", [DropStatus.SCHEDULED, DropStatus.LIVE])
def test_a_published_window_may_grow_but_not_shrink(status):
    lifecycle.check_drop_change(_state(status), {"starts_at": NOW - H, "ends_at": NOW + 5 * H, "name": "x"})
    with pytest.raises(ChangeRefused) as exc:
        lifecycle.check_drop_change(_state(status), {"starts_at": NOW + H, "ends_at": NOW + 3 * H,
                                                     "product_id": uuid.UUID(int=9)})
    assert {r.field for r in exc.value.refusals} == {"starts_at", "ends_at", "product_id"}


def test_a_live_rule_may_only_change_in_ways_that_hurt_nobody():
    live = _state(DropStatus.LIVE)
    ok = ReservationRule(opens_at=NOW, max_per_user=3, hold_minutes=5, cancel_until_minutes_before=30)
    lifecycle.check_drop_change(live, {"reservation_rule": ok})
    bad = ReservationRule(opens_at=NOW + H, waitlist_enabled=False, cancel_until_minutes_before=120,
                          refund_on_cancel=False)
    with pytest.raises(ChangeRefused) as exc:
        lifecycle.check_drop_change(live, {"reservation_rule": bad})
    assert {r.field for r in exc.value.refusals} == {
        "reservation_rule.opens_at", "reservation_rule.waitlist_enabled",
        "reservation_rule.cancel_until_minutes_before", "reservation_rule.refund_on_cancel"}


def test_a_scheduled_rule_may_change_since_nobody_has_reserved_yet():
    lifecycle.check_drop_change(_state(DropStatus.SCHEDULED), {
        "reservation_rule": ReservationRule(opens_at=NOW + 2 * H, refund_on_cancel=False)})


@pytest.mark.parametrize("status", [DropStatus.ENDED, DropStatus.CANCELLED])
def test_a_final_drop_changes_no_more(status):
    with pytest.raises(ChangeRefused):
        lifecycle.check_drop_change(_state(status), {"name": "renamed"})


def test_price_is_fixed_only_while_a_drop_of_the_product_is_live():
    current = {"price_cents": 100, "currency": "EUR"}
    lifecycle.check_product_change({"price_cents": 200}, current, [])
    lifecycle.check_product_change({"name": "x"}, current, [uuid.UUID(int=1)])
    with pytest.raises(ChangeRefused) as exc:
        lifecycle.check_product_change({"price_cents": 200, "currency": "USD"}, current, [uuid.UUID(int=1)])
    assert [r.field for r in exc.value.refusals] == ["price_cents", "currency"]


# --- opening hours -------------------------------------------------------------------------------
def test_opening_hours_shorthands_normalize_to_one_form():
    h = OpeningHours.model_validate({
        "Monday": [["9:00", "12:00"], "13:00-18:00"], "sat": [{"from": "10:00", "to": "14:00"}],
        "exceptions": {"2026-12-25": "closed", "2026-12-24": [["09:00", "13:00"]]}, "timezone": "Europe/Berlin"})
    j = h.as_json()
    assert j["weekly"] == {"mon": [{"open": "09:00", "close": "12:00"}, {"open": "13:00", "close": "18:00"}],
                           "sat": [{"open": "10:00", "close": "14:00"}]}
    assert [(e["date"], e["closed"]) for e in j["exceptions"]] == [("2026-12-24", False), ("2026-12-25", True)]
    from datetime import date
    assert h.intervals_on(date(2026, 12, 25)) == [] and len(h.intervals_on(date(2026, 11, 23))) == 2


@pytest.mark.parametrize("bad, where", [
    ({"mon": [["18:00", "09:00"]]}, ("weekly", "mon", 0)),
    ({"mon": [["25:00", "26:00"]]}, ("weekly", "mon", 0, "open")),
    ({"mon": [["09:00", "12:00"], ["11:00", "14:00"]]}, ("weekly",)),
    ({"weekly": {"funday": []}}, ("weekly", "funday", "[key]")),
    ({"exceptions": [{"date": "2026-13-01", "closed": True}]}, ("exceptions", 0, "date")),
    ({"exceptions": [{"date": "2026-12-25", "closed": True, "intervals": [["09:00", "10:00"]]}]}, ("exceptions", 0)),
    ({"timezone": "Mars/Olympus"}, ("timezone",)),
    ({"holidays": []}, ("holidays",)),
])
def test_opening_hours_errors_name_the_place(bad, where):
    with pytest.raises(ValidationError) as exc:
        OpeningHours.model_validate(bad)
    assert exc.value.errors()[0]["loc"][: len(where)] == where


# --- currency and geography ----------------------------------------------------------------------
def test_currency_codes():
    assert normalize_currency("usd") == "USD" and normalize_currency("JPY") == "JPY"
    for bad in ("XXX", "XTS", "EURO", "US", "ABC", ""):
        with pytest.raises(ValueError):
            normalize_currency(bad)


def test_distance_and_bounding_box():
    berlin, munich = (52.52, 13.405), (48.137, 11.575)
    d = haversine_km(*berlin, *munich)
    assert 500 < d < 510
    box = bounding_box(*berlin, 10)
    assert box.lat_min < berlin[0] < box.lat_max and box.lng_min < berlin[1] < box.lng_max  # type: ignore[operator]
    # A point exactly 10 km due east is inside the box.
    assert box.lng_max > 13.405 + 10 / (111.32 * 0.6087)  # type: ignore[operator]
    assert bounding_box(89.9, 0, 50).lng_min is None  # wraps over the pole: latitude only
    assert bounding_box(0, 179.99, 50).lng_min is None  # crosses the antimeridian


@pytest.mark.parametrize("bad", ["52.5", "a,b", "91,0", "0,181", "1,2,3", "nan,0"])
def test_parse_point_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_point(bad)
