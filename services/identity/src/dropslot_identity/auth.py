"""Who is calling identity: the kit's token check, plus what only identity can check cheaply.

Other services trust a valid access token until it expires (10 minutes by default).
Identity also looks at the account and the session behind the token on its own routes,
so a suspended user, or a session that was logged out or revoked for refresh-token
reuse, is refused here at once.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from dropslot_kit.auth import Principal, current_user
from dropslot_kit.errors import InvalidToken
from fastapi import Depends, Request

from .adapters import repo
from .domain import users as U
from .service import IdentityService


def identity(request: Request) -> IdentityService:
    svc: IdentityService = request.app.state.rt.extras["identity"]
    return svc


def session_id_of(principal: Principal) -> uuid.UUID | None:
    sid = principal.claims.get("sid")
    try:
        return uuid.UUID(str(sid)) if sid else None
    except ValueError:
        return None


async def active_caller(request: Request, principal: Annotated[Principal, Depends(current_user)]) -> Principal:
    svc = identity(request)
    async with svc.db.uow() as uow:
        state = await repo.caller_state(uow.conn, principal.user_id, session_id_of(principal))
    if state is None or state["status"] == U.DELETED:
        raise InvalidToken("the account no longer exists", headers={"WWW-Authenticate": "Bearer"})
    if state["status"] != U.ACTIVE:
        raise InvalidToken("the account is suspended", headers={"WWW-Authenticate": "Bearer"})
    if state["session_revoked"]:
        raise InvalidToken("the session has ended; sign in again", headers={"WWW-Authenticate": "Bearer"})
    return principal


Caller = Annotated[Principal, Depends(active_caller)]
Identity = Annotated[IdentityService, Depends(identity)]


def client_ip(request: Request, trusted_hops: int) -> str:
    """The caller's address: with N trusted proxies in front (the gateway appends the address it
    saw), the Nth X-Forwarded-For entry from the right; entries further left are the client's own
    claims and could be forged to dodge per-address throttling."""
    peer = request.client.host if request.client else "unknown"
    if trusted_hops <= 0:
        return peer
    xff = request.headers.get("x-forwarded-for")
    if not xff:
        return peer
    hops = [h.strip() for h in xff.split(",") if h.strip()]
    if not hops:
        return peer
    return hops[-trusted_hops] if len(hops) >= trusted_hops else hops[0]
