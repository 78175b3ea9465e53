"""The channels behind one small interface: email over SMTP, SMS and push over signed HTTP.

Every transport raises `TransientFailure` (retry later) or `PermanentFailure` (stop) and
nothing else, so the sender loop needs no knowledge of SMTP codes or HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import hashlib
import hmac
import json
import logging
import random
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Protocol

import aiosmtplib
import httpx

from ..domain.failures import (
    PermanentFailure,
    TransientFailure,
    http_status_is_permanent,
    smtp_code_is_permanent,
)
from ..domain.model import Channel, is_valid_email
from ..rendering import Rendered

log = logging.getLogger("dropslot.notifications.channels")


class Transport(Protocol):
    channel: Channel

    async def send(self, *, notification_id: uuid.UUID, template: str, to: str, message: Rendered) -> None:
        """Deliver one rendered message, or raise TransientFailure / PermanentFailure."""

    async def close(self) -> None: ...


# --- email -----------------------------------------------------------------------------------------
class _HeaderClasses(HeaderRegistry):
    """The stdlib registry builds a new class (`type(...)`) for every header it parses or
    folds, about 25 per message here; the same class per header name is built once instead."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def map_to_type(self, name: str, cls: type[BaseHeader]) -> None:
        super().map_to_type(name, cls)
        self._classes.clear()

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = super().__getitem__(name)
            if len(self._classes) < 256:  # header names are ours; bounded all the same
                self._classes[key] = cls
        return cls


# email.policy.default in every other respect, so the bytes on the wire are the same.
EMAIL_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())


def _boundary(*texts: str) -> str:
    """A MIME boundary in the stdlib generator's own form, found in none of the texts. (The other
    parts cannot contain it: base64 has no `-`, quoted-printable writes `=` as `=3D`.)"""
    while True:
        boundary = "=" * 15 + f"{random.randrange(sys.maxsize):019d}=="
        if not any(boundary in t for t in texts):
            return boundary


