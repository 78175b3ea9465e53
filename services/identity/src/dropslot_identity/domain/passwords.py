"""Password policy: long enough, not absurdly long, not trivial, not known from breaches.

The breached list is zxcvbn's ranked list of the 30,000 most common passwords from public
breaches (shipped inside the package, so no network is needed). "Trivial" adds what such
a list misses: one repeated character, straight runs (`abcdefgh`, `98765432`, keyboard
rows) and the account's own email or name. We deliberately add no composition rules
(digit, symbol, upper case): NIST SP 800-63B advises against them, and they push people
to `Password1!`.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

_KEYBOARD_ROWS = (
    "qwertyuiopasdfghjklzxcvbnm", "azertyuiopqsdfghjklmwxcvbn", "1234567890", "abcdefghijklmnopqrstuvwxyz",
)


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 8
    max_length: int = 256


@functools.cache
def breached_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(p.lower() for p in FREQUENCY_LISTS["passwords"])


def _is_run(s: str) -> bool:
    """One character repeated, or a straight run forwards/backwards along a row or the alphabet."""
    if len(set(s)) == 1:
        return True
    for row in _KEYBOARD_ROWS:
        if s in row or s in row[::-1]:
            return True
    steps = {ord(b) - ord(a) for a, b in zip(s, s[1:], strict=False)}
    return len(steps) == 1 and steps.pop() in (1, -1)


def problems(password: str, *, email: str | None = None, name: str | None = None,
             policy: PasswordPolicy = PasswordPolicy()) -> list[str]:
    """Why this password is refused; empty when it is acceptable."""
    pw = unicodedata.normalize("NFKC", password)
    out: list[str] = []
    if len(pw) < policy.min_length:
        out.append(f"must be at least {policy.min_length} characters long")
    if len(pw) > policy.max_length:
        out.append(f"must be at most {policy.max_length} characters long")
    if out:
        return out
    low = pw.lower()
    if not pw.strip():
        out.append("must not be only spaces")
    elif low in breached_passwords() or low.strip() in breached_passwords():
        out.append("is one of the most common passwords seen in data breaches")
    elif _is_run(low.replace(" ", "")):
        out.append("is too simple (a repeated character or a straight run of keys)")
    if email:
        e = email.lower()
        local = e.split("@", 1)[0]
        if low == e or (len(local) >= 4 and low.replace(" ", "") in (local, local[::-1])):
            out.append("must not be your email address")
    if name and len(name.strip()) >= 4 and low.replace(" ", "") == name.lower().replace(" ", ""):
        out.append("must not be your name")
    return out
