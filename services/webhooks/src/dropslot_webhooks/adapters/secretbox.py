"""Endpoint secrets encrypted at rest (AES-256-GCM).

Signing needs the raw secret, so it cannot be hashed; it is encrypted with a key from the
settings, never the database, so a leaked dump or backup does not leak the secrets. The
ciphertext is bound to its endpoint (associated data), so a secret copied onto another row
does not decrypt. Stored form: `v1.<key id>.<base64(nonce || ciphertext)>`; the key id lets
several keys decrypt while the first encrypts (key rotation).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import uuid
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("dropslot.webhooks.secrets")


class SecretBoxError(ValueError):
    pass


def _kid(key: bytes) -> str:
    return hashlib.sha256(b"dropslot-webhooks-kid" + key).hexdigest()[:8]


class SecretBox:
    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise SecretBoxError("at least one key is needed")
        for k in keys:
            if len(k) != 32:
                raise SecretBoxError("keys are 32 bytes (base64 of 32 random bytes)")
        self._current = keys[0]
        self._keys = {_kid(k): AESGCM(k) for k in keys}
        self._current_kid = _kid(self._current)

    @classmethod
    def from_settings(cls, encoded_keys: Sequence[str], fallback_material: str) -> SecretBox:
        if encoded_keys:
            return cls([base64.b64decode(k) for k in encoded_keys])
        log.warning("DROPSLOT_WEBHOOKS_SECRET_KEYS is not set: endpoint secrets are encrypted with a key "
                    "derived from the database password; set a real key outside development")
        return cls([hashlib.sha256(b"dropslot-webhooks-dev-key:" + fallback_material.encode()).digest()])

    def encrypt(self, plaintext: str, endpoint_id: uuid.UUID) -> str:
        nonce = os.urandom(12)
        ct = self._keys[self._current_kid].encrypt(nonce, plaintext.encode(), endpoint_id.bytes)
        return f"v1.{self._current_kid}.{base64.b64encode(nonce + ct).decode()}"

    def decrypt(self, stored: str, endpoint_id: uuid.UUID) -> str:
        try:
            version, kid, blob = stored.split(".", 2)
            if version != "v1":
                raise SecretBoxError(f"unknown secret format {version}")
            aead = self._keys[kid]
            raw = base64.b64decode(blob)
            return aead.decrypt(raw[:12], raw[12:], endpoint_id.bytes).decode()
        except KeyError:
            raise SecretBoxError("secret was encrypted with a key that is not configured") from None
        except SecretBoxError:
            raise
        except Exception as exc:  # InvalidTag, bad base64, wrong shape
            raise SecretBoxError(f"secret does not decrypt: {type(exc).__name__}") from None
