"""Access-token signing keys (RSA-2048 / RS256 by default, or Ed25519 / EdDSA), shared by every
replica through the database.

- RS256 by default (`identity_signing_algorithm`): a token is signed once per sign-in or refresh
  (~0.3 ms for RSA-2048 here) but verified by the gateway on the first request it sees it on,
  and in a drop thousands of people send their first request in the same second. RSA (e=65537)
  verifies in ~22 µs here, Ed25519 in ~56 µs (libsodium; OpenSSL ~110 µs). RSA-2048 is the usual
  strength for JWT signing keys (112-bit security, NIST SP 800-57); keys rotate every 30 days.
  The algorithm applies to new keys: existing keys keep signing until the next rotation, and
  tokens of every published key verify whatever their algorithm.

- A rotation adds a key and retires the others. The new key is in the JWKS at once but
  signs only after `identity_key_publish_seconds`, so any verifier meeting its `kid`
  (they refetch the JWKS on an unknown kid) finds it. Until then the previous key keeps
  signing. Every key that may still have unexpired tokens stays in the JWKS (retired keys
  for the access TTL plus a grace period), so a rotation logs nobody out.
- The first replica to start creates the first key; creation and rotation take an
  advisory lock, so racing replicas do not each make one.
- Each replica caches the keys for `identity_key_cache_seconds`, so a rotation made by
  another replica (or by `python -m dropslot_identity.admin rotate-keys`) is picked up
  within that time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from dropslot_kit.auth import JWKSVerifier
from dropslot_kit.db import Database, loads
from sqlalchemy.ext.asyncio import AsyncConnection

from .adapters import repo
from .config import Settings

RSA_BITS = 2048
PrivateKey = Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = Ed25519PublicKey | rsa.RSAPublicKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    return "EdDSA" if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey) else "RS256"


def generate(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return Ed25519PrivateKey.generate()
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def public_jwk(public_key: PublicKey) -> dict[str, str]:
    if isinstance(public_key, Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
    else:
        numbers = public_key.public_numbers()
        jwk = {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
    # RFC 7638 thumbprint as the key id: stable, and derived from the key itself (the required
    # members only, in lexicographic order, no whitespace).
    thumb = hashlib.sha256(json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()).digest()
    return {**jwk, "kid": _b64(thumb), "alg": algorithm_of(public_key), "use": "sig"}


def serialize_private(key: PrivateKey, passphrase: str | None) -> str:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc).decode()


def load_private(pem: str, passphrase: str | None) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=passphrase.encode() if passphrase else None)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < RSA_BITS:
        raise ValueError(f"RSA signing key has {key.key_size} bits, fewer than {RSA_BITS}")
    if not isinstance(key, Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ValueError("signing key is neither Ed25519 nor RSA")
    return key


async def create_key(conn: AsyncConnection, settings: Settings, *, retire_others: bool) -> str:
    key = generate(settings.identity_signing_algorithm)
    jwk = public_jwk(key.public_key())
    await repo.insert_signing_key(conn, kid=jwk["kid"], algorithm=jwk["alg"],
                                  private_key=serialize_private(key, settings.identity_key_passphrase),
                                  public_jwk=jwk)
    if retire_others:
        await repo.retire_signing_keys_except(conn, jwk["kid"])
    return jwk["kid"]


def keep_retired_seconds(settings: Settings) -> int:
    """How long a retired key stays published: it may sign for up to publish + cache seconds after
    retirement (replicas switch lazily), and its last tokens live for the access TTL."""
    return int(settings.identity_access_ttl_seconds + settings.identity_key_publish_seconds
               + settings.identity_key_cache_seconds + settings.identity_key_grace_seconds)


async def ensure_key(db: Database, settings: Settings) -> str:
    """The current signing key's id, creating the first key if there is none."""
    async with db.uow() as uow:
        current = await repo.newest_signing_key(uow.conn)
        if current is not None:
            return str(current["kid"])
        await repo.lock_signing_keys(uow.conn)
        current = await repo.newest_signing_key(uow.conn)  # another replica may have won the race
        if current is not None:
            return str(current["kid"])
        return await create_key(uow.conn, settings, retire_others=False)


