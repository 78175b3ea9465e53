"""The drop's reservation rule: one pydantic model shared by catalog (which validates and
stores it) and booking (which enforces it), so both read the same JSON the same way.

Every field is optional with the defaults of API.md. `opens_at` left empty means "when
the drop is published"; catalog fills in the effective time when it publishes, so the rule
carried by `catalog.drop.*` events of a published drop always has `opens_at` set.

This model ignores unknown keys, so an older reader accepts a rule written by a newer
writer (contracts are additive). Catalog's HTTP edge uses `StrictReservationRule`, which
refuses unknown keys, so a client's typo is a 422 instead of a silently ignored setting.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MINUTES = 7 * 24 * 60  # a week: longer holds/offers/deadlines are almost certainly typos


def as_utc(value: datetime) -> datetime:
    """Times are UTC: a naive time is taken as UTC, an aware one is converted to UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ReservationRule(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    # When reservations open; None means "at publish time" (the drop is LIVE at once).
    opens_at: datetime | None = None
    # Reservations one user may hold in one drop (cancelled/expired ones do not count).
    max_per_user: int = Field(default=1, ge=1, le=100)
    # How long an unpaid (PENDING) reservation holds its seat.
    hold_minutes: int = Field(default=10, ge=1, le=MAX_MINUTES)
    waitlist_enabled: bool = True
    # How long a waitlist offer stands before it passes to the next in line.
    waitlist_offer_minutes: int = Field(default=15, ge=1, le=MAX_MINUTES)
    # Cancelling is allowed until this many minutes before the slot starts.
    cancel_until_minutes_before: int = Field(default=60, ge=0, le=MAX_MINUTES)
    # Whether a paid reservation cancelled in time is refunded.
    refund_on_cancel: bool = True
    require_verified_email: bool = False

    @field_validator("opens_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else as_utc(v)

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> ReservationRule:
        """The rule stored in a drop (None/{} is every default)."""
        return cls.model_validate(raw or {})

    def effective(self, published_at: datetime) -> ReservationRule:
        """The rule with `opens_at` filled in for a drop published at `published_at`."""
        if self.opens_at is not None:
            return self
        return self.model_copy(update={"opens_at": as_utc(published_at)})

    def as_json(self) -> dict[str, Any]:
        """The full rule, defaults applied, as stored in the database and sent in events."""
        return self.model_dump(mode="json")


class StrictReservationRule(ReservationRule):
    """The same rule for request bodies: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
