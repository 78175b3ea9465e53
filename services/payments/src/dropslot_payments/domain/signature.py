"""Callback signatures the way Stripe signs them: header `t=<unix seconds>,v1=<hex>`, where
v1 = HMAC-SHA256(secret, f"{t}.{raw body}"). Several v1 entries may be present (secret
rotation); any match is enough. A timestamp outside the tolerance is refused, so a
captured callback cannot be replayed later."""

from __future__ import annotations

import hashlib
import hmac
import time


class InvalidSignature(Exception):
    pass


def compute(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={compute(secret, ts, body)}"


def verify(secret: str, header: str | None, body: bytes, *, tolerance: int = 300, now: float | None = None) -> int:
    """Returns the signed timestamp; raises InvalidSignature."""
    if not header:
        raise InvalidSignature("no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise InvalidSignature("malformed timestamp") from None
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature("malformed signature header")
    expected = compute(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("signature does not match")
    current = time.time() if now is None else now
    if tolerance and abs(current - timestamp) > tolerance:
        raise InvalidSignature("timestamp outside the tolerance")
    return timestamp
