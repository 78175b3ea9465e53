"""Channels, statuses, the template catalogue and the per-user channel choice."""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


class Status(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"


ALL_CHANNELS = (Channel.EMAIL, Channel.SMS, Channel.PUSH)


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    channels: tuple[Channel, ...]
    # Account mail (verification, password reset) goes to the address in the event, by email,
    # whatever the user's preferences: without it the account cannot be used or recovered.
    account: bool = False
    # Higher goes first when the sender has a backlog (a waitlist offer is worth minutes).
    priority: int = 0
    # The email embeds the check-in QR code (rendered from payload["checkin_token"]).
    qr: bool = False
    # A message about a reservation whose drop is not in the local copy yet (catalog's events
    # travel in another queue) waits for it, up to `notifications_drop_wait_seconds`: the drop
    # gives the pickup branch, the store and the time zone. Then it goes out without them.
    waits_for_drop: bool = False


_CUSTOMER = ALL_CHANNELS

TEMPLATES: dict[str, TemplateSpec] = {
    spec.name: spec
    for spec in (
        TemplateSpec("email_verification", (Channel.EMAIL,), account=True, priority=5),
        TemplateSpec("password_reset", (Channel.EMAIL,), account=True, priority=5),
        TemplateSpec("password_changed", (Channel.EMAIL,), account=True, priority=5),
        # Operational mail to a store's owners: by email whatever their preferences, like account
        # mail (a store's integration silently stopping is not something to opt out of).
        TemplateSpec("webhook_endpoint_disabled", (Channel.EMAIL,), account=True, priority=4),
        TemplateSpec("reservation_confirmed", _CUSTOMER, priority=3, qr=True, waits_for_drop=True),
        TemplateSpec("payment_failed", _CUSTOMER, priority=4),
        # Due within minutes: on time in UTC beats late with the branch, so it does not wait.
        TemplateSpec("hold_expiring", _CUSTOMER, priority=8),
        TemplateSpec("reservation_expired", _CUSTOMER, priority=2, waits_for_drop=True),
        TemplateSpec("reservation_cancelled", _CUSTOMER, priority=2, waits_for_drop=True),
        TemplateSpec("refund_issued", _CUSTOMER, priority=1),
        TemplateSpec("waitlist_joined", _CUSTOMER, priority=1),
        TemplateSpec("waitlist_offer", _CUSTOMER, priority=10),
        TemplateSpec("waitlist_offer_lapsed", _CUSTOMER, priority=2),
        TemplateSpec("drop_live", _CUSTOMER, priority=6),
    )
}


E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# Deliberately loose (SMTP servers are the judge); it rejects what can never be an address
# and anything that could smuggle a header.
EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def is_valid_email(address: str | None) -> bool:
    return bool(address) and len(address) <= 320 and EMAIL.match(address) is not None  # type: ignore[arg-type]


@dataclass(frozen=True)
class Preferences:
    """Per-user channel switches. Email is on by default; SMS and push need a phone number or
    a device token first, so they start off."""

    email: bool = True
    sms: bool = False
    push: bool = False
    phone: str | None = None
    push_token: str | None = None

    def wants(self, channel: Channel) -> bool:
        if channel is Channel.EMAIL:
            return self.email
        if channel is Channel.SMS:
            return self.sms and bool(self.phone)
        return self.push and bool(self.push_token)

    def address(self, channel: Channel) -> str | None:
        if channel is Channel.SMS:
            return self.phone
        if channel is Channel.PUSH:
            return self.push_token
        return None


class PreferencesError(ValueError):
    """Preferences that cannot work (e.g. SMS on without a phone number)."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name
        self.reason = reason


def check_preferences(prefs: Preferences) -> None:
    if prefs.sms and not prefs.phone:
        raise PreferencesError("sms", "SMS needs a phone number")
    if prefs.push and not prefs.push_token:
        raise PreferencesError("push", "push needs a device token (push_token)")
    if prefs.phone is not None and not E164.match(prefs.phone):
        raise PreferencesError("phone", "phone must be in E.164 form, e.g. +4915112345678")


@dataclass(frozen=True)
class Intent:
    """A message some event asks for: one user, one template, the data it renders."""

    user_id: uuid.UUID
    template: str
    payload: dict[str, Any]
    # Same user + template + channel + key never produces a second message, whatever the event
    # ids (a business-level guard on top of the inbox; None = no such guard).
    dedupe_key: str | None = None
    # The address for account mail (the one being verified), else resolved at send time.
    email: str | None = None


@dataclass(frozen=True)
class PlannedMessage:
    user_id: uuid.UUID
    template: str
    channel: Channel
    payload: dict[str, Any]
    recipient: str | None
    dedupe_key: str | None
    priority: int


@dataclass(frozen=True)
class Planner:
    """Which channels an intent goes out on, given preferences and configured providers."""

    available: frozenset[Channel] = field(default_factory=lambda: frozenset({Channel.EMAIL}))

    def plan(self, intent: Intent, prefs: Preferences) -> list[PlannedMessage]:
        spec = TEMPLATES[intent.template]
        out: list[PlannedMessage] = []
        for channel in spec.channels:
            if channel not in self.available:
                continue
            if spec.account:
                recipient: str | None = intent.email
            elif prefs.wants(channel):
                recipient = prefs.address(channel)
            else:
                continue
            out.append(PlannedMessage(intent.user_id, intent.template, channel, intent.payload, recipient,
                                      intent.dedupe_key, spec.priority))
        return out


def retry_delay(attempt: int, *, base: float, cap: float, rnd: random.Random | None = None) -> float:
    """Exponential backoff with jitter: ~base, 2·base, 4·base ... capped; the jitter (±25%)
    keeps a crowd of messages that failed together from retrying in lockstep."""
    raw = min(cap, base * (2 ** max(0, attempt - 1)))
    jitter = (rnd or random).uniform(-0.25, 0.25) * raw
    return float(max(0.05, min(cap, raw + jitter)))
