"""The dev SMTP catcher: an aiosmtpd server inside the notifications process that keeps every
message as an .eml file (`.dev/mail/<timestamp>-<id>.eml`), so a fresh clone sees its mail
without configuring anything. Never used when a real SMTP host is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from ..rendering import InlineImage, html_with_inline_images

log = logging.getLogger("dropslot.notifications.catcher")


class Mailbox:
    """The folder of caught messages (shared by every process that writes into it).

    It holds about `keep` messages: pruning (listing and sorting the whole folder) happens
    only once this process's count says the folder has grown `margin` past `keep` (a tenth of
    `keep`, at most 50), not after every message. Other processes writing into the folder
    prune on their own count, so with several of them it may briefly hold a few margins more."""

    def __init__(self, directory: str | Path, keep: int = 500, margin: int | None = None):
        self.dir = Path(directory)
        self.keep = keep
        self.margin = max(1, margin if margin is not None else min(50, keep // 10))
        self._lock = threading.Lock()  # stores run in worker threads
        self._count: int | None = None  # files in the folder as far as we know; None: not looked yet
        self._made_dir = False

    def store(self, data: bytes) -> str:
        if not self._made_dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._made_dir = True
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        try:
            tmp.write_bytes(data)
        except FileNotFoundError:  # the folder was removed under us
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            with self._lock:
                self._count = None
        tmp.rename(self.dir / f"{name}.eml")  # readers never see a half-written file
        with self._lock:
            if self._count is not None and self._count + 1 < self.keep + self.margin:
                self._count += 1
            else:
                self._count = self._prune()
        return name

    def _prune(self) -> int:
        """Remove the oldest files beyond `keep`; returns how many are left."""
        files = sorted(self.dir.glob("*.eml"))
        excess = max(0, len(files) - self.keep)
        for old in files[:excess]:
            with contextlib.suppress(OSError):
                old.unlink()
        return len(files) - excess

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        if not self.dir.is_dir():
            return []
        out = []
        for path in sorted(self.dir.glob("*.eml"), reverse=True)[:limit]:
            with contextlib.suppress(OSError):
                msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
                out.append(_summary(path.stem, msg))
        return out

    def read(self, message_id: str) -> dict[str, Any] | None:
        path = self._path(message_id)
        if path is None:
            return None
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        images = []
        for part in msg.walk():
            data = part.get_payload(decode=True) if part.get_content_maintype() == "image" else None
            if isinstance(data, bytes):
                images.append(InlineImage(str(part["Content-ID"] or "").strip("<>"), data, part.get_content_subtype()))
        html_text = html.get_content() if html is not None else None
        return {
            **_summary(message_id, msg),
            "text": text.get_content() if text is not None else None,
            "html": html_with_inline_images(html_text, images) if html_text else None,
            "images": [{"cid": i.cid, "type": f"image/{i.subtype}", "bytes": len(i.data)} for i in images],
        }

    def _path(self, message_id: str) -> Path | None:
        if not message_id.replace("-", "").isalnum():  # no path tricks: names are ours
            return None
        path = self.dir / f"{message_id}.eml"
        return path if path.is_file() else None


def _summary(message_id: str, msg: email.message.Message) -> dict[str, Any]:
    return {
        "id": message_id,
        "from": str(msg.get("From", "")),
        "to": str(msg.get("To", "")),
        "subject": str(msg.get("Subject", "")),
        "date": str(msg.get("Date", "")),
        "notification_id": str(msg.get("X-DropSlot-Notification-Id", "")) or None,
        "template": str(msg.get("X-DropSlot-Template", "")) or None,
    }


class _Handler:
    def __init__(self, mailbox: Mailbox):
        self.mailbox = mailbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode()
        name = await asyncio.to_thread(self.mailbox.store, data)
        log.info("dev mail caught: %s (to %s)", name, ", ".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class SmtpCatcher:
    def __init__(self, mailbox: Mailbox, host: str = "127.0.0.1", port: int = 1025):
        self.mailbox = mailbox
        self.host = host
        self.wanted_port = port
        self.port = port
        self.connections = 0  # SMTP sessions accepted so far
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _Handler(self.mailbox)

        def factory() -> SMTP:
            self.connections += 1
            return SMTP(handler, hostname="dropslot-dev-catcher", data_size_limit=10 * 1024 * 1024)

        try:
            self._server = await loop.create_server(factory, self.host, self.wanted_port)
        except OSError:
            # Another system (or replica) on this machine has the port: take a free one rather
            # than send our mail to someone else's catcher.
            self._server = await loop.create_server(factory, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        log.warning("dev SMTP catcher on %s:%d writing to %s (no SMTP host configured)",
                    self.host, self.port, self.mailbox.dir.resolve())

    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
