"""Check-in tokens: compact JWS (EdDSA / Ed25519) that an offline scanner verifies with
booking's public key (`GET /api/v1/checkins/public-key`).

Claims (ids as 32 hex digits, to keep the QR code small): `iss` "dropslot-booking", `aud`
"dropslot-checkin", `sub` the reservation id, `sto` the store, and `nbf`/`exp` = the check-in
window (informational for an offline scanner; booking itself judges the window against the
slot's current times and answers `not-checkin-window` rather than "invalid token").
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
import nacl.signing
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "dropslot-booking"
AUDIENCE = "dropslot-checkin"
ALGORITHM = "EdDSA"


class InvalidCheckinToken(ValueError):
    pass


@dataclass(frozen=True)
class CheckinClaims:
    reservation_id: uuid.UUID
    store_id: uuid.UUID
    kid: str


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey | None
    public: Ed25519PublicKey
    # The same private key for libsodium, which signs in ~half the time of OpenSSL via
    # cryptography here (a token per confirmed reservation, so on the drop's hot path).
    _sodium: nacl.signing.SigningKey | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.private is not None:
            raw = self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())
            object.__setattr__(self, "_sodium", nacl.signing.SigningKey(raw))

    def sign(self, message: bytes) -> bytes:
        assert self._sodium is not None, "a public key cannot sign"
        return self._sodium.sign(message).signature

    @classmethod
    def generate(cls) -> SigningKey:
        key = Ed25519PrivateKey.generate()
        return cls(uuid.uuid4().hex[:8], key, key.public_key())

    @classmethod
    def from_pem(cls, kid: str, private_pem: str | None, public_pem: str) -> SigningKey:
        private = None
        if private_pem:
            loaded = serialization.load_pem_private_key(private_pem.encode(), password=None)
            if not isinstance(loaded, Ed25519PrivateKey):
                raise ValueError("check-in signing key is not Ed25519")
            private = loaded
        public = serialization.load_pem_public_key(public_pem.encode())
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError("check-in public key is not Ed25519")
        return cls(kid, private, public)

    def private_pem(self) -> str:
        assert self.private is not None
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def public_pem(self) -> str:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.public))
        return {**data, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _compact(obj: dict[str, Any]) -> bytes:
    return _b64(orjson.dumps(obj))


class CheckinTokens:
    """Signs with the active key; verifies with any known key (old tokens survive a rotation).

    A token is a compact JWS written here (header and claims as compact JSON, base64url without
    padding, Ed25519 over `header.claims`): byte for byte what PyJWT writes, at half the CPU.
    Verification stays with PyJWT."""

    def __init__(self, active: SigningKey, others: list[SigningKey] | None = None):
        if active.private is None:
            raise ValueError("the active check-in key needs its private half")
        self.active = active
        self.keys = {k.kid: k for k in [*(others or []), active]}
        self._header = _compact({"alg": ALGORITHM, "kid": active.kid, "typ": "checkin"})

    def sign(
        self,
        *,
        reservation_id: uuid.UUID,
        store_id: uuid.UUID,
        window: tuple[datetime, datetime],
    ) -> str:
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": reservation_id.hex,
            "sto": store_id.hex,
            "nbf": int(window[0].timestamp()),
            "exp": int(window[1].timestamp()),
        }
        signing_input = self._header + b"." + _compact(claims)
        return (signing_input + b"." + _b64(self.active.sign(signing_input))).decode()

    def verify(self, token: str) -> CheckinClaims:
        """The claims of a token booking signed; InvalidCheckinToken for anything else."""
        if not isinstance(token, str) or len(token) > 2048 or token.count(".") != 2:
            raise InvalidCheckinToken("not a check-in token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidCheckinToken("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise InvalidCheckinToken("unexpected algorithm")
        key = self.keys.get(str(header.get("kid")))
        if key is None:
            raise InvalidCheckinToken("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key.public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                # The window is judged by booking against the slot's current times.
                options={"verify_exp": False, "verify_nbf": False, "require": ["sub", "sto"]},
            )
            return CheckinClaims(
                reservation_id=uuid.UUID(claims["sub"]),
                store_id=uuid.UUID(claims["sto"]),
                kid=key.kid,
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidCheckinToken("signature or claims are invalid") from None
