"""The drop lifecycle and what may still change once people can hold reservations.

    DRAFT --publish--> SCHEDULED --(opens_at)--> LIVE --(ends_at)--> ENDED
      |                    |                       |
      +------cancel--------+--------cancel---------+--> CANCELLED

Publishing goes straight to LIVE when the rule's `opens_at` (default: the publish time)
has already come. LIVE and ENDED happen on time, by the scheduler, never by a client.

After publishing, only changes that cannot hurt someone who reserved (or may reserve
under the announced terms) are accepted; everything else is refused naming the field:
- the product of a drop never changes;
- the window [starts_at, ends_at) may only grow: booking's slots lie inside it and
  catalog does not see them, so any shrink could cut under an existing slot;
- on a LIVE drop: `opens_at` is history; the waitlist cannot be switched off (people are
  on it); the cancellation deadline may only get more generous (a smaller
  `cancel_until_minutes_before`); a promised refund cannot be withdrawn. Limits, holds and
  offer times apply to new reservations only, so they may change;
- the product's price and currency cannot change while one of its drops is LIVE
  (a SCHEDULED drop has no reservations yet, so its price may still change);
- an ENDED or CANCELLED drop is final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from dropslot_contracts import ReservationRule


class DropStatus(StrEnum):
    DRAFT = "DRAFT"
    SCHEDULED = "SCHEDULED"
    LIVE = "LIVE"
    ENDED = "ENDED"
    CANCELLED = "CANCELLED"


PUBLISHED = frozenset({DropStatus.SCHEDULED, DropStatus.LIVE, DropStatus.ENDED, DropStatus.CANCELLED})
OPEN = frozenset({DropStatus.SCHEDULED, DropStatus.LIVE})  # published and not over
FINAL = frozenset({DropStatus.ENDED, DropStatus.CANCELLED})
CANCELLABLE = frozenset({DropStatus.DRAFT, DropStatus.SCHEDULED, DropStatus.LIVE})


class TransitionRefused(Exception):
    """A lifecycle move that the drop's current state does not allow."""

    def __init__(self, current: DropStatus, target: DropStatus, reason: str):
        super().__init__(reason)
        self.current, self.target, self.reason = current, target, reason


@dataclass(frozen=True)
class Refusal:
    field: str
    reason: str


class ChangeRefused(Exception):
    """Changes refused because the drop is published; each names its field and why."""

    def __init__(self, refusals: list[Refusal], status: DropStatus | None = None):
        super().__init__("; ".join(f"{r.field}: {r.reason}" for r in refusals))
        self.refusals = refusals
        self.status = status


@dataclass(frozen=True)
class Published:
    status: DropStatus
    opens_at: datetime
    rule: ReservationRule


def publish(status: DropStatus, rule: ReservationRule, ends_at: datetime, now: datetime) -> Published:
    if status is not DropStatus.DRAFT:
        raise TransitionRefused(status, DropStatus.SCHEDULED, f"only a DRAFT drop can be published (it is {status})")
    if ends_at <= now:
        raise TransitionRefused(status, DropStatus.SCHEDULED, "the drop's window is already over (ends_at is past)")
    effective = rule.effective(now)
    assert effective.opens_at is not None
    if effective.opens_at >= ends_at:
        raise TransitionRefused(status, DropStatus.SCHEDULED, "reservations would open after the drop ends")
    target = DropStatus.LIVE if effective.opens_at <= now else DropStatus.SCHEDULED
    return Published(target, effective.opens_at, effective)


def cancel(status: DropStatus) -> DropStatus:
    if status not in CANCELLABLE:
        raise TransitionRefused(status, DropStatus.CANCELLED, f"a drop that is {status} cannot be cancelled")
    return DropStatus.CANCELLED


def due(status: DropStatus, opens_at: datetime | None, ends_at: datetime, now: datetime) -> DropStatus | None:
    """The move the clock makes now, if any (the scheduler applies one step at a time)."""
    if status is DropStatus.SCHEDULED and opens_at is not None and opens_at <= now:
        return DropStatus.LIVE
    if status is DropStatus.LIVE and ends_at <= now:
        return DropStatus.ENDED
    return None


@dataclass(frozen=True)
class DropState:
    status: DropStatus
    product_id: Any
    starts_at: datetime
    ends_at: datetime
    rule: ReservationRule


def check_drop_change(current: DropState, changes: dict[str, Any]) -> None:
    """Raise ChangeRefused if any of `changes` (field -> new value; `reservation_rule` a
    full ReservationRule) may not be applied to a drop in `current.status`."""
    status = current.status
    if status is DropStatus.DRAFT or not changes:
        return
    if status in FINAL:
        raise ChangeRefused([Refusal(f, f"the drop is {status}; nothing can change") for f in changes], status)
    refused: list[Refusal] = []
    if "product_id" in changes and changes["product_id"] != current.product_id:
        refused.append(Refusal("product_id", "the product of a published drop cannot change"))
    if "starts_at" in changes and changes["starts_at"] > current.starts_at:
        refused.append(Refusal("starts_at", "a published drop's window can only grow (starts_at cannot move later)"))
    if "ends_at" in changes and changes["ends_at"] < current.ends_at:
        refused.append(Refusal("ends_at", "a published drop's window can only grow (ends_at cannot move earlier)"))
    new_rule: ReservationRule | None = changes.get("reservation_rule")
    if new_rule is not None and status is DropStatus.LIVE:
        old = current.rule
        if new_rule.opens_at is not None and new_rule.opens_at != old.opens_at:
            refused.append(Refusal("reservation_rule.opens_at", "the drop is already LIVE"))
        if old.waitlist_enabled and not new_rule.waitlist_enabled:
            refused.append(Refusal("reservation_rule.waitlist_enabled",
                                   "the waitlist of a LIVE drop cannot be switched off"))
        if new_rule.cancel_until_minutes_before > old.cancel_until_minutes_before:
            refused.append(Refusal("reservation_rule.cancel_until_minutes_before",
                                   "the cancellation deadline of a LIVE drop can only get more generous"))
        if old.refund_on_cancel and not new_rule.refund_on_cancel:
            refused.append(Refusal("reservation_rule.refund_on_cancel",
                                   "a LIVE drop's refund on cancellation cannot be withdrawn"))
    if refused:
        raise ChangeRefused(refused, status)


def check_product_change(changes: Mapping[str, Any], current: Mapping[str, Any], live_drop_ids: list[Any]) -> None:
    """Price and currency are fixed while one of the product's drops is LIVE."""
    if not live_drop_ids:
        return
    refused = [
        Refusal(f, f"the product is in a LIVE drop ({live_drop_ids[0]}); its {f} cannot change until it ends")
        for f in ("price_cents", "currency")
        if f in changes and changes[f] != current[f]
    ]
    if refused:
        raise ChangeRefused(refused, DropStatus.LIVE)