def build_email(*, sender: str, to: str, message: Rendered, notification_id: uuid.UUID, template: str) -> EmailMessage:
    msg = EmailMessage(policy=EMAIL_POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = message.subject or ""
    msg["Date"] = format_datetime(datetime.now(UTC))
    # Stable per notification: a retried send carries the same Message-ID, so a receiving side
    # that saw the first attempt after all can tell it is the same message.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "dropslot.local"
    msg["Message-ID"] = f"<{notification_id}@{domain}>"
    msg["X-DropSlot-Notification-Id"] = str(notification_id)
    msg["X-DropSlot-Template"] = template
    msg.set_content(message.text)
    if message.html is not None:
        # Boundaries chosen here: left to the generator, each costs a regex compiled for that one
        # message (which also churns the `re` module's shared pattern cache).
        alternative = _boundary(message.text, message.html)
        msg.make_alternative(boundary=alternative)
        msg.add_alternative(message.html, subtype="html")
        if message.images:
            html_part = msg.get_body(preferencelist=("html",))
            assert isinstance(html_part, EmailMessage)
            html_part.make_related(boundary=_boundary(message.text, message.html, alternative))
            for img in message.images:
                html_part.add_related(img.data, maintype="image", subtype=img.subtype, cid=f"<{img.cid}>",
                                      filename=img.filename, disposition="inline")
    return msg


SmtpTarget = Callable[[], tuple[str, int]]


class _Connection:
    __slots__ = ("client", "target", "idle_since", "sent")

    def __init__(self, client: aiosmtplib.SMTP, target: tuple[str, int]):
        self.client = client
        self.target = target
        self.idle_since = 0.0
        self.sent = 0


def _connection_gone(exc: BaseException) -> bool:
    """The error says the connection itself is gone (the server closed it, or is closing it:
    421), not that the server refused this message."""
    if isinstance(exc, ConnectionError):  # includes aiosmtplib.SMTPServerDisconnected
        return True
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return any(r.code == 421 for r in exc.recipients)
    return False


class SmtpTransport:
    """Email with aiosmtplib over a few kept-open connections (at most `pool_size`, one message
    at a time on each). A connection is reused for the next message; one idle for
    `idle_seconds` is closed with QUIT, and so is one that has carried
    `messages_per_connection` (servers limit that too), and every idle one on `close()`.

    A reused connection may have been closed by the server meanwhile. One seen closed is simply
    replaced; one whose closing shows only when the message is sent on it (disconnected, or a
    421 reply) costs nothing either: the message is sent once more on a fresh connection, and
    only what that attempt says counts (should the server have taken the message before
    dropping the line, the copy carries the same Message-ID, as any retry does). Failures are
    classified as always; a failed connection is discarded, never reused. TLS,
    STARTTLS and login happen on connect, exactly as `aiosmtplib.send` does them. The local
    host name for EHLO is looked up once (aiosmtplib would call `socket.getfqdn()` per
    connection) unless given."""

    channel = Channel.EMAIL

    def __init__(
        self, *, target: SmtpTarget, sender: str, username: str | None = None, password: str | None = None,
        start_tls: bool | None = None, use_tls: bool = False, validate_certs: bool = True, timeout: float = 15.0,
        pool_size: int = 10, idle_seconds: float = 30.0, messages_per_connection: int = 100,
        local_hostname: str | None = None,
    ):
        self.target = target
        self.sender = sender
        self.username = username
        self.password = password
        self.start_tls = start_tls
        self.use_tls = use_tls
        self.validate_certs = validate_certs
        self.timeout = timeout
        self.pool_size = max(1, pool_size)
        self.idle_seconds = idle_seconds
        self.messages_per_connection = max(1, messages_per_connection)
        self.local_hostname = local_hostname
        self.connections_opened = 0  # connection attempts, for tests and benchmarks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(self.pool_size)
        self._hostname_lock = asyncio.Lock()
        self._idle: list[_Connection] = []  # most recently used last
        self._reaper: asyncio.TimerHandle | None = None
        self._quitting: set[asyncio.Task[None]] = set()

    async def send(self, *, notification_id: uuid.UUID, template: str, to: str, message: Rendered) -> None:
        if not is_valid_email(to):
            raise PermanentFailure(f"invalid email address {to!r}")
        msg = build_email(sender=self.sender, to=to, message=message, notification_id=notification_id,
                          template=template)
        host, port = self.target()
        try:
            await self._send(msg, (host, port))
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            if codes and all(smtp_code_is_permanent(c) for c in codes):
                raise PermanentFailure(f"SMTP refused the recipient: {detail}") from exc
            raise TransientFailure(f"SMTP deferred the recipient: {detail}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            reason = f"SMTP {exc.code} {exc.message}"
            if smtp_code_is_permanent(exc.code):
                raise PermanentFailure(reason) from exc
            raise TransientFailure(reason) from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            raise TransientFailure(f"SMTP {host}:{port} unavailable: {type(exc).__name__}: {exc}") from exc

    async def _send(self, msg: EmailMessage, target: tuple[str, int]) -> None:
        self._bind_loop()
        async with self._slots:
            conn = self._take_idle(target)
            if conn is not None:
                try:
                    await conn.client.send_message(msg)
                except Exception as exc:
                    self._discard(conn)
                    if not _connection_gone(exc):
                        raise
                    log.info("SMTP connection to %s:%d was gone (%s: %s); sending again on a new one",
                             *target, type(exc).__name__, exc)
                except BaseException:
                    self._discard(conn)
                    raise
                else:
                    self._put_idle(conn)
                    return
            conn = await self._connect(target)
            try:
                await conn.client.send_message(msg)
            except BaseException:
                self._discard(conn)
                raise
            self._put_idle(conn)

    async def _connect(self, target: tuple[str, int]) -> _Connection:
        if self.local_hostname is None:
            async with self._hostname_lock:
                if self.local_hostname is None:
                    self.local_hostname = await asyncio.to_thread(socket.getfqdn)
        host, port = target
        client = aiosmtplib.SMTP(
            hostname=host, port=port, username=self.username, password=self.password,
            start_tls=self.start_tls, use_tls=self.use_tls, validate_certs=self.validate_certs,
            timeout=self.timeout, local_hostname=self.local_hostname,
        )
        self.connections_opened += 1
        await client.connect()  # closes itself when it fails
        return _Connection(client, target)

    # --- the idle connections --------------------------------------------------------------------
    def _bind_loop(self) -> None:
        """Connections, timers and the semaphore belong to one event loop; should the transport
        be used from another one (tests), start afresh there."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        for conn in self._idle:
            with contextlib.suppress(Exception):
                conn.client.close()
        self._idle.clear()
        self._reaper = None
        self._quitting.clear()
        self._slots = asyncio.Semaphore(self.pool_size)
        self._hostname_lock = asyncio.Lock()
        self._loop = loop

    def _take_idle(self, target: tuple[str, int]) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.client.is_connected and conn.target == target:
                return conn
            self._discard(conn)  # closed by the server meanwhile, or the target moved
        return None

    def _put_idle(self, conn: _Connection) -> None:
        """After a message went out on `conn`."""
        conn.sent += 1
        if not conn.client.is_connected:
            self._discard(conn)
            return
        if conn.sent >= self.messages_per_connection:
            self._quit(conn)
            return
        assert self._loop is not None
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._reaper is None:
            self._reaper = self._loop.call_later(self.idle_seconds, self._reap)

    def _reap(self) -> None:
        assert self._loop is not None
        self._reaper = None
        cutoff = self._loop.time() - self.idle_seconds
        expired = [c for c in self._idle if c.idle_since <= cutoff]
        self._idle = [c for c in self._idle if c.idle_since > cutoff]
        for conn in expired:
            self._quit(conn)
        if self._idle:
            self._reaper = self._loop.call_at(self._idle[0].idle_since + self.idle_seconds, self._reap)

    def _quit(self, conn: _Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._quit_politely(conn.client))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def _quit_politely(self, client: aiosmtplib.SMTP) -> None:
        try:
            if client.is_connected:
                await client.quit(timeout=min(self.timeout, 5.0))
        except Exception as exc:  # it is going away either way
            log.debug("SMTP QUIT failed: %r", exc)
        finally:
            client.close()

    @staticmethod
    def _discard(conn: _Connection) -> None:
        conn.client.close()

    async def close(self) -> None:
        if self._loop is not asyncio.get_running_loop():
            self._bind_loop()  # nothing of ours lives in this loop: just forget the rest
            return
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._quit(conn)
        if self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)


# --- SMS and push over a signed-HTTP provider -----------------------------------------------------------
SIGNATURE_HEADER = "X-DropSlot-Signature"
TIMESTAMP_HEADER = "X-DropSlot-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`; the timestamp in the signed text
    lets a receiver refuse replays of old requests."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class SignedHttpTransport:
    """A generic provider: `POST <url>` with a JSON body

        {"id", "channel", "template", "to", "title", "text"}

    and headers `X-DropSlot-Timestamp` (unix seconds), `X-DropSlot-Signature` (see `sign`) and
    `Idempotency-Key` (the notification id, the same on every retry). Any 2xx is delivered."""

    def __init__(self, channel: Channel, *, url: str, secret: str, timeout: float = 10.0,
                 client: httpx.AsyncClient | None = None):
        self.channel = channel
        self.url = url
        self.secret = secret
        self.client = client or httpx.AsyncClient(timeout=timeout)

    async def send(self, *, notification_id: uuid.UUID, template: str, to: str, message: Rendered) -> None:
        body = json.dumps({
            "id": str(notification_id), "channel": str(self.channel), "template": template, "to": to,
            "title": message.subject, "text": message.text,
        }, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(self.secret, ts, body), "Idempotency-Key": str(notification_id)}
        try:
            resp = await self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransientFailure(f"{self.channel} provider unavailable: {type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return
        reason = f"{self.channel} provider answered {resp.status_code}: {resp.text[:300]}"
        if http_status_is_permanent(resp.status_code):
            raise PermanentFailure(reason)
        raise TransientFailure(reason)

    async def close(self) -> None:
        await self.client.aclose()

