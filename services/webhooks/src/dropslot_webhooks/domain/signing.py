"""Standard Webhooks signing (https://www.standardwebhooks.com/, v1 symmetric).

The signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`; the signature is
`v1,<base64 HMAC-SHA256>` keyed with the secret's bytes (the base64 part after `whsec_`).
While a rotated secret is in its grace period the header carries both signatures,
space-separated, so receivers holding either secret verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


class InvalidSecret(ValueError):
    pass


def generate_secret(nbytes: int = SECRET_BYTES) -> str:
    if not 24 <= nbytes <= 64:
        raise ValueError("a webhook secret has 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded bytes after `whsec_`."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret("secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error as exc:
        raise InvalidSecret("secret is not base64") from exc
    if not key:
        raise InvalidSecret("empty secret")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """All current signatures (the newest key first), space-separated."""
    return " ".join(sign(k, msg_id, timestamp, body) for k in keys)


def secret_hint(secret: str) -> str:
    """What lists show instead of the secret: enough to tell two secrets apart."""
    return f"{SECRET_PREFIX}…{secret[-4:]}"
