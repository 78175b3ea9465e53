"""Notifications settings (`DROPSLOT_NOTIFICATIONS_*`).

Email transport, in order of precedence:
- `DROPSLOT_NOTIFICATIONS_SMTP_HOST` set (production, tests): mail goes to that SMTP server
  with `..._SMTP_PORT/USERNAME/PASSWORD/STARTTLS/USE_TLS/FROM`.
- otherwise (a fresh clone running `make dev`): the process starts its own SMTP catcher
  (aiosmtpd) on 127.0.0.1:`..._SMTP_CATCHER_PORT` (1025; a free port when that one is taken, so
  several systems on one machine never collide) and sends there; every message lands in
  `..._MAILBOX_DIR` (`.dev/mail/<timestamp>-<id>.eml`) and is listed at
  `GET /api/v1/notifications/dev/mailbox`. `..._SMTP_CATCHER=true|false` forces it on or off.

SMS and push go through a generic signed-HTTP provider each (`..._SMS_URL/_SMS_SECRET`,
`..._PUSH_URL/_PUSH_SECRET`); a channel without a URL is not offered (no rows are written for it).
"""

from __future__ import annotations

from dropslot_kit.settings import KitSettings
from pydantic import SecretStr


class Settings(KitSettings):
    service: str = "notifications"

    # --- email over SMTP ---------------------------------------------------------------------
    notifications_smtp_host: str | None = None
    notifications_smtp_port: int = 25
    notifications_smtp_username: str | None = None
    notifications_smtp_password: SecretStr | None = None
    # None: STARTTLS when the server offers it (aiosmtplib's default); True: required; False: never.
    notifications_smtp_starttls: bool | None = None
    # Implicit TLS from the first byte (port 465 style).
    notifications_smtp_use_tls: bool = False
    notifications_smtp_validate_certs: bool = True
    notifications_smtp_timeout_seconds: float = 15.0
    # Connections are kept open and reused (up to notifications_send_concurrency of them); one
    # unused this long is closed.
    notifications_smtp_idle_seconds: float = 30.0
    notifications_smtp_from: str = "DropSlot <no-reply@dropslot.local>"

    # --- dev SMTP catcher ----------------------------------------------------------------------
    # None = automatic: on exactly when no SMTP host is configured.
    notifications_smtp_catcher: bool | None = None
    notifications_smtp_catcher_port: int = 1025
    notifications_mailbox_dir: str = ".dev/mail"
    # The catcher keeps at most this many .eml files (the oldest are removed).
    notifications_mailbox_keep: int = 500

    # --- SMS and push through signed-HTTP providers ------------------------------------------
    notifications_sms_url: str | None = None
    notifications_sms_secret: SecretStr | None = None
    notifications_push_url: str | None = None
    notifications_push_secret: SecretStr | None = None
    notifications_http_timeout_seconds: float = 10.0

    # --- templates -------------------------------------------------------------------------------
    # A directory whose files override the packaged templates (same relative paths).
    notifications_templates_dir: str | None = None
    notifications_verify_email_path: str = "/verify-email"
    notifications_reset_password_path: str = "/reset-password"

    # --- the sender loop ---------------------------------------------------------------------
    notifications_send_batch: int = 50
    notifications_send_concurrency: int = 10
    notifications_poll_seconds: float = 1.0
    # A claimed row is invisible to other replicas this long (longer than any one send).
    notifications_lease_seconds: float = 120.0
    notifications_retry_base_seconds: float = 5.0
    notifications_retry_max_seconds: float = 900.0
    notifications_max_attempts: int = 12
    # How long an email waits for its recipient's contact (identity events may lag booking's).
    notifications_contact_wait_seconds: float = 900.0
    # How long a reservation message (confirmed, expired, cancelled) whose drop is not in the local
    # copy yet waits for catalog's event (pickup branch, store, time zone), counted from when it
    # was written; re-checked at each retry. Then it goes out without them (and a warning says so).
    notifications_drop_wait_seconds: float = 30.0

    @property
    def smtp_catcher_enabled(self) -> bool:
        if self.notifications_smtp_catcher is not None:
            return self.notifications_smtp_catcher
        return self.notifications_smtp_host is None
