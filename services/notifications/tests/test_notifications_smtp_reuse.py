"""The email transport keeps its SMTP connections open and reuses them, against real SMTP
servers (the dev catcher, and aiosmtpd servers that misbehave on purpose): a burst needs a
handful of connections, not one per message; a connection the server closed or drops is
replaced without losing or doubling a message; failures are classified as before; idle
connections are closed. And the catcher's folder stays near `keep` without listing it on every
message."""

from __future__ import annotations

import asyncio
import email.policy
import random
import re
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from aiosmtplib.email import flatten_message
from dropslot_kit.testing import eventually
from dropslot_notifications.adapters import channels
from dropslot_notifications.adapters.catcher import Mailbox, SmtpCatcher
from dropslot_notifications.adapters.channels import SmtpTransport, build_email
from dropslot_notifications.domain import messages as m
from dropslot_notifications.domain.failures import PermanentFailure, TransientFailure
from dropslot_notifications.domain.model import Channel
from dropslot_notifications.rendering import InlineImage, Rendered, Renderer, qr_png

SENDER = "DropSlot <no-reply@dropslot.test>"


def rendered(i: int = 0) -> Rendered:
    return Rendered(Channel.EMAIL, f"Hello {i}", f"Message number {i}\n", f"<p>Message number {i}</p>")


async def send(transport: SmtpTransport, to: str, i: int = 0) -> uuid.UUID:
    nid = uuid.uuid4()
    await transport.send(notification_id=nid, template="password_reset", to=to, message=rendered(i))
    return nid


