"""Identity's HTTP routes (all under /api/v1; API.md's identity section, plus the extras below).

From API.md:
    POST /auth/register {email, password, name}     201 user · 409 email-taken · 422 weak-password
    POST /auth/login {email, password}              200 tokens · 401 invalid-credentials · 403 account-suspended
                                                    · 429 rate-limited (Retry-After)
    POST /auth/refresh {refresh_token}              200 new pair · 401 refresh-token-invalid
                                                    · 401 refresh-token-reused (the whole session is revoked)
    POST /auth/logout {refresh_token}               204 (ends that session; unknown tokens: 204 too)
    POST /auth/verify-email {token}                 200 user · 400 token-invalid / token-expired
    POST /auth/password-reset {email}               202 whether or not the account exists
    POST /auth/password-reset/confirm {token, password}  204 · 400 token-invalid / token-expired · 422 weak-password
    GET  /auth/jwks.json                            the public keys (Ed25519, `kid`) that verify access tokens
    GET  /users/me                                  {id, email, name, status, email_verified_at, roles, ...}
    POST /users/{id}/roles {code, store_id?}        201 · 403 · 404 · 422 (store_id required / not allowed)
    DELETE /users/{id}/roles/{code}?store_id=       204 (also when the role was not held)

Extras (API.md is silent on these):
    POST /auth/verify-email/resend                  user · 202 (a new link; older ones stop working)
    PATCH /users/me {name}                          user · 200 user
    POST /users/me/password {current_password, new_password}  user · 204; other sessions end
    GET  /users?email=&status=&limit=&cursor=       platform admin: every account, paginated;
                                                    a store owner: exact `email` lookup only (to grant staff)
    GET  /users/{id} · GET /users/{id}/roles        platform admin, or the user themself
    POST /users/{id}/suspend {reason?}              platform admin · 200 user; sessions end at once
    POST /users/{id}/reactivate                     platform admin · 200 user · 409 for a deleted account
    DELETE /users/{id}                              platform admin, or the user themself · 204 (status `deleted`;
                                                    the address may be registered again)

Tokens: the access token is an RS256 JWT (`kid` header; claims iss, aud, sub, typ="access", iat, exp,
jti, sid, email, email_verified, roles=[{code, store_id}]), 10 minutes by default. Identity's own
routes also refuse it once its account is suspended or its session has ended; other services accept
it until it expires. The refresh token is opaque, stored hashed, rotates on every use; presenting it
again within `DROPSLOT_IDENTITY_REFRESH_REUSE_GRACE_SECONDS` (30 s) of its rotation, e.g. two tabs
refreshing at once, answers 200 with a pair for the same session instead of revoking it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from .auth import Caller, Identity, client_ip, session_id_of
from .domain import users as U

router = APIRouter(prefix="/api/v1")


# --- schemas ------------------------------------------------------------------------------------------
def _email(value: str) -> str:
    value = U.clean_email(value)
    if not U.valid_email(value):
        raise ValueError("not an email address")
    return value


class RegisterIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)
    name: str | None = Field(default=None, max_length=200)

    _check_email = field_validator("email")(_email)


class LoginIn(BaseModel):
    email: str = Field(max_length=320)
    password: str = Field(max_length=4096)


class RefreshTokenIn(BaseModel):
    refresh_token: str = Field(max_length=512)


class TokenIn(BaseModel):
    token: str = Field(max_length=512)


class EmailIn(BaseModel):
    email: str = Field(max_length=320)

    _check_email = field_validator("email")(_email)


class ResetConfirmIn(BaseModel):
    token: str = Field(max_length=512)
    password: str = Field(max_length=4096)


class ChangePasswordIn(BaseModel):
    current_password: str = Field(max_length=4096)
    new_password: str = Field(max_length=4096)


class UpdateMeIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be blank")
        return v


class RoleIn(BaseModel):
    code: str = Field(max_length=64)
    store_id: uuid.UUID | None = None


class StatusIn(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


class RoleOut(BaseModel):
    code: str
    store_id: uuid.UUID | None = None


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str
    status: str
    email_verified: bool
    email_verified_at: datetime | None
    roles: list[RoleOut]
    created_at: datetime


class RoleGrantOut(BaseModel):
    user_id: uuid.UUID
    code: str
    store_id: uuid.UUID | None = None


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_expires_in: int


class UserPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


def _ip(request: Request) -> str:
    svc = request.app.state.rt.extras["identity"]
    return client_ip(request, svc.settings.identity_trusted_proxy_hops)


# --- /auth ----------------------------------------------------------------------------------------------
@router.post("/auth/register", status_code=201, response_model=UserOut, tags=["auth"])
async def register(body: RegisterIn, request: Request, svc: Identity) -> dict[str, Any]:
    return await svc.register(body.email, body.password, body.name, ip=_ip(request))


@router.post("/auth/login", response_model=TokenPairOut, tags=["auth"])
async def login(body: LoginIn, request: Request, svc: Identity) -> dict[str, Any]:
    pair = await svc.login(body.email, body.password, ip=_ip(request),
                           user_agent=request.headers.get("user-agent"))
    return pair.body()


@router.post("/auth/refresh", response_model=TokenPairOut, tags=["auth"])
async def refresh(body: RefreshTokenIn, svc: Identity) -> dict[str, Any]:
    return (await svc.refresh(body.refresh_token)).body()


@router.post("/auth/logout", status_code=204, tags=["auth"])
async def logout(body: RefreshTokenIn, svc: Identity) -> Response:
    await svc.logout(body.refresh_token)
    return Response(status_code=204)


@router.post("/auth/verify-email", response_model=UserOut, tags=["auth"])
async def verify_email(body: TokenIn, svc: Identity) -> dict[str, Any]:
    return await svc.verify_email(body.token)


@router.post("/auth/verify-email/resend", status_code=202, tags=["auth"])
async def resend_verification(caller: Caller, svc: Identity) -> dict[str, Any]:
    sent = await svc.resend_verification(caller.user_id)
    return {"sent": sent, "detail": "a new verification link is on its way" if sent else "already verified"}


@router.post("/auth/password-reset", status_code=202, tags=["auth"])
async def password_reset(body: EmailIn, svc: Identity) -> dict[str, str]:
    await svc.request_password_reset(body.email)
    return {"detail": "if an account exists for this address, a reset link is on its way"}


@router.post("/auth/password-reset/confirm", status_code=204, tags=["auth"])
async def password_reset_confirm(body: ResetConfirmIn, request: Request, svc: Identity) -> Response:
    await svc.confirm_password_reset(body.token, body.password, ip=_ip(request))
    return Response(status_code=204)


@router.get("/auth/jwks.json", tags=["auth"])
async def jwks(svc: Identity) -> JSONResponse:
    # Cached briefly at most: a new key is published this long before it signs (publish delay, 20 s).
    return JSONResponse(await svc.ring.jwks(), headers={"Cache-Control": "public, max-age=10"})


# --- /users ---------------------------------------------------------------------------------------------
@router.get("/users/me", response_model=UserOut, tags=["users"])
async def me(caller: Caller, svc: Identity) -> dict[str, Any]:
    return await svc.me(caller.user_id)


@router.patch("/users/me", response_model=UserOut, tags=["users"])
async def update_me(body: UpdateMeIn, caller: Caller, svc: Identity) -> dict[str, Any]:
    return await svc.update_me(caller.user_id, body.name)


@router.post("/users/me/password", status_code=204, tags=["users"])
async def change_password(body: ChangePasswordIn, caller: Caller, svc: Identity) -> Response:
    await svc.change_password(caller.user_id, session_id_of(caller), body.current_password, body.new_password)
    return Response(status_code=204)


@router.get("/users", response_model=UserPage, tags=["users"])
async def list_users(
    caller: Caller, svc: Identity,
    email: Annotated[str | None, Query(max_length=320)] = None,
    status: Annotated[str | None, Query(pattern="^(active|suspended|deleted)$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    return await svc.list_users(caller.user_id, email=email, status=status, limit=limit, cursor=cursor)


@router.get("/users/{user_id}", response_model=UserOut, tags=["users"])
async def get_user(user_id: uuid.UUID, caller: Caller, svc: Identity) -> dict[str, Any]:
    return await svc.get_user(caller.user_id, user_id)


@router.delete("/users/{user_id}", status_code=204, tags=["users"])
async def delete_user(user_id: uuid.UUID, caller: Caller, svc: Identity) -> Response:
    await svc.set_status(caller.user_id, user_id, U.DELETED, "deleted")
    return Response(status_code=204)


@router.post("/users/{user_id}/suspend", response_model=UserOut, tags=["users"])
async def suspend(user_id: uuid.UUID, caller: Caller, svc: Identity, body: StatusIn | None = None) -> dict[str, Any]:
    return await svc.set_status(caller.user_id, user_id, U.SUSPENDED, body.reason if body else None)


@router.post("/users/{user_id}/reactivate", response_model=UserOut, tags=["users"])
async def reactivate(user_id: uuid.UUID, caller: Caller, svc: Identity,
                     body: StatusIn | None = None) -> dict[str, Any]:
    return await svc.set_status(caller.user_id, user_id, U.ACTIVE, body.reason if body else None)


@router.get("/users/{user_id}/roles", response_model=list[RoleOut], tags=["roles"])
async def list_roles(user_id: uuid.UUID, caller: Caller, svc: Identity) -> list[dict[str, Any]]:
    return await svc.roles(caller.user_id, user_id)


@router.post("/users/{user_id}/roles", status_code=201, response_model=RoleGrantOut, tags=["roles"])
async def grant_role(user_id: uuid.UUID, body: RoleIn, caller: Caller, svc: Identity) -> dict[str, Any]:
    grant, _created = await svc.grant_role(caller.user_id, user_id, body.code, body.store_id)
    return grant


@router.delete("/users/{user_id}/roles/{code}", status_code=204, tags=["roles"])
async def revoke_role(user_id: uuid.UUID, code: str, caller: Caller, svc: Identity,
                      store_id: uuid.UUID | None = None) -> Response:
    await svc.revoke_role(caller.user_id, user_id, code, store_id)
    return Response(status_code=204)
