"""Identity's use cases: one method per command. Each opens a unit of work, applies the domain
rules, writes through the repository and emits its events, which commit together.

Slow work (argon2, ~80 ms) happens before a transaction is opened, so no row lock or pooled
connection is held while a password hashes.

Refresh tokens rotate on every use, and reuse of a spent one revokes the session, except within a
short grace window after its rotation, when a client refreshing twice at once gets a sibling token
of the session's current generation (refresh tokens are stored only as hashes, so the first
successor cannot be handed out again). The full rule is in `IdentityService.refresh`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dropslot_contracts import Envelope
from dropslot_contracts.events import identity as ev
from dropslot_kit import context
from dropslot_kit.db import Database, UnitOfWork
from dropslot_kit.errors import Forbidden

from . import errors
from .adapters import repo
from .adapters.hashing import Passwords
from .adapters.throttle import SignInThrottle
from .config import Settings
from .domain import passwords as policy
from .domain import roles as R
from .domain import tokens
from .domain import users as U
from .keys import KeyRing

log = logging.getLogger("dropslot.identity")

VERIFY, RESET = "verify_email", "password_reset"


def utcnow() -> datetime:
    return datetime.now(UTC)


def user_view(row: dict[str, Any], roles: list[tuple[str, uuid.UUID | None]]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "name": row["name"],
        "status": row["status"],
        "email_verified": row["email_verified_at"] is not None,
        "email_verified_at": row["email_verified_at"],
        "roles": [{"code": c, "store_id": s} for c, s in roles],
        "created_at": row["created_at"],
    }


def encode_cursor(created_at: datetime, user_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{user_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        ts, uid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), uuid.UUID(uid)
    except (ValueError, UnicodeDecodeError):
        raise errors.InvalidField("cursor", "not a cursor from a previous page") from None


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int

    def body(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "refresh_token": self.refresh_token, "token_type": "bearer",
                "expires_in": self.expires_in, "refresh_expires_in": self.refresh_expires_in}


class IdentityService:
    def __init__(self, db: Database, settings: Settings, ring: KeyRing, passwords: Passwords,
                 throttle: SignInThrottle):
        self.db = db
        self.settings = settings
        self.ring = ring
        self.passwords = passwords
        self.throttle = throttle
        self.policy = policy.PasswordPolicy(settings.identity_password_min_length,
                                            settings.identity_password_max_length)

    def check_password(self, password: str, *, email: str | None, name: str | None) -> None:
        reasons = policy.problems(password, email=email, name=name, policy=self.policy)
        if reasons:
            raise errors.WeakPassword(reasons)

    # --- accounts ---------------------------------------------------------------------------------
    async def register(self, email: str, password: str, name: str | None, *, ip: str | None) -> dict[str, Any]:
        email = U.clean_email(email)
        name = (name or "").strip() or email.split("@", 1)[0]
        self.check_password(password, email=email, name=name)
        password_hash = await self.passwords.hash(password)
        user_id = uuid.uuid4()
        token = tokens.new_token()
        expires_at = utcnow() + timedelta(seconds=self.settings.identity_verification_ttl_seconds)
        context.act_as(user_id)
        async with self.db.uow() as uow:
            row = await repo.insert_user(uow.conn, user_id=user_id, email=email, password_hash=password_hash,
                                         name=name)
            if row is None:
                raise errors.EmailTaken(f"{email} is already registered", field="email")
            await repo.grant_role(uow.conn, user_id, R.CUSTOMER, None, None)
            await repo.insert_one_time_token(uow.conn, user_id=user_id, purpose=VERIFY,
                                             token_hash=tokens.hash_token(token), expires_at=expires_at)
            uow.emit(ev.UserRegistered(user_id=user_id, email=email, name=name, status=U.ACTIVE,
                                       verification_token=token, verification_expires_at=expires_at),
                     after={"id": str(user_id), "email": email, "name": name, "status": U.ACTIVE})
            uow.emit(ev.RoleGranted(user_id=user_id, code=R.CUSTOMER), after={"code": R.CUSTOMER, "store_id": None})
        if ip:
            await self.throttle.remember(email, ip)  # signing up from here makes this address known
        return user_view(row, [(R.CUSTOMER, None)])

    async def me(self, user_id: uuid.UUID) -> dict[str, Any]:
        async with self.db.uow() as uow:
            row = await repo.get_user(uow.conn, user_id)
            if row is None or row["status"] == U.DELETED:
                raise errors.UserNotFound()
            return user_view(row, await repo.roles_of(uow.conn, user_id))

    async def get_user(self, actor_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, Any]:
        if actor_id != user_id:
            await self._require_admin(actor_id)
        async with self.db.uow() as uow:
            row = await repo.get_user(uow.conn, user_id)
            if row is None:
                raise errors.UserNotFound()
            return user_view(row, await repo.roles_of(uow.conn, user_id))

    async def update_me(self, user_id: uuid.UUID, name: str) -> dict[str, Any]:
        async with self.db.uow() as uow:
            row = await repo.get_user(uow.conn, user_id, for_update=True)
            if row is None or row["status"] == U.DELETED:
                raise errors.UserNotFound()
            if row["name"] != name:
                await repo.set_name(uow.conn, user_id, name)
                uow.emit(ev.UserUpdated(user_id=user_id, email=row["email"], name=name, status=row["status"],
                                        email_verified=row["email_verified_at"] is not None),
                         before={"name": row["name"]}, after={"name": name})
                row = {**row, "name": name}
            return user_view(row, await repo.roles_of(uow.conn, user_id))

    async def list_users(self, actor_id: uuid.UUID, *, email: str | None, status: str | None, limit: int,
                         cursor: str | None) -> dict[str, Any]:
        """Platform admins list everyone; a store owner may look one address up (to grant staff)."""
        async with self.db.uow() as uow:
            roles = await repo.roles_of(uow.conn, actor_id)
            is_admin = any(c == R.PLATFORM_ADMIN for c, _ in roles)
            if not is_admin and not (email and any(c == R.STORE_OWNER for c, _ in roles)):
                raise Forbidden("platform admins list users; store owners may look up one email")
            after = decode_cursor(cursor) if cursor else None
            rows = await repo.list_users(uow.conn, limit=limit + 1, after=after, email=email, status=status)
            if not is_admin:
                rows = [r for r in rows if r["status"] == U.ACTIVE]
            page, more = rows[:limit], len(rows) > limit
            all_roles = await repo.roles_of_many(uow.conn, [r["id"] for r in page])
        items = [user_view(r, all_roles[r["id"]]) for r in page]
        if not is_admin:
            items = [{k: i[k] for k in ("id", "email", "name")} for i in items]
        next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more and page else None
        return {"items": items, "next_cursor": next_cursor}

    # --- sign-in, refresh, sign-out ---------------------------------------------------------------
    async def login(self, email: str, password: str, *, ip: str, user_agent: str | None) -> TokenPair:
        email = U.clean_email(email)
        wait = await self.throttle.retry_after(email, ip)
        if wait is not None:
            raise errors.SignInThrottled(wait)
        async with self.db.uow() as uow:
            row = await repo.get_user_by_email(uow.conn, email)
        # A password longer than any we accept cannot match; don't spend a hash on it.
        plausible = len(password) <= self.settings.identity_password_max_length * 4
        ok = plausible and await self.passwords.verify(row["password_hash"] if row else None, password)
        if not ok or row is None:
            await self.throttle.failed(email, ip)
            raise errors.InvalidCredentials()
        if row["status"] != U.ACTIVE:
            raise errors.AccountSuspended("this account is suspended; contact support")
        await self.throttle.succeeded(email, ip)
        if self.passwords.needs_rehash(row["password_hash"]):
            new_hash = await self.passwords.hash(password)
        else:
            new_hash = None
        user_id = row["id"]
        context.act_as(user_id)
        session_id = uuid.uuid4()
        async with self.db.uow() as uow:
            if new_hash:
                await repo.rehash_password(uow.conn, user_id, row["password_hash"], new_hash)
            await repo.create_session(uow.conn, session_id=session_id, user_id=user_id, ip=ip, user_agent=user_agent)
            refresh = await self._new_refresh_token(uow, session_id)
            roles = await repo.roles_of(uow.conn, user_id)
            uow.emit(ev.UserSignedIn(user_id=user_id, session_id=session_id),
                     after={"session_id": str(session_id), "ip": ip})
        access, ttl = await self.ring.mint_access_token(
            user_id=user_id, email=row["email"], email_verified=row["email_verified_at"] is not None,
            roles=roles, session_id=session_id)
        return TokenPair(access, refresh, ttl, self.settings.identity_refresh_ttl_seconds)

    async def _new_refresh_token(self, uow: UnitOfWork, session_id: uuid.UUID, generation: int = 0) -> str:
        token = tokens.new_token()
        await repo.insert_refresh_token(
            uow.conn, token_id=uuid.uuid4(), session_id=session_id, token_hash=tokens.hash_token(token),
            expires_at=utcnow() + timedelta(seconds=self.settings.identity_refresh_ttl_seconds),
            generation=generation)
        return token

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new one issued in the same session (family).

        A session counts its rotations (`generation`); each token records the generation it was
        issued in, and only tokens of the current generation rotate. Presenting a spent token
        again normally means two parties hold it (a thief, or the user after one was stolen): the
        whole session is revoked, and both must sign in again.

        Except within the grace window (`identity_refresh_reuse_grace_seconds`, 0 turns it off):
        a token of the generation the session left less than that long ago, spent by that very
        move, is a client refreshing twice at once (two tabs, a retry after a lost response). It
        gets a *sibling*: a fresh token of the current generation, in the same session, with a
        fresh access token. The successor the first refresh issued cannot be handed out again,
        since only its hash is stored; the sibling works exactly like it, and whichever of the
        two the client keeps and rotates first moves the session on, leaving the other spent (it
        is of an older generation from then on). No event, as for any rotation.

        Never graced: a revoked session (logout, reuse, password reset, suspension), an
        inactive account, an expired token, a token two or more generations old, or any reuse
        after the window; those answer as before (reuse revokes the family).

        Concurrent refreshes of one session queue on the session row (locked before the token is
        read), so the loser of a race sees the winner's rotation and takes the grace path.
        """
        if not tokens.looks_like_token(refresh_token):
            raise errors.RefreshTokenInvalid()
        token_hash = tokens.hash_token(refresh_token)
        grace = self.settings.identity_refresh_reuse_grace_seconds
        reused = False
        async with self.db.uow() as uow:
            if await repo.lock_session_of_refresh_token(uow.conn, token_hash) is None:
                raise errors.RefreshTokenInvalid()
            row = await repo.refresh_token_state(uow.conn, token_hash, grace)
            if row is None:  # purged between the two statements
                raise errors.RefreshTokenInvalid()
            context.act_as(row["user_id"])
            session_id = row["session_id"]
            spent = row["used_at"] is not None or row["generation"] != row["session_generation"]
            usable = row["revoked_at"] is None and not row["expired"] and row["user_status"] == U.ACTIVE
            if spent and row["in_grace"] and usable:
                log.info("refresh token of session %s presented again within the grace window: sibling issued",
                         session_id)
                await repo.spend_refresh_token(uow.conn, row["id"])
                await repo.touch_session(uow.conn, session_id)
                new_refresh = await self._new_refresh_token(uow, session_id, row["session_generation"])
            elif spent:
                reused = True
                if await repo.revoke_session(uow.conn, session_id, "reuse_detected"):
                    log.warning("refresh token reuse: session %s of user %s revoked", session_id, row["user_id"])
                    uow.emit(ev.SessionRevoked(user_id=row["user_id"], reason="reuse_detected",
                                               session_id=session_id))
            elif row["revoked_at"] is not None or row["expired"]:
                raise errors.RefreshTokenInvalid()
            elif row["user_status"] != U.ACTIVE:
                raise errors.RefreshTokenInvalid("the account is not active")
            else:
                await repo.spend_refresh_token(uow.conn, row["id"])
                generation = await repo.advance_session(uow.conn, session_id)
                new_refresh = await self._new_refresh_token(uow, session_id, generation)
            if not reused:
                user = await repo.get_user(uow.conn, row["user_id"])
                roles = await repo.roles_of(uow.conn, row["user_id"])
        # Outside the block: the revocation above must commit even though the caller gets an error.
        if reused:
            raise errors.RefreshTokenReused()
        assert user is not None
        access, ttl = await self.ring.mint_access_token(
            user_id=user["id"], email=user["email"], email_verified=user["email_verified_at"] is not None,
            roles=roles, session_id=session_id)
        return TokenPair(access, new_refresh, ttl, self.settings.identity_refresh_ttl_seconds)

    async def logout(self, refresh_token: str) -> None:
        """Ends the session the token belongs to. Unknown or already-ended sessions: nothing to do."""
        if not tokens.looks_like_token(refresh_token):
            return
        async with self.db.uow() as uow:
            session = await repo.session_of_refresh_token(uow.conn, tokens.hash_token(refresh_token))
            if session is None or session["revoked_at"] is not None:
                return
            context.act_as(session["user_id"])
            if await repo.revoke_session(uow.conn, session["id"], "logout"):
                uow.emit(ev.SessionRevoked(user_id=session["user_id"], reason="logout", session_id=session["id"]))

    # --- email verification ------------------------------------------------------------------------
    async def verify_email(self, token: str) -> dict[str, Any]:
        if not tokens.looks_like_token(token):
            raise errors.TokenInvalid()
        async with self.db.uow() as uow:
            row = await repo.one_time_token(uow.conn, tokens.hash_token(token), VERIFY, for_update=True)
            if row is None or row["status"] == U.DELETED:
                raise errors.TokenInvalid()
            if row["used_at"] is not None:
                raise errors.TokenInvalid("this verification link was already used (or replaced by a newer one)")
            if row["expired"]:
                raise errors.TokenExpired("this verification link has expired; ask for a new one")
            context.act_as(row["user_id"])
            await repo.use_one_time_token(uow.conn, row["id"])
            verified_at = await repo.mark_email_verified(uow.conn, row["user_id"])
            if verified_at is not None:
                uow.emit(ev.EmailVerified(user_id=row["user_id"], email=row["email"], name=row["name"],
                                          status=row["status"], verified_at=verified_at),
                         before={"email_verified_at": None}, after={"email_verified_at": verified_at.isoformat()})
            user = await repo.get_user(uow.conn, row["user_id"])
            assert user is not None
            return user_view(user, await repo.roles_of(uow.conn, row["user_id"]))

    async def resend_verification(self, user_id: uuid.UUID) -> bool:
        """A fresh link (older ones stop working). False when the address is already verified."""
        token = tokens.new_token()
        expires_at = utcnow() + timedelta(seconds=self.settings.identity_verification_ttl_seconds)
        async with self.db.uow() as uow:
            row = await repo.get_user(uow.conn, user_id, for_update=True)
            if row is None or row["status"] != U.ACTIVE:
                raise errors.UserNotFound()
            if row["email_verified_at"] is not None:
                return False
            await repo.retire_unused_tokens(uow.conn, user_id, VERIFY)
            await repo.insert_one_time_token(uow.conn, user_id=user_id, purpose=VERIFY,
                                             token_hash=tokens.hash_token(token), expires_at=expires_at)
            uow.emit(ev.EmailVerificationRequested(user_id=user_id, email=row["email"], name=row["name"],
                                                   token=token, expires_at=expires_at))
        return True

    # --- passwords ----------------------------------------------------------------------------------
    async def request_password_reset(self, email: str) -> None:
        """Always the same answer to the caller; only an active account gets a mail (rate-limited)."""
        email = U.clean_email(email)
        async with self.db.uow() as uow:
            row = await repo.get_user_by_email(uow.conn, email, for_update=True)
            if row is None or row["status"] != U.ACTIVE:
                return
            if not await self.throttle.allow_reset_mail(email):
                log.info("password reset mail for user %s suppressed (hourly limit)", row["id"])
                return
            context.act_as(row["id"])
            token = tokens.new_token()
            expires_at = utcnow() + timedelta(seconds=self.settings.identity_reset_ttl_seconds)
            await repo.retire_unused_tokens(uow.conn, row["id"], RESET)
            await repo.insert_one_time_token(uow.conn, user_id=row["id"], purpose=RESET,
                                             token_hash=tokens.hash_token(token), expires_at=expires_at)
            uow.emit(ev.PasswordResetRequested(user_id=row["id"], email=row["email"], name=row["name"],
                                               token=token, expires_at=expires_at))

    async def confirm_password_reset(self, token: str, password: str, *, ip: str | None) -> None:
        if not tokens.looks_like_token(token):
            raise errors.TokenInvalid()
        token_hash = tokens.hash_token(token)
        async with self.db.uow() as uow:
            row = await repo.one_time_token(uow.conn, token_hash, RESET)
        self._check_reset_token(row)
        assert row is not None
        self.check_password(password, email=row["email"], name=row["name"])
        password_hash = await self.passwords.hash(password)
        context.act_as(row["user_id"])
        async with self.db.uow() as uow:
            # Checked again under the row lock: two confirmations racing, only one wins.
            row = await repo.one_time_token(uow.conn, token_hash, RESET, for_update=True)
            self._check_reset_token(row)
            assert row is not None
            user_id = row["user_id"]
            await repo.use_one_time_token(uow.conn, row["id"])
            await repo.set_password(uow.conn, user_id, password_hash)
            # Whoever had the account's sessions (perhaps the reason for the reset) loses them.
            for sid in await repo.revoke_user_sessions(uow.conn, user_id, "password_reset"):
                uow.emit(ev.SessionRevoked(user_id=user_id, reason="password_reset", session_id=sid))
            uow.emit(ev.PasswordChanged(user_id=user_id, email=row["email"], name=row["name"], reason="reset"))
            # Following the link proves the mailbox, as a verification link would.
            verified_at = await repo.mark_email_verified(uow.conn, user_id)
            if verified_at is not None:
                uow.emit(ev.EmailVerified(user_id=user_id, email=row["email"], name=row["name"],
                                          status=row["status"], verified_at=verified_at))
        await self.throttle.clear_account(row["email"], ip)

    @staticmethod
    def _check_reset_token(row: dict[str, Any] | None) -> None:
        if row is None or row["status"] != U.ACTIVE:
            raise errors.TokenInvalid()
        if row["used_at"] is not None:
            raise errors.TokenInvalid("this reset link was already used (or replaced by a newer one)")
        if row["expired"]:
            raise errors.TokenExpired("this reset link has expired; ask for a new one")

    async def change_password(self, user_id: uuid.UUID, session_id: uuid.UUID | None, current: str,
                              new: str) -> None:
        async with self.db.uow() as uow:
            row = await repo.get_user(uow.conn, user_id)
        if row is None or not await self.passwords.verify(row["password_hash"], current):
            raise errors.InvalidCredentials("the current password is wrong")
        self.check_password(new, email=row["email"], name=row["name"])
        new_hash = await self.passwords.hash(new)
        async with self.db.uow() as uow:
            await repo.set_password(uow.conn, user_id, new_hash)
            # Other devices sign in again; this one keeps its session.
            for sid in await repo.revoke_user_sessions(uow.conn, user_id, "password_change", keep=session_id):
                uow.emit(ev.SessionRevoked(user_id=user_id, reason="password_change", session_id=sid))
            uow.emit(ev.PasswordChanged(user_id=user_id, email=row["email"], name=row["name"], reason="change"))

    # --- status -------------------------------------------------------------------------------------
    async def set_status(self, actor_id: uuid.UUID, user_id: uuid.UUID, target: str,
                         reason: str | None = None) -> dict[str, Any]:
        """Suspend, reactivate or delete. Leaving `active` ends every session at once; access tokens
        already issued die within their lifetime (identity itself refuses them immediately)."""
        if actor_id != user_id or target != U.DELETED:
            await self._require_admin(actor_id)
        if actor_id == user_id and target == U.SUSPENDED:
            raise errors.StatusConflict("you cannot suspend yourself")
        async with self.db.uow() as uow:
            row = await repo.get_user(uow.conn, user_id, for_update=True)
            if row is None or (row["status"] == U.DELETED and target != U.DELETED):
                raise errors.UserNotFound()
            current = row["status"]
            if current != target:
                if not U.can_move(current, target):
                    raise errors.StatusConflict(f"cannot move an account from {current} to {target}")
                await repo.set_status(uow.conn, user_id, target)
                if target != U.ACTIVE:
                    for sid in await repo.revoke_user_sessions(uow.conn, user_id, target):
                        uow.emit(ev.SessionRevoked(user_id=user_id, reason=target, session_id=sid))
                uow.emit(ev.UserStatusChanged(user_id=user_id, status=target, previous_status=current,
                                              email=row["email"], name=row["name"], reason=reason),
                         before={"status": current}, after={"status": target})
                row = {**row, "status": target}
            return user_view(row, await repo.roles_of(uow.conn, user_id))

    async def _require_admin(self, actor_id: uuid.UUID) -> None:
        async with self.db.uow() as uow:
            roles = await repo.roles_of(uow.conn, actor_id)
        if not any(c == R.PLATFORM_ADMIN for c, _ in roles):
            raise Forbidden("platform admins only")

    # --- roles --------------------------------------------------------------------------------------
    async def _authorize_role_change(self, uow: UnitOfWork, actor_id: uuid.UUID, user_id: uuid.UUID, code: str,
                                     store_id: uuid.UUID | None) -> dict[str, Any]:
        problem = R.scope_problem(code, store_id)
        if problem is not None:
            raise errors.InvalidField(*problem)
        # The actor's roles as stored now, not as in their token: a fresh store owner (granted by
        # catalog.store.created after their token was minted) may grant staff without signing in again.
        actor_roles = await repo.roles_of(uow.conn, actor_id)
        if not R.may_manage(actor_roles, code, store_id):
            if code == R.STORE_STAFF:
                raise Forbidden("only the store's owner (or a platform admin) manages its staff")
            raise Forbidden("only a platform admin may grant or revoke this role")
        target = await repo.get_user(uow.conn, user_id)
        if target is None or target["status"] == U.DELETED:
            raise errors.UserNotFound()
        return target

    async def _await_new_store(self, actor_id: uuid.UUID, code: str, store_id: uuid.UUID | None) -> None:
        """A store created a moment ago may not have reached identity yet (`catalog.store.created` is
        asynchronous). When the actor is not (yet) its owner and identity has never heard of the store,
        wait briefly for the event instead of refusing a legitimate owner. Holds no connection while
        waiting; an unknown store after the wait is refused as usual."""
        if code != R.STORE_STAFF or store_id is None or self.settings.identity_new_store_wait_seconds <= 0:
            return
        deadline = asyncio.get_running_loop().time() + self.settings.identity_new_store_wait_seconds
        while True:
            async with self.db.uow() as uow:
                roles = await repo.roles_of(uow.conn, actor_id)
                if R.may_manage(roles, code, store_id) or await repo.tenant_key_of(uow.conn, store_id) is not None:
                    return
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.2)

    async def grant_role(self, actor_id: uuid.UUID, user_id: uuid.UUID, code: str,
                         store_id: uuid.UUID | None) -> tuple[dict[str, Any], bool]:
        await self._await_new_store(actor_id, code, store_id)
        async with self.db.uow() as uow:
            await self._authorize_role_change(uow, actor_id, user_id, code, store_id)
            created = await repo.grant_role(uow.conn, user_id, code, store_id, actor_id)
            if created:
                tenant = await repo.tenant_key_of(uow.conn, store_id) if store_id else None
                uow.emit(ev.RoleGranted(user_id=user_id, code=code, store_id=store_id, granted_by=actor_id),
                         store_id=store_id, tenant_key=tenant,
                         after={"code": code, "store_id": str(store_id) if store_id else None})
        return {"user_id": user_id, "code": code, "store_id": store_id}, created

    async def revoke_role(self, actor_id: uuid.UUID, user_id: uuid.UUID, code: str,
                          store_id: uuid.UUID | None) -> bool:
        await self._await_new_store(actor_id, code, store_id)
        async with self.db.uow() as uow:
            await self._authorize_role_change(uow, actor_id, user_id, code, store_id)
            removed = await repo.revoke_role(uow.conn, user_id, code, store_id)
            if removed:
                tenant = await repo.tenant_key_of(uow.conn, store_id) if store_id else None
                uow.emit(ev.RoleRevoked(user_id=user_id, code=code, store_id=store_id, revoked_by=actor_id),
                         store_id=store_id, tenant_key=tenant,
                         before={"code": code, "store_id": str(store_id) if store_id else None})
        return removed

    async def roles(self, actor_id: uuid.UUID, user_id: uuid.UUID) -> list[dict[str, Any]]:
        if actor_id != user_id:
            await self._require_admin(actor_id)
        async with self.db.uow() as uow:
            if await repo.get_user(uow.conn, user_id) is None:
                raise errors.UserNotFound()
            return [{"code": c, "store_id": s} for c, s in await repo.roles_of(uow.conn, user_id)]

    # --- command line -------------------------------------------------------------------------------
    async def ensure_platform_admin(self, email: str, password: str, name: str | None = None) -> str:
        """Create the account as a verified platform admin, or promote an existing one. Idempotent."""
        email = U.clean_email(email)
        if not U.valid_email(email):
            raise errors.InvalidField("email", "not an email address")
        async with self.db.uow() as uow:
            existing = await repo.get_user_by_email(uow.conn, email)
        if existing is None:
            name = (name or "").strip() or email.split("@", 1)[0]
            self.check_password(password, email=email, name=name)
            password_hash = await self.passwords.hash(password)
            user_id = uuid.uuid4()
            async with self.db.uow() as uow:
                row = await repo.insert_user(uow.conn, user_id=user_id, email=email, password_hash=password_hash,
                                             name=name, verified_at=utcnow())
                if row is None:
                    raise errors.EmailTaken(f"{email} was registered meanwhile; run the command again")
                uow.emit(ev.UserRegistered(user_id=user_id, email=email, name=name, status=U.ACTIVE,
                                           email_verified=True),
                         after={"id": str(user_id), "email": email, "name": name, "status": U.ACTIVE})
                for code in (R.CUSTOMER, R.PLATFORM_ADMIN):
                    await repo.grant_role(uow.conn, user_id, code, None, None)
                    uow.emit(ev.RoleGranted(user_id=user_id, code=code), after={"code": code, "store_id": None})
            return f"created platform admin {email} (user {user_id})"
        user_id = existing["id"]
        async with self.db.uow() as uow:
            if not await repo.grant_role(uow.conn, user_id, R.PLATFORM_ADMIN, None, None):
                return f"{email} (user {user_id}) is already a platform admin; nothing changed"
            uow.emit(ev.RoleGranted(user_id=user_id, code=R.PLATFORM_ADMIN),
                     after={"code": R.PLATFORM_ADMIN, "store_id": None})
        note = "" if existing["status"] == U.ACTIVE else f" (note: the account is {existing['status']})"
        return f"promoted existing user {email} (user {user_id}) to platform admin; password unchanged{note}"


async def on_store_created(env: Envelope, uow: UnitOfWork) -> None:
    """`catalog.store.created`: its creator owns it. Runs inside the consumer's unit of work (the
    inbox row, the grant and the `identity.role.granted` event commit together)."""
    data = env.data
    store_id = uuid.UUID(str(data["store_id"]))
    owner_id = uuid.UUID(str(data["owner_user_id"]))
    tenant_key = str(data.get("tenant_key") or env.tenant_key or "")
    await repo.remember_store(uow.conn, store_id, tenant_key, owner_id)
    if await repo.get_user(uow.conn, owner_id) is None:
        log.warning("store %s names owner %s, whom identity does not know; no role granted", store_id, owner_id)
        return
    if await repo.grant_role(uow.conn, owner_id, R.STORE_OWNER, store_id, None):
        uow.emit(ev.RoleGranted(user_id=owner_id, code=R.STORE_OWNER, store_id=store_id),
                 store_id=store_id, tenant_key=tenant_key or None,
                 after={"code": R.STORE_OWNER, "store_id": str(store_id)})
