"""Users: email shape and normalisation, and the status machine."""

from __future__ import annotations

import re

ACTIVE, SUSPENDED, DELETED = "active", "suspended", "deleted"
STATUSES = (ACTIVE, SUSPENDED, DELETED)

# Deliberately loose: the only real test of an address is the verification mail.
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")

_TRANSITIONS = {
    ACTIVE: {SUSPENDED, DELETED},
    SUSPENDED: {ACTIVE, DELETED},
    DELETED: set(),  # terminal: the address may be registered again by a new account
}


def clean_email(email: str) -> str:
    """Trimmed, as entered. Uniqueness and look-ups use `email_key` (case-insensitive)."""
    return email.strip()


def email_key(email: str) -> str:
    return email.strip().lower()


def valid_email(email: str) -> bool:
    return len(email) <= 254 and _EMAIL_RE.match(email) is not None


def can_move(current: str, target: str) -> bool:
    return target in _TRANSITIONS.get(current, set())
