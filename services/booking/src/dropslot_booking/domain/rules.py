"""What the drop's reservation rule decides, as pure functions of time and state.

The rule itself is `dropslot_contracts.rules.ReservationRule` (shared with catalog, which
validates it). "Minutes" in a rule are multiplied by `minute_seconds` (60 in production; tests
shrink it).

Check-in window: a reservation can be checked in from `opens_before` seconds before its slot
starts (60 minutes by default) until `closes_after` seconds after the slot ends (0 by default,
i.e. until the slot's end).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from dropslot_contracts.rules import ReservationRule
from pydantic import ValidationError

__all__ = [
    "ReservationRule",
    "cancel_deadline",
    "checkin_window",
    "hold_expires_at",
    "in_checkin_window",
    "may_customer_cancel",
    "offer_expires_at",
    "parse_rule",
    "refund_on_cancel",
    "reminder_due_at",
]


def parse_rule(raw: dict[str, Any] | None) -> ReservationRule:
    """The rule of a drop event. Catalog validates rules before storing them; should a field
    still be out of range, that field falls back to its default rather than losing the drop."""
    try:
        return ReservationRule.parse(raw)
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err.get("loc")}
        return ReservationRule.parse({k: v for k, v in (raw or {}).items() if k not in bad})


def _minutes(n: float, minute_seconds: float) -> timedelta:
    return timedelta(seconds=n * minute_seconds)


def hold_expires_at(now: datetime, rule: ReservationRule, minute_seconds: float = 60.0) -> datetime:
    """When an unpaid (PENDING) reservation gives its seat back."""
    return now + _minutes(rule.hold_minutes, minute_seconds)


def offer_expires_at(now: datetime, rule: ReservationRule, minute_seconds: float = 60.0) -> datetime:
    """How long a waitlist offer stands before it passes to the next in line."""
    return now + _minutes(rule.waitlist_offer_minutes, minute_seconds)


def cancel_deadline(slot_start: datetime, rule: ReservationRule, minute_seconds: float = 60.0) -> datetime:
    return slot_start - _minutes(rule.cancel_until_minutes_before, minute_seconds)


def may_customer_cancel(
    now: datetime, slot_start: datetime, rule: ReservationRule, minute_seconds: float = 60.0
) -> bool:
    """A customer cancels until `cancel_until_minutes_before` the slot starts (the store at any time)."""
    return now <= cancel_deadline(slot_start, rule, minute_seconds)


def refund_on_cancel(*, by_store: bool, requires_payment: bool, rule: ReservationRule) -> bool:
    """Whether a cancelled paid reservation is refunded: always when the store (or the drop's
    cancellation) takes the seat away, per the rule's `refund_on_cancel` when the customer
    cancels in time."""
    if not requires_payment:
        return False
    return True if by_store else rule.refund_on_cancel


def checkin_window(
    slot_start: datetime, slot_end: datetime, *, opens_before: float, closes_after: float = 0.0
) -> tuple[datetime, datetime]:
    return slot_start - timedelta(seconds=opens_before), slot_end + timedelta(seconds=closes_after)


def in_checkin_window(
    now: datetime, slot_start: datetime, slot_end: datetime, *, opens_before: float, closes_after: float = 0.0
) -> bool:
    opens, closes = checkin_window(slot_start, slot_end, opens_before=opens_before, closes_after=closes_after)
    return opens <= now <= closes


def reminder_due_at(created_at: datetime, expires_at: datetime, remind_before: float) -> datetime | None:
    """When to remind the customer of a lapsing hold; None for a hold too short to remind in."""
    due = expires_at - timedelta(seconds=remind_before)
    return due if due > created_at else None
