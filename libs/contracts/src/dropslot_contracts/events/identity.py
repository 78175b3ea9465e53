from __future__ import annotations

import uuid
from datetime import datetime

from ..envelope import Event
from ..registry import register


@register
class UserRegistered(Event):
    TYPE = "identity.user.registered"
    user_id: uuid.UUID
    email: str
    name: str
    status: str = "active"
    # Single-use verification token for the welcome mail; notifications builds the link.
    verification_token: str | None = None
    verification_expires_at: datetime | None = None
    # True when the account starts verified (a platform admin created from the command line).
    email_verified: bool = False


@register
class EmailVerificationRequested(Event):
    TYPE = "identity.email_verification.requested"
    user_id: uuid.UUID
    email: str
    name: str
    token: str
    expires_at: datetime


@register
class EmailVerified(Event):
    TYPE = "identity.user.email_verified"
    user_id: uuid.UUID
    email: str
    # Added so a contacts copy (notifications) can be kept from this event alone.
    name: str | None = None
    status: str | None = None
    verified_at: datetime | None = None


@register
class PasswordResetRequested(Event):
    TYPE = "identity.password_reset.requested"
    user_id: uuid.UUID
    email: str
    name: str
    token: str
    expires_at: datetime


@register
class PasswordChanged(Event):
    TYPE = "identity.user.password_changed"
    user_id: uuid.UUID
    # Where the "your password was changed" notice goes, and how it happened.
    email: str | None = None
    name: str | None = None
    reason: str | None = None  # reset | change


@register
class UserStatusChanged(Event):
    TYPE = "identity.user.status_changed"
    user_id: uuid.UUID
    status: str  # active | suspended | deleted
    previous_status: str
    email: str | None = None
    name: str | None = None
    reason: str | None = None


@register
class UserUpdated(Event):
    TYPE = "identity.user.updated"
    user_id: uuid.UUID
    email: str
    name: str
    status: str
    email_verified: bool = False


@register
class RoleGranted(Event):
    TYPE = "identity.role.granted"
    user_id: uuid.UUID
    code: str
    store_id: uuid.UUID | None = None
    granted_by: uuid.UUID | None = None


@register
class RoleRevoked(Event):
    TYPE = "identity.role.revoked"
    user_id: uuid.UUID
    code: str
    store_id: uuid.UUID | None = None
    revoked_by: uuid.UUID | None = None


@register
class UserSignedIn(Event):
    TYPE = "identity.session.created"
    user_id: uuid.UUID
    # The refresh-token family; access tokens carry it as `sid`.
    session_id: uuid.UUID | None = None


@register
class SessionRevoked(Event):
    TYPE = "identity.session.revoked"
    user_id: uuid.UUID
    reason: str  # logout | reuse_detected | suspended | deleted | password_reset | password_change
    session_id: uuid.UUID | None = None
