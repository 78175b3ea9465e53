"""Opaque one-time and refresh tokens: random, shown once, stored only as a hash.

The tokens carry 256 bits of randomness, so a fast hash (SHA-256) is enough: there is
nothing to brute-force that a slow hash would protect, unlike with passwords. Lookups go
by the hash, so the database never holds a usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def same_token(token: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def looks_like_token(token: str) -> bool:
    """Cheap shape check before touching the database (url-safe base64, sane length)."""
    return 16 <= len(token) <= 128 and all(c.isalnum() or c in "-_" for c in token)
