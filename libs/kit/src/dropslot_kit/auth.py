"""Access-token verification against identity's JWKS, with the keys cached.

Tokens are short-lived JWTs signed with an asymmetric key (EdDSA or ES256); the key id
in the header picks the key. An unknown key id refreshes the JWKS (at most every few
seconds, so a flood of forged kids cannot hammer identity); keys otherwise live for
`cache_seconds`, so a rotation is picked up without logging anyone out.

A token that verified is remembered (by its exact text) until it expires, for at most
`verified_ttl` seconds: during a drop the same person sends many requests with one token,
and the signature check is the costliest part of a request at the gateway. The memory is
bounded (oldest forgotten first); an expired token is refused even if remembered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import jwt
from fastapi import Depends, Request

from . import context
from .errors import Forbidden, InvalidToken, Unauthorized

ALGORITHMS = ["EdDSA", "ES256"]


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
    ):
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.cache_seconds = cache_seconds
        self.min_refresh_interval = min_refresh_interval
        self.leeway = leeway
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self.verified_ttl = verified_ttl
        self.verified_max = verified_max
        self._verified: dict[str, tuple[Principal, float]] = {}  # token -> (principal, good until)

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

    async def verify(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._verified[token]
        principal = await self._verify(token)
        if self.verified_ttl > 0:
            exp = float(principal.claims["exp"]) + self.leeway
            if len(self._verified) >= self.verified_max:
                del self._verified[next(iter(self._verified))]  # the oldest remembered
            self._verified[token] = (principal, min(exp, time.time() + self.verified_ttl))
        return principal

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        kid = header.get("kid")
        if not kid or header.get("alg") not in ALGORITHMS:
            raise InvalidToken("token has no acceptable key id or algorithm")
        try:
            key = await self.key_for(kid)
        except httpx.HTTPError:
            raise InvalidToken("signing keys are unavailable") from None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.PyJWTError:
            raise InvalidToken("token signature or claims are invalid") from None
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
    principal = await verifier.verify(token)
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