async def rotate(db: Database, settings: Settings, *, older_than: timedelta | None = None) -> str | None:
    """Make a new signing key and retire the others (they stay published until their tokens expire).

    With `older_than`, rotate only if the current key is at least that old (automatic rotation);
    returns the new kid, or None when nothing was done.
    """
    async with db.uow() as uow:
        await repo.lock_signing_keys(uow.conn)
        current = await repo.newest_signing_key(uow.conn)
        if older_than is not None and current is not None and current["created_at"] > datetime.now(UTC) - older_than:
            return None
        kid = await create_key(uow.conn, settings, retire_others=True)
        await repo.purge_signing_keys(uow.conn, keep_retired_seconds(settings) * 4)
        return kid


@dataclass(frozen=True)
class Signer:
    kid: str
    key: PrivateKey

    @property
    def algorithm(self) -> str:
        return algorithm_of(self.key)


class KeyRing:
    """This replica's cached view of the keys: who signs, and what verifies."""

    def __init__(self, db: Database, settings: Settings):
        self.db = db
        self.settings = settings
        self._signer: Signer | None = None
        self._public: dict[str, Any] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def load(self, *, force: bool = False) -> None:
        async with self._lock:
            if not force and time.monotonic() - self._loaded_at < self.settings.identity_key_cache_seconds:
                return
            newest, published = await self._read()
            if newest is None:
                await ensure_key(self.db, self.settings)
                newest, published = await self._read()
                assert newest is not None
            if self._signer is None or self._signer.kid != newest["kid"]:
                self._signer = Signer(newest["kid"], load_private(newest["private_key"],
                                                                  self.settings.identity_key_passphrase))
            jwks = [loads(row["public_jwk"]) for row in published]
            self._public = {j["kid"]: jwt.PyJWK(j).key for j in jwks}
            self._loaded_at = time.monotonic()

    async def _read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        keep = keep_retired_seconds(self.settings)
        async with self.db.uow() as uow:
            current = await repo.current_signing_key(uow.conn, self.settings.identity_key_publish_seconds, keep)
            published = await repo.published_keys(uow.conn, keep)
        return current, published

    async def signer(self) -> Signer:
        await self.load()
        assert self._signer is not None
        return self._signer

    async def jwks(self) -> dict[str, Any]:
        """Read fresh, not from the cache: a key must be visible to verifiers as soon as it exists."""
        async with self.db.uow() as uow:
            published = await repo.published_keys(uow.conn, keep_retired_seconds(self.settings))
        return {"keys": [loads(row["public_jwk"]) for row in published]}

    async def public_keys(self, *, force: bool = False) -> dict[str, Any]:
        await self.load(force=force)
        return dict(self._public)

    async def mint_access_token(self, *, user_id: uuid.UUID, email: str, email_verified: bool,
                                roles: list[tuple[str, uuid.UUID | None]], session_id: uuid.UUID | None
                                ) -> tuple[str, int]:
        signer = await self.signer()
        now = int(time.time())
        ttl = self.settings.identity_access_ttl_seconds
        claims: dict[str, Any] = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": str(user_id),
            "typ": "access",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "email": email,
            "email_verified": email_verified,
            "roles": [{"code": c, "store_id": str(s) if s else None} for c, s in roles],
        }
        if session_id is not None:
            claims["sid"] = str(session_id)
        token = jwt.encode(claims, signer.key, algorithm=signer.algorithm, headers={"kid": signer.kid, "typ": "JWT"})
        return token, ttl


class LocalVerifier(JWKSVerifier):
    """The kit's verifier, fed from identity's own key table instead of an HTTP round trip."""

    _keys: dict[str, Any]
    _fetched_at: float

    def __init__(self, ring: KeyRing, settings: Settings):
        super().__init__("local:signing_keys", issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                         cache_seconds=settings.identity_key_cache_seconds, proof_keys=settings.gateway_proof_keys)
        self.ring = ring

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if self._keys and (age < self.min_refresh_interval or (not force and age < self.cache_seconds)):
                return
            self._keys = await self.ring.public_keys(force=force)
            self._fetched_at = time.monotonic()
