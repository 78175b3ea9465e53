"""Identity's problem types (the stable `type` slugs clients see; API.md and the module docstring)."""

from __future__ import annotations

from dropslot_kit.errors import Conflict, Forbidden, NotFound, Problem, RateLimited, Unauthorized


class EmailTaken(Conflict):
    slug, title = "email-taken", "An account with this email already exists"


class WeakPassword(Problem):
    status, slug, title = 422, "weak-password", "The password is too weak"

    def __init__(self, reasons: list[str], field: str = "password"):
        super().__init__(
            f"The password {'; it '.join(reasons)}.", field=field,
            errors=[{"name": field, "reason": r} for r in reasons],
        )


class InvalidField(Problem):
    """A field that is well-formed JSON but not acceptable (same shape as pydantic's 422)."""

    status, slug, title = 422, "validation-error", "Request validation failed"

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}", errors=[{"name": field, "reason": reason}])


class InvalidCredentials(Unauthorized):
    slug, title = "invalid-credentials", "Email or password is wrong"


class AccountSuspended(Forbidden):
    slug, title = "account-suspended", "This account is suspended"


class TokenInvalid(Problem):
    status, slug, title = 400, "token-invalid", "The token is invalid or has already been used"


class TokenExpired(Problem):
    status, slug, title = 400, "token-expired", "The token has expired"


class RefreshTokenInvalid(Unauthorized):
    slug, title = "refresh-token-invalid", "The refresh token is invalid, expired or revoked"


class RefreshTokenReused(Unauthorized):
    slug, title = "refresh-token-reused", "The refresh token was already used; the session is revoked"


class SignInThrottled(RateLimited):
    title = "Too many failed sign-ins"

    def __init__(self, retry_after: int):
        super().__init__(f"Too many failed sign-ins; try again in {retry_after}s.",
                         headers={"Retry-After": str(retry_after)}, retry_after=retry_after)


class UserNotFound(NotFound):
    title = "No such user"


class StatusConflict(Conflict):
    slug, title = "invalid-status-change", "The account cannot move to that status"


__all__ = [
    "AccountSuspended", "EmailTaken", "Forbidden", "InvalidCredentials", "InvalidField", "RefreshTokenInvalid",
    "RefreshTokenReused", "SignInThrottled", "StatusConflict", "TokenExpired", "TokenInvalid", "UserNotFound",
    "WeakPassword",
]
