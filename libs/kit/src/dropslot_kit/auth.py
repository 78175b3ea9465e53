"""Access-token verification against identity's JWKS, with the keys cached.

Tokens are short-lived JWTs signed with an asymmetric key (RS256, EdDSA or ES256); the key
id in the header picks the key. Identity signs with RS256 by default: an RSA signature (e=65537)
verifies in ~22 µs here against ~56 µs for Ed25519 with libsodium, and every first request of
each person in a drop pays one check at the gateway, while a token is signed once per sign-in.
An unknown key id refreshes the JWKS (at most every few seconds, so a flood of forged kids
cannot hammer identity); keys otherwise live for `cache_seconds`, so a rotation is picked up
without logging anyone out.

A token that verified is remembered (by its exact text) until it expires, for at most
`verified_ttl` seconds: during a drop the same person sends many requests with one token,
and the signature check is the costliest part of a request at the gateway. The memory is
bounded (oldest forgotten first); an expired token is refused even if remembered. The gateway
also remembers the tokens identity issues as they pass through it (`remember_issued`: sign-in and
refresh answers), so a person's first request after signing in skips the signature too.

The check is written out here (split, base64url, JSON, the claims) around the signature check
(OpenSSL via cryptography for RS256, libsodium for Ed25519, PyJWT's algorithm object for ES256):
`jwt.decode` spent ~100 µs per token on its generic option handling beside a ~110 µs OpenSSL
Ed25519 check (libsodium: ~55 µs), and in a drop every request carries a token seen for the
first time. Refused: anything but three base64url segments, an algorithm outside ALGORITHMS or
not matching the key's type, an RSA key under 2048 bits, a bad signature, a missing exp/iat/sub,
expired, issued or valid only in the future (beyond the leeway), another issuer or audience, or a
token type other than access.

**Gateway proof.** The gateway verifies every token before routing, then forwards a proof that it
did: `X-DropSlot-Gateway-Proof` = base64url(HMAC-SHA256(key, token text)), under a key shared by
the gateway and the services (`DROPSLOT_GATEWAY_PROOF_KEYS`; the first signs, all are accepted,
so the key can be rotated). A service that gets a valid proof for the exact token text skips the
signature but still checks every claim (expiry included) — the token was checked ~a millisecond
earlier by the gateway. A missing or wrong proof (a rotated key, a request that did not come
through the gateway) means a full check, never a refusal. The gateway drops the header from what
clients send. Without keys configured, there are no proofs and every service checks signatures.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import Depends, Request
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from . import context
from .errors import Forbidden, InvalidToken, Unauthorized

ALGORITHMS = ["RS256", "EdDSA", "ES256"]
# The algorithm a token names must match the type of the key its kid picks.
_KEY_TYPES: dict[str, type] = {"RS256": RSAPublicKey, "EdDSA": Ed25519PublicKey, "ES256": EllipticCurvePublicKey}
RSA_MIN_BITS = 2048  # a published RSA key shorter than this verifies nothing
_ES256 = jwt.algorithms.get_default_algorithms()["ES256"]
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
PROOF_HEADER = "x-dropslot-gateway-proof"
PROOF_MIN_KEY_CHARS = 32


def _b64decode(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment):
        raise InvalidToken("malformed token")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None


def _segments(token: str) -> list[str]:
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    return parts


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64decode(segment))  # ~6x json.loads here; every first request of a person
    except ValueError:
        raise InvalidToken("malformed token") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value


def _keep(cache: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """Put key in a cache of at most `limit` entries, forgetting the oldest first."""
    if len(cache) >= limit:
        del cache[next(iter(cache))]
    cache[key] = value


def gateway_proof(key: str, token: str) -> str:
    """What the gateway forwards beside a token it verified (see the module docstring)."""
    mac = hmac.digest(key.encode(), token.encode("latin-1"), "sha256")  # one-shot, in C
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


# A request the gateway makes on its own behalf is vouched for by the proof of its body under this
# prefix, so that such a proof can never pass for a token's, nor a token's for a body's.
BODY_PROOF_PREFIX = "dropslot-gateway-body\n"


def body_proof(key: str, body: str) -> str:
    """The gateway's proof for the body of a request it makes itself (see `JWKSVerifier.vouch`)."""
    return gateway_proof(key, BODY_PROOF_PREFIX + body)


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    roles: tuple[tuple[str, uuid.UUID | None], ...] = ()
    email: str | None = None
    email_verified: bool = False
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_platform_admin(self) -> bool:
        return any(code == "platform_admin" for code, _ in self.roles)

    def has_role(self, code: str, store_id: uuid.UUID | None = None) -> bool:
        return any(c == code and (store_id is None or s == store_id) for c, s in self.roles)

    def owns_store(self, store_id: uuid.UUID) -> bool:
        return self.has_role("store_owner", store_id)

    def works_at(self, store_id: uuid.UUID) -> bool:
        """Owner or staff of the store."""
        return self.owns_store(store_id) or self.has_role("store_staff", store_id)

    def store_ids(self, *codes: str) -> set[uuid.UUID]:
        return {s for c, s in self.roles if s is not None and (not codes or c in codes)}


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    roles = []
    for r in claims.get("roles", []):
        store = r.get("store_id")
        roles.append((str(r["code"]), uuid.UUID(store) if store else None))
    return Principal(
        user_id=uuid.UUID(claims["sub"]),
        roles=tuple(roles),
        email=claims.get("email"),
        email_verified=bool(claims.get("email_verified", False)),
        claims=claims,
    )