# --- an SMTP server that can misbehave ---------------------------------------------------------------
class Server:
    """aiosmtpd in the test's own loop. `after_message`: close the connection right after
    accepting a message; `on_reuse`: what to do when a second MAIL arrives on one connection
    ("drop": close it without a reply, "421": say so and close it)."""

    def __init__(self, *, after_message: bool = False, on_reuse: str | None = None):
        self.after_message = after_message
        self.on_reuse = on_reuse
        self.ids: list[str] = []  # X-DropSlot-Notification-Id of every accepted message
        self.opened = 0
        self.closed = 0
        self.helo_names: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[SMTP] = set()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        self.helo_names.append(hostname)
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,  # noqa: N802
                          options: list[str]) -> str:
        delivered = getattr(session, "delivered", 0)
        if delivered and self.on_reuse == "drop":
            server.transport.close()
            return "250 OK"  # never reaches the client
        if delivered and self.on_reuse == "421":
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.4.2 idle too long, closing"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,  # noqa: N802
                          options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        text = (envelope.original_content or b"").decode()
        header = next(line for line in text.splitlines() if line.startswith("X-DropSlot-Notification-Id:"))
        self.ids.append(header.split(":", 1)[1].strip())
        session.delivered = getattr(session, "delivered", 0) + 1  # type: ignore[attr-defined]
        if self.after_message:
            asyncio.get_running_loop().call_soon(server.transport.close)
        return "250 OK"

    async def start(self) -> None:
        outer = self

        class Counting(SMTP):
            def connection_made(self, transport: Any) -> None:
                outer.opened += 1
                outer._sessions.add(self)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                outer.closed += 1
                outer._sessions.discard(self)
                super().connection_lost(error)

        self._server = await asyncio.get_running_loop().create_server(
            lambda: Counting(self, hostname="test-smtp"), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection: the server is gone."""
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            await self._server.wait_closed()
            self._server = None


@pytest.fixture
async def server_factory() -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def make(**kwargs: Any) -> Server:
        server = Server(**kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def transport_for(port: int, **kwargs: Any) -> SmtpTransport:
    return SmtpTransport(target=lambda: ("127.0.0.1", port), sender=SENDER, start_tls=False, **kwargs)


async def eventually_true(check: Any, within: float = 5.0) -> None:
    async def holds() -> bool:
        return bool(check())

    await eventually(holds, timeout=within, interval=0.02)


# --- reuse ---------------------------------------------------------------------------------------------
async def test_a_burst_through_one_transport_needs_a_few_connections_not_one_per_message(tmp_path: Path) -> None:
    catcher = SmtpCatcher(Mailbox(tmp_path / "mail", keep=1000), port=0)
    await catcher.start()
    transport = SmtpTransport(target=catcher.address, sender=SENDER, start_tls=False, pool_size=4,
                              messages_per_connection=1000)
    try:
        sent = await asyncio.gather(*(send(transport, f"c{i}@example.com", i) for i in range(200)))
        # ... and a quiet moment later the same connections carry on
        await asyncio.sleep(0.1)
        sent += [await send(transport, f"late{i}@example.com", i) for i in range(5)]
    finally:
        await transport.close()
        await catcher.stop()
    caught = {m["notification_id"] for m in catcher.mailbox.list(limit=1000)}
    assert caught == {str(n) for n in sent}  # every message, once
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 205
    assert catcher.connections <= 4, f"{catcher.connections} SMTP connections for 205 messages"
    assert transport.connections_opened == catcher.connections


async def test_a_connection_carries_at_most_messages_per_connection(server_factory) -> None:
    server = await server_factory()
    transport = transport_for(server.port, pool_size=1, messages_per_connection=3)
    try:
        sent = [await send(transport, f"c{i}@example.com", i) for i in range(7)]
    finally:
        await transport.close()
    assert server.ids == [str(n) for n in sent]
    assert server.opened == 3
    await eventually_true(lambda: server.closed == 3)


async def test_confirmations_with_their_qr_go_out_over_one_connection(server_factory) -> None:
    server = await server_factory()
    transport = transport_for(server.port, pool_size=1)
    renderer = Renderer()
    sent = []
    try:
        for i in range(3):
            snap = {"reservation_id": str(uuid.uuid4()), "slot_id": str(uuid.uuid4()), "drop_id": str(uuid.uuid4()),
                    "store_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "state": "CONFIRMED",
                    "slot_start": "2026-11-24T14:00:00Z",
                    "slot_end": "2026-11-24T14:30:00Z", "amount_cents": 2500, "currency": "EUR",
                    "drop_name": "Drop", "product_name": "Shoe", "checkin_token": f"ck.{i}"}
            intent = m.reservation_intent("reservation_confirmed", snap, m.DropInfo("Drop", "Shoe", "Store"),
                                          "http://x", dedupe=None)
            message = renderer.render("reservation_confirmed", Channel.EMAIL,
                                      {**intent.payload, "user": {"name": "A", "email": "a@example.com"},
                                       "base_url": "http://x", "notification_id": "n"})
            assert message.images
            sent.append(uuid.uuid4())
            await transport.send(notification_id=sent[-1], template="reservation_confirmed",
                                 to="a@example.com", message=message)
    finally:
        await transport.close()
    assert server.ids == [str(n) for n in sent] and server.opened == 1


async def test_the_local_host_name_is_looked_up_once_not_per_connection(server_factory, monkeypatch) -> None:
    calls: list[int] = []

    def getfqdn(name: str = "") -> str:
        calls.append(1)
        return "sender.dropslot.test"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    server = await server_factory(after_message=True)  # a new connection for every message
    transport = transport_for(server.port, pool_size=2)
    try:
        for i in range(4):
            await send(transport, f"h{i}@example.com", i)
            await eventually_true(lambda: server.closed == server.opened)
    finally:
        await transport.close()
    assert server.opened == 4 and len(calls) == 1
    assert server.helo_names == ["sender.dropslot.test"] * 4


# --- the server closes or drops connections ---------------------------------------------------------------
async def test_a_server_closing_the_connection_after_each_message_loses_nothing(server_factory) -> None:
    server = await server_factory(after_message=True)
    transport = transport_for(server.port, pool_size=2)
    try:
        sent = [await send(transport, f"c{i}@example.com", i) for i in range(10)]
    finally:
        await transport.close()
    assert server.ids == [str(n) for n in sent]


@pytest.mark.parametrize("how", ["drop", "421"])
async def test_a_connection_found_dead_when_used_is_replaced_and_the_message_arrives_once(
    server_factory, how: str
) -> None:
    server = await server_factory(on_reuse=how)  # the 2nd message on a connection kills it
    transport = transport_for(server.port, pool_size=1)
    try:
        sent = [await send(transport, f"c{i}@example.com", i) for i in range(6)]
    finally:
        await transport.close()
    assert server.ids == [str(n) for n in sent]  # each once, in order
    # each connection but the first died when its 2nd message came: 1 + 5 fresh ones
    assert server.opened == 6


async def test_failures_are_classified_as_before_and_do_not_spoil_the_pool(server_factory) -> None:
    server = await server_factory()
    transport = transport_for(server.port, pool_size=1)
    try:
        await send(transport, "first@example.com")
        with pytest.raises(PermanentFailure, match="550"):
            await send(transport, "nobody@example.com")
        with pytest.raises(TransientFailure, match="451"):
            await send(transport, "later@example.com")
        with pytest.raises(PermanentFailure, match="invalid email address"):
            await send(transport, "not an address")
        last = await send(transport, "last@example.com")
    finally:
        await transport.close()
    assert len(server.ids) == 2 and server.ids[-1] == str(last)  # a refusal is not retried


async def test_a_server_that_is_gone_is_a_transient_failure(server_factory) -> None:
    server = await server_factory()
    transport = transport_for(server.port, pool_size=1, timeout=2)
    try:
        await send(transport, "a@example.com")
        await server.stop()
        await eventually_true(lambda: server.closed == server.opened)  # our kept connection too
        with pytest.raises(TransientFailure, match="unavailable"):
            await send(transport, "b@example.com")
    finally:
        await transport.close()


# --- idle connections --------------------------------------------------------------------------------------
async def test_idle_connections_are_closed_after_a_while_and_on_close(server_factory) -> None:
    server = await server_factory()
    transport = transport_for(server.port, pool_size=3, idle_seconds=0.3)
    await asyncio.gather(*(send(transport, f"c{i}@example.com", i) for i in range(3)))
    assert server.opened == 3
    await eventually_true(lambda: server.closed == 3, within=3)  # idle for 0.3 s: QUIT
    await send(transport, "again@example.com")  # a new one when needed again
    assert server.opened == 4
    await transport.close()
    await eventually_true(lambda: server.closed == 4)
    assert len(server.ids) == 4


# --- the message itself ---------------------------------------------------------------------------------
def test_the_cheaper_email_building_gives_the_bytes_the_stdlib_default_policy_gives(monkeypatch) -> None:
    message = Rendered(Channel.EMAIL, "Subject ü", "Text with --=============== in it\n", "<p>Html</p>",
                       [InlineImage("checkin-qr", qr_png("ck.1"))])
    nid = uuid.uuid4()

    def flat() -> bytes:
        random.seed(7)  # the same boundaries both times
        msg = build_email(sender=SENDER, to="Ann <a@example.com>", message=message, notification_id=nid,
                          template="reservation_confirmed")
        msg.replace_header("Date", "Tue, 24 Nov 2026 14:00:00 +0000")
        return flatten_message(msg, cte_type="8bit")

    ours = flat()
    monkeypatch.setattr(channels, "EMAIL_POLICY", email.policy.default)
    assert flat() == ours
    parsed = email.message_from_bytes(ours, policy=email.policy.default)
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/alternative", "text/plain", "multipart/related", "text/html", "image/png"]
    boundaries = [p.get_boundary() for p in parsed.walk() if p.is_multipart()]
    assert len(set(boundaries)) == 2 and all(re.fullmatch(r"={15}\d{19}==", b) for b in boundaries)
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == message.text


# --- the catcher's folder -------------------------------------------------------------------------------
def test_the_mail_folder_stays_near_keep_without_being_listed_on_every_message(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    for i in range(40):  # an earlier run left more than `keep`
        (folder / f"20000101T000000{i:06d}-old.eml").write_bytes(b"Subject: old\r\n\r\nold\r\n")
    box = Mailbox(folder, keep=30)
    prunes = 0
    prune = box._prune

    def counting_prune() -> int:
        nonlocal prunes
        prunes += 1
        return prune()

    box._prune = counting_prune  # type: ignore[method-assign]
    names = []
    for i in range(300):
        names.append(box.store(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()))
        count = len(list(folder.glob("*.eml")))
        assert count <= box.keep + box.margin, f"{count} files after {i + 1} stores"
    assert 30 <= len(list(folder.glob("*.eml"))) < 30 + box.margin
    assert prunes <= 300 // box.margin + 1, f"{prunes} prunes for 300 messages"
    left = {p.stem for p in folder.glob("*.eml")}
    assert set(names[-30:]) <= left and not any(n.endswith("-old") for n in left)  # the newest stay
    assert [m["subject"] for m in box.list(limit=3)] == ["299", "298", "297"]


def test_a_small_keep_is_still_exact(tmp_path: Path) -> None:
    box = Mailbox(tmp_path / "mail", keep=5)
    assert box.margin == 1
    for i in range(20):
        box.store(f"Subject: {i}\r\n\r\n{i}\r\n".encode())
        assert len(list((tmp_path / "mail").glob("*.eml"))) == min(i + 1, 5)
