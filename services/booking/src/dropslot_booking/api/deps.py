"""Request dependencies: the booking runtime and the caller.

`Caller` is the kit's bearer-token check with a per-replica cache of verified tokens (the
signature is checked once per token per replica, the cached principal expires with the token):
the reserve storm pays the EdDSA verification once per user, not once per request.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated

from dropslot_contracts import Actor
from dropslot_kit import context
from dropslot_kit.auth import JWKSVerifier, Principal, bearer_token
from dropslot_kit.errors import Unauthorized
from fastapi import Depends, Request

from ..service.runtime import Booking


def booking(request: Request) -> Booking:
    bk: Booking = request.app.state.rt.extras["booking"]
    return bk


class TokenCache:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.entries: dict[str, tuple[Principal, float]] = {}

    async def principal(self, verifier: JWKSVerifier, token: str) -> Principal:
        hit = self.entries.get(token)
        now = time.time()
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = await verifier.verify(token)
        if len(self.entries) >= self.max_entries:
            # Cheap eviction: drop what expired, and if that is not enough, everything.
            self.entries = {k: v for k, v in self.entries.items() if v[1] > now}
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
        self.entries[token] = (principal, float(principal.claims.get("exp", now)))
        return principal


async def caller(request: Request) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("sign in first", headers={"WWW-Authenticate": "Bearer"})
    cache: TokenCache = request.app.state.token_cache
    principal = await cache.principal(request.app.state.verifier, token)
    request.state.principal = principal
    ctx = context.current()
    context.set_current(dataclasses.replace(
        ctx, actor=Actor(user_id=principal.user_id, ip=ctx.actor.ip, user_agent=ctx.actor.user_agent)
    ))
    return principal


Caller = Annotated[Principal, Depends(caller)]
BookingDep = Annotated[Booking, Depends(booking)]


def limit_param(limit: int | None) -> int:
    return max(1, min(limit or 50, 200))