class JWKSVerifier:
    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        cache_seconds: float = 300.0,
        min_refresh_interval: float = 5.0,
        leeway: float = 5.0,
        verified_ttl: float = 60.0,
        verified_max: int = 20_000,
        proof_keys: list[str] | tuple[str, ...] = (),
    ):
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.cache_seconds = cache_seconds
        self.min_refresh_interval = min_refresh_interval
        self.leeway = leeway
        self._keys: dict[str, Any] = {}
        # Ed25519 signatures are checked with libsodium: ~55 µs against OpenSSL's ~110 µs here
        # (and it refuses non-canonical encodings and small-order points). Per key, made once.
        self._sodium: dict[str, tuple[Any, VerifyKey]] = {}  # kid -> (key, its libsodium twin)
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self.verified_ttl = verified_ttl
        self.verified_max = verified_max
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, good until)
        # Every token one key signs has the same header segment: its (kid, alg), remembered once a
        # token with it verified (so forgeries cannot fill it), spares a base64 + JSON decode per
        # first check (~5 % of the gateway's CPU in a storm of new tokens).
        self._headers: dict[str, tuple[str, str]] = {}
        if any(len(k) < PROOF_MIN_KEY_CHARS for k in proof_keys):
            raise ValueError(f"gateway proof keys must be at least {PROOF_MIN_KEY_CHARS} characters")
        self.proof_keys = tuple(proof_keys)
        # token -> its proof: the same token gets the same proof, so a remembered token's is
        # kept (an HMAC and a base64 per request otherwise, ~4 µs of the gateway's CPU).
        self._proofs: dict[str, str] = {}

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if self._keys and (age < self.min_refresh_interval or (not force and age < self.cache_seconds)):
                return
            async with httpx.AsyncClient(timeout=3.0) as client:
                resp = await client.get(self.jwks_url)
                resp.raise_for_status()
                jwks = resp.json()
            keys = {}
            for jwk in jwks.get("keys", []):
                try:
                    keys[jwk["kid"]] = jwt.PyJWK(jwk).key
                except (jwt.PyJWKError, KeyError):
                    continue
            self._keys = keys
            self._fetched_at = time.monotonic()

    async def key_for(self, kid: str) -> Any:
        if not self._keys or time.monotonic() - self._fetched_at > self.cache_seconds:
            await self._refresh(force=False)
        if kid not in self._keys:
            await self._refresh(force=True)
        try:
            return self._keys[kid]
        except KeyError:
            raise InvalidToken("unknown signing key") from None

    def proof(self, token: str) -> str | None:
        """The gateway's proof for a token it verified (None without keys). Kept for as many
        tokens as the verified ones (`verified_max`), the oldest forgotten first."""
        if not self.proof_keys:
            return None
        known = self._proofs.get(token)
        if known is not None:
            return known
        made = gateway_proof(self.proof_keys[0], token)
        if self.verified_ttl > 0:
            _keep(self._proofs, token, made, self.verified_max)
        return made

    def _proven(self, token: str, proof: str | None) -> bool:
        if not proof or not self.proof_keys:
            return False
        return any(hmac.compare_digest(gateway_proof(k, token), proof) for k in self.proof_keys)

    def vouch(self, body: str) -> str | None:
        """The gateway's proof for the body of a request it makes itself (not remembered); None
        without keys."""
        return body_proof(self.proof_keys[0], body) if self.proof_keys else None

    def vouched(self, body: str, proof: str | None) -> bool:
        """Whether `proof` is the gateway's for this body (`vouch`), under any of the keys."""
        return self._proven(BODY_PROOF_PREFIX + body, proof)  # body_proof, under each key

    async def verify(self, token: str, proof: str | None = None) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._verified[token]
        if self._proven(token, proof):
            principal = self._claims(_segments(token)[1])
        else:
            principal = await self._verify(token)
        self._remember(token, principal)
        return principal

    def remember_issued(self, token: str) -> bool:
        """Remember a token identity has just issued, read from identity's own answer (the gateway
        proxies sign-in and refresh), as verified: its holder's first request then skips the
        signature check, as every later one does. Its claims are checked as always (an expired,
        foreign or malformed token is not remembered). False if it was not remembered."""
        if self.verified_ttl <= 0:
            return False
        try:
            principal = self._claims(_segments(token)[1])
        except InvalidToken:
            return False
        self._remember(token, principal)
        return True

    def _remember(self, token: str, principal: Principal) -> None:
        if self.verified_ttl > 0:
            exp = float(principal.claims["exp"]) + self.leeway
            _keep(self._verified, token, (principal, min(exp, time.time() + self.verified_ttl)), self.verified_max)

    async def _verify(self, token: str) -> Principal:
        """Signature and claims."""
        parts = _segments(token)
        known = self._headers.get(parts[0])
        if known is None:
            header = _json_object(parts[0])
            kid, alg = header.get("kid"), header.get("alg")
        else:
            kid, alg = known
        if not kid or not isinstance(kid, str) or alg not in ALGORITHMS:
            raise InvalidToken("token has no acceptable key id or algorithm")
        signature = _b64decode(parts[2])
        try:
            key = await self.key_for(kid)
        except httpx.HTTPError:
            raise InvalidToken("signing keys are unavailable") from None
        if not isinstance(key, _KEY_TYPES[alg]):
            raise InvalidToken("token algorithm does not match its key")
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        # The key's type matches `alg` (checked just above): branch on it, so each is typed.
        if isinstance(key, RSAPublicKey):
            try:
                if key.key_size < RSA_MIN_BITS:
                    raise InvalidSignature
                key.verify(signature, signed, PKCS1v15(), SHA256())
                good = True
            except (InvalidSignature, ValueError, TypeError):
                good = False
        elif isinstance(key, Ed25519PublicKey):
            try:
                self._sodium_key(kid, key).verify(signed, signature)
                good = True
            except (BadSignatureError, ValueError, TypeError):
                good = False
        else:
            good = _ES256.verify(signed, key, signature)
        if not good:
            raise InvalidToken("token signature or claims are invalid")
        principal = self._claims(parts[1])
        if known is None and len(self._headers) < 64:
            self._headers[parts[0]] = (kid, alg)
        return principal

    def _sodium_key(self, kid: str, key: Ed25519PublicKey) -> VerifyKey:
        pair = self._sodium.get(kid)
        if pair is None or pair[0] is not key:  # first use, or the kid's key was fetched again
            pair = self._sodium[kid] = (key, VerifyKey(key.public_bytes(Encoding.Raw, PublicFormat.Raw)))
        return pair[1]

    def _claims(self, payload: str) -> Principal:
        """The claims (payload segment) of a token whose signature is known good, checked."""
        claims = _json_object(payload)
        now = time.time()
        for name in ("exp", "iat"):
            if not isinstance(claims.get(name), (int, float)) or isinstance(claims.get(name), bool):
                raise InvalidToken("token signature or claims are invalid")
        if not isinstance(claims.get("sub"), str):
            raise InvalidToken("token signature or claims are invalid")
        if claims["exp"] <= now - self.leeway:
            raise InvalidToken("token expired")
        nbf = claims.get("nbf")
        if claims["iat"] > now + self.leeway or (nbf is not None and (
                not isinstance(nbf, (int, float)) or nbf > now + self.leeway)):
            raise InvalidToken("token is not valid yet")
        if claims.get("iss") != self.issuer:
            raise InvalidToken("token signature or claims are invalid")
        aud = claims.get("aud")
        if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
            raise InvalidToken("token signature or claims are invalid")
        if claims.get("typ", "access") != "access":
            raise InvalidToken("not an access token")
        try:
            return principal_from_claims(claims)
        except (KeyError, ValueError, TypeError, AttributeError):
            raise InvalidToken("token claims are malformed") from None


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("Authorization must be 'Bearer <token>'")
    return token.strip()


async def optional_user(request: Request) -> Principal | None:
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = bearer_token(request)
    if token is None:
        return None
    verifier: JWKSVerifier = request.app.state.verifier
    principal = await verifier.verify(token, request.headers.get(PROOF_HEADER))
    request.state.principal = principal
    context.act_as(principal.user_id)
    return principal


async def current_user(principal: Annotated[Principal | None, Depends(optional_user)]) -> Principal:
    if principal is None:
        raise Unauthorized("sign in first", headers={"WWW-Authenticate": "Bearer"})
    return principal


async def platform_admin(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
    if not principal.is_platform_admin:
        raise Forbidden("platform admins only")
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]
OptionalUser = Annotated[Principal | None, Depends(optional_user)]
PlatformAdmin = Annotated[Principal, Depends(platform_admin)]
