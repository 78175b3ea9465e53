"""Notifications end to end: a system of its own (see conftest) with a real SMTP server and a
real HTTP receiver for SMS and push, driven through the gateway and the real broker.

Sign-up and email verification go through identity itself. Booking and payments events are
published to the broker as their outbox relays would publish them (same exchange, routing
key, envelope), so each message's content is pinned down exactly.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import httpx
import pytest
from dropslot_contracts import Envelope
from dropslot_contracts.events.booking import (
    HoldExpiring,
    ReservationConfirmed,
    ReservationSnapshot,
    WaitlistEntry,
    WaitlistJoined,
    WaitlistOfferMade,
)
from dropslot_contracts.events.catalog import BranchSnapshot, DropCreated, DropLive, DropSnapshot
from dropslot_contracts.events.payments import PaymentFailed, PaymentRefunded
from dropslot_kit.testing import create_store, eventually, sign_up
from dropslot_notifications.rendering import qr_png

from .conftest import DROP_WAIT_SECONDS

pytestmark = pytest.mark.e2e

SLOT_START = datetime(2031, 3, 14, 15, 30, tzinfo=UTC)


# --- event builders ---------------------------------------------------------------------------------
def drop_snapshot(drop_id: uuid.UUID, store_id: uuid.UUID, *, status: str = "SCHEDULED") -> DropSnapshot:
    return DropSnapshot(
        drop_id=drop_id, store_id=store_id, tenant_key=f"t-{store_id.hex[:8]}", store_name="Kicks & Co",
        product_id=uuid.uuid4(), product_name="Air Max 1", name="Spring Sneaker Drop", status=status,
        starts_at=SLOT_START - timedelta(hours=2), ends_at=SLOT_START + timedelta(hours=6),
        reservation_rule={}, price_cents=0, currency="EUR",
        branches=[BranchSnapshot(id=uuid.uuid4(), name="Mitte Flagship", address="Torstr. 1, 10119 Berlin",
                                 lat=52.53, lng=13.40, phone="+4930123456")],
    )


def confirmed(user_id: str, *, drop_id: uuid.UUID, store_id: uuid.UUID, token: str) -> Envelope:
    rid = uuid.uuid4()
    snap = ReservationSnapshot(
        reservation_id=rid, slot_id=uuid.uuid4(), drop_id=drop_id, store_id=store_id, user_id=uuid.UUID(user_id),
        state="CONFIRMED", slot_start=SLOT_START, slot_end=SLOT_START + timedelta(minutes=30), amount_cents=0,
        currency="EUR", requires_payment=False, drop_name="Spring Sneaker Drop", product_name="Air Max 1",
        qr_code_url=f"/api/v1/reservations/{rid}/qr.svg", checkin_token=token,
    )
    return Envelope.wrap(ReservationConfirmed(reservation=snap), producer="booking", store_id=store_id)


def waitlist_entry(user_id: str, **over: Any) -> WaitlistEntry:
    fields: dict[str, Any] = dict(
        entry_id=uuid.uuid4(), slot_id=uuid.uuid4(), drop_id=uuid.uuid4(), store_id=uuid.uuid4(),
        user_id=uuid.UUID(user_id), position=1, state="WAITING", slot_start=SLOT_START,
        drop_name="Spring Sneaker Drop",
    )
    fields.update(over)
    return WaitlistEntry(**fields)


def payment_event(cls: type, user_id: str, **extra: Any) -> Envelope:
    ev = cls(payment_id=uuid.uuid4(), reservation_id=uuid.uuid4(), user_id=uuid.UUID(user_id), store_id=uuid.uuid4(),
             provider="sandbox", status="canceled", amount_cents=4200, currency="EUR", **extra)
    return Envelope.wrap(ev, producer="payments")


# --- helpers ---------------------------------------------------------------------------------------------
async def my_notifications(api: httpx.AsyncClient, user: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    r = await api.get("/notifications", headers=user["headers"], params={"limit": 100, **params})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def wait_status(api: httpx.AsyncClient, user: dict[str, Any], template: str, status: str,
                      channel: str = "email", wait: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        items = await my_notifications(api, user, template=template, channel=channel)
        return next((n for n in items if n["status"] == status), None)

    return await eventually(check, timeout=wait, what=f"{template}/{channel} {status}")


def plain(msg: Any) -> str:
    return str(msg.get_body(("plain",)).get_content())


# --- tests -----------------------------------------------------------------------------------------------
async def test_sign_up_mails_a_verification_link_whose_token_verifies_the_address(api, smtp):
    r = await api.post("/auth/register", json={"email": f"verify-{uuid.uuid4().hex[:10]}@example.com",
                                               "password": "correct horse battery staple 9", "name": "Vera"})
    assert r.status_code == 201, r.text
    email = r.json()["email"]

    async def mail() -> Any:
        found = smtp.to(email, "email_verification")
        return found[0] if found else None

    msg = await eventually(mail, timeout=30, what="verification mail")
    assert "confirm" in msg["Subject"].lower()
    body = plain(msg)
    assert "Hi Vera" in body
    match = re.search(r"/verify-email\?token=([^\s\"'<>&]+)", body)
    assert match, body
    token = unquote(match.group(1))
    assert token in body  # the code is also given for typing in

    verified = await api.post("/auth/verify-email", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json()["email_verified_at"] is not None

    login = await api.post("/auth/login", json={"email": email, "password": "correct horse battery staple 9"})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    [item] = await my_notifications(api, {"headers": headers})
    assert (item["template"], item["channel"], item["status"]) == ("email_verification", "email", "SENT")
    assert item["recipient"] == email and item["attempts"] == 1


async def test_confirmed_reservation_mail_has_the_qr_code_slot_and_branch(api, bus, smtp, customer):
    # The two events travel in different queues, so the confirmation may be handled first: its
    # mail then waits for the drop (DROP_WAIT_SECONDS) instead of going out without the branch.
    drop_id, store_id = uuid.uuid4(), uuid.uuid4()
    await bus.publish(Envelope.wrap(DropCreated(drop=drop_snapshot(drop_id, store_id)), producer="catalog"))
    token = f"ck.{uuid.uuid4().hex}.signature"
    env = confirmed(customer["id"], drop_id=drop_id, store_id=store_id, token=token)
    await bus.publish(env)

    async def mail() -> Any:
        found = smtp.to(customer["email"], "reservation_confirmed")
        return found[0] if found else None

    msg = await eventually(mail, timeout=30, what="confirmation mail")
    body = plain(msg)
    assert "Spring Sneaker Drop" in msg["Subject"]
    assert "Fri 14 Mar 2031, 15:30 UTC – 16:00 UTC" in body
    assert "Mitte Flagship, Torstr. 1, 10119 Berlin" in body
    assert "Kicks & Co" in body
    html = msg.get_body(("html",)).get_content()
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    cid = image["Content-ID"].strip("<>")
    assert f"cid:{cid}" in html
    assert image.get_payload(decode=True) == qr_png(token)  # the QR of exactly this reservation's token
    rid = env.data["reservation"]["reservation_id"]
    assert f"/api/v1/reservations/{rid}/qr.svg" in body


async def test_a_confirmation_handled_before_its_drop_waits_for_it_and_names_the_branch(api, bus, smtp, customer):
    # As after a restart with a backlog on both queues: booking's event is handled first.
    drop_id, store_id = uuid.uuid4(), uuid.uuid4()
    token = f"ck.{uuid.uuid4().hex}.signature"
    await bus.publish(confirmed(customer["id"], drop_id=drop_id, store_id=store_id, token=token))

    async def waiting() -> dict[str, Any] | None:
        items = await my_notifications(api, customer, template="reservation_confirmed")
        return next((n for n in items if n["status"] == "PENDING" and str(drop_id) in (n["last_error"] or "")),
                    None)

    # Seen waiting for the drop (well within the bound) before the drop is announced at all.
    await eventually(waiting, timeout=DROP_WAIT_SECONDS, what="the confirmation waiting for its drop")
    assert not smtp.to(customer["email"], "reservation_confirmed")
    await bus.publish(Envelope.wrap(DropCreated(drop=drop_snapshot(drop_id, store_id)), producer="catalog"))

    sent = await wait_status(api, customer, "reservation_confirmed", "SENT")
    assert sent["attempts"] >= 2 and sent["last_error"] is None
    [msg] = smtp.to(customer["email"], "reservation_confirmed")
    body = plain(msg)
    assert "Mitte Flagship, Torstr. 1, 10119 Berlin" in body and "Kicks & Co" in body
    assert "Fri 14 Mar 2031, 15:30 UTC – 16:00 UTC" in body
    html = msg.get_body(("html",)).get_content()
    assert "Mitte Flagship" in html and "Torstr. 1, 10119 Berlin" in html
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert image.get_payload(decode=True) == qr_png(token)


async def test_a_confirmation_whose_drop_never_comes_goes_out_without_the_branch_after_the_wait(
    api, bus, smtp, customer, notif_system
):
    drop_id, store_id = uuid.uuid4(), uuid.uuid4()
    token = f"ck.{uuid.uuid4().hex}.signature"
    await bus.publish(confirmed(customer["id"], drop_id=drop_id, store_id=store_id, token=token))

    sent = await wait_status(api, customer, "reservation_confirmed", "SENT", wait=DROP_WAIT_SECONDS + 30)
    created, sent_at = (datetime.fromisoformat(sent[k].replace("Z", "+00:00")) for k in ("created_at", "sent_at"))
    assert sent_at - created >= timedelta(seconds=DROP_WAIT_SECONDS)  # it did wait, for the bound
    assert sent["attempts"] >= 2 and sent["last_error"] is None
    [msg] = smtp.to(customer["email"], "reservation_confirmed")  # once
    body = plain(msg)
    assert "Spring Sneaker Drop" in msg["Subject"]  # what the reservation event itself carries
    assert "Fri 14 Mar 2031, 15:30 UTC – 16:00 UTC" in body
    assert "Pickup:" not in body and "Store:" not in body
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert image.get_payload(decode=True) == qr_png(token)
    log = (Path(notif_system.log_dir) / "notifications.log").read_text()
    assert f"drop {drop_id} still not known" in log and sent["id"] in log


async def test_waitlist_offer_reaches_every_channel_with_its_deadline(api, bus, smtp, receiver, customer):
    phone = "+4915" + str(uuid.uuid4().int)[:9]
    push_token = f"device-{uuid.uuid4().hex}"
    r = await api.put("/notifications/preferences", headers=customer["headers"],
                      json={"email": True, "sms": True, "push": True, "phone": phone, "push_token": push_token})
    assert r.status_code == 200, r.text
    deadline = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=15)
    entry = waitlist_entry(customer["id"], state="OFFERED", offer_expires_at=deadline)
    await bus.publish(Envelope.wrap(WaitlistOfferMade(entry=entry), producer="booking"))

    when = f"{deadline:%a} {deadline.day} {deadline:%b %Y, %H:%M} UTC"

    async def everywhere() -> bool:
        return bool(smtp.to(customer["email"], "waitlist_offer") and receiver.to("sms", phone)
                    and receiver.to("push", push_token))

    await eventually(everywhere, timeout=30, what="offer on email, sms and push")
    [mail] = smtp.to(customer["email"], "waitlist_offer")
    assert f"{deadline:%H:%M} UTC" in mail["Subject"]
    assert when in plain(mail)
    [sms] = receiver.to("sms", phone)
    assert when in sms["text"] and f"/waitlist/{entry.entry_id}" in sms["text"]
    [push] = receiver.to("push", push_token)
    assert f"{deadline:%H:%M} UTC" in push["title"]
    assert sms["idempotency_key"] == next(
        n["id"] for n in await my_notifications(api, customer, channel="sms"))
    assert receiver.bad_signatures == 0


async def test_smtp_outage_delays_mail_which_is_sent_once_when_it_returns(api, bus, smtp, customer):
    smtp.stop()
    try:
        entry = waitlist_entry(customer["id"], position=7)
        await bus.publish(Envelope.wrap(WaitlistJoined(entry=entry), producer="booking"))

        async def retrying() -> dict[str, Any] | None:
            items = await my_notifications(api, customer, template="waitlist_joined")
            return next((n for n in items if n["status"] == "PENDING" and n["attempts"] >= 2 and n["last_error"]),
                        None)

        pending = await eventually(retrying, timeout=30, what="retries while SMTP is down")
        assert "unavailable" in pending["last_error"]
        assert not smtp.to(customer["email"], "waitlist_joined")
    finally:
        smtp.start()
    sent = await wait_status(api, customer, "waitlist_joined", "SENT")
    assert sent["attempts"] >= 3 and sent["last_error"] is None
    # Another message through the same path afterwards: by the time it has arrived, a stray
    # second delivery of the first would have arrived too.
    await bus.publish(Envelope.wrap(WaitlistJoined(entry=waitlist_entry(customer["id"], position=8)),
                                    producer="booking"))

    async def both() -> bool:
        return len(smtp.to(customer["email"], "waitlist_joined")) >= 2

    await eventually(both, timeout=30, what="the follow-up mail")
    first = [m for m in smtp.to(customer["email"], "waitlist_joined") if "number 7" in plain(m)]
    assert len(first) == 1
    assert first[0]["X-DropSlot-Notification-Id"] == sent["id"]


async def test_the_same_event_delivered_twice_makes_one_message(api, bus, smtp, customer):
    env = Envelope.wrap(WaitlistJoined(entry=waitlist_entry(customer["id"], position=11)), producer="booking")
    await bus.publish(env)
    await bus.publish(env)  # a redelivery: same envelope, same id
    marker = Envelope.wrap(WaitlistJoined(entry=waitlist_entry(customer["id"], position=12)), producer="booking")
    await bus.publish(marker)

    async def marker_arrived() -> bool:
        return any("number 12" in plain(m) for m in smtp.to(customer["email"], "waitlist_joined"))

    await eventually(marker_arrived, timeout=30, what="the marker mail")
    await wait_status(api, customer, "waitlist_joined", "SENT")
    assert len([m for m in smtp.to(customer["email"], "waitlist_joined") if "number 11" in plain(m)]) == 1
    assert len(await my_notifications(api, customer, template="waitlist_joined")) == 2


async def test_a_broken_template_fails_with_the_reason_and_other_messages_go_out(api, bus, smtp, customer):
    await bus.publish(payment_event(PaymentRefunded, customer["id"], refunded_cents=4200, total_refunded_cents=4200))
    await bus.publish(payment_event(PaymentFailed, customer["id"], reason="card_declined"))

    failed = await wait_status(api, customer, "refund_issued", "FAILED")
    assert "template error" in failed["last_error"] and "refund_issued/email.txt" in failed["last_error"]
    assert failed["attempts"] == 1  # permanent: not retried
    await wait_status(api, customer, "payment_failed", "SENT")
    [mail] = smtp.to(customer["email"], "payment_failed")
    assert "42.00 EUR" in plain(mail) and "card_declined" in plain(mail)
    assert not smtp.to(customer["email"], "refund_issued")


async def test_preferences_decide_the_channels(api, bus, smtp, receiver, customer):
    r = await api.get("/notifications/preferences", headers=customer["headers"])
    assert r.status_code == 200 and r.json()["email"] is True and r.json()["sms"] is False
    assert set(r.json()["available_channels"]) == {"email", "sms", "push"}

    bad = await api.put("/notifications/preferences", headers=customer["headers"],
                        json={"email": False, "sms": True, "push": False})
    assert bad.status_code == 422 and bad.json()["type"].endswith("/validation-error")
    assert bad.json()["errors"][0]["name"] == "sms"
    still = await api.get("/notifications/preferences", headers=customer["headers"])
    assert still.json()["email"] is True  # nothing half-written

    phone = "+4917" + str(uuid.uuid4().int)[:9]
    r = await api.put("/notifications/preferences", headers=customer["headers"],
                      json={"email": False, "sms": True, "push": False, "phone": phone})
    assert r.status_code == 200 and r.json()["phone"] == phone

    drop_id, store_id = uuid.uuid4(), uuid.uuid4()
    await bus.publish(Envelope.wrap(DropCreated(drop=drop_snapshot(drop_id, store_id)), producer="catalog"))
    await bus.publish(confirmed(customer["id"], drop_id=drop_id, store_id=store_id, token="ck.prefs.sig"))
    await eventually(lambda: _has(receiver.to("sms", phone)), timeout=30, what="the SMS")
    assert "at Mitte Flagship" in receiver.to("sms", phone)[0]["text"]  # the drop's branch, by SMS too
    await wait_status(api, customer, "reservation_confirmed", "SENT", channel="sms")
    items = await my_notifications(api, customer, template="reservation_confirmed")
    assert [n["channel"] for n in items] == ["sms"]
    assert not smtp.to(customer["email"], "reservation_confirmed")

    # push on without a token is refused; leaving out phone keeps it
    r = await api.put("/notifications/preferences", headers=customer["headers"],
                      json={"email": True, "sms": True, "push": True})
    assert r.status_code == 422 and r.json()["errors"][0]["name"] == "push"
    r = await api.put("/notifications/preferences", headers=customer["headers"],
                      json={"email": True, "sms": False, "push": False})
    assert r.status_code == 200 and r.json()["phone"] == phone


async def _has(items: list[Any]) -> bool:
    return bool(items)


async def test_notify_me_subscribers_hear_when_the_drop_goes_live(api, bus, smtp, customer):
    drop_id, store_id = uuid.uuid4(), uuid.uuid4()
    r = await api.post(f"/drops/{drop_id}/subscriptions", headers=customer["headers"])
    assert r.status_code == 201, r.text
    again = await api.post(f"/drops/{drop_id}/subscriptions", headers=customer["headers"])
    assert again.status_code == 200
    assert (await api.get(f"/drops/{drop_id}/subscription", headers=customer["headers"])).json()["subscribed"]

    live = Envelope.wrap(DropLive(drop=drop_snapshot(drop_id, store_id, status="LIVE")), producer="catalog")
    await bus.publish(live)
    await bus.publish(live.model_copy(update={"id": uuid.uuid4()}))  # told twice: still one message
    await wait_status(api, customer, "drop_live", "SENT")
    [mail] = smtp.to(customer["email"], "drop_live")
    assert "Spring Sneaker Drop is live" in mail["Subject"] and f"/drops/{drop_id}" in plain(mail)

    late = await api.post(f"/drops/{drop_id}/subscriptions", headers=customer["headers"])
    assert late.status_code == 409 and late.json()["type"].endswith("/drop-already-live")
    assert (await api.delete(f"/drops/{drop_id}/subscriptions", headers=customer["headers"])).status_code == 204
    assert not (await api.get(f"/drops/{drop_id}/subscription", headers=customer["headers"])).json()["subscribed"]
    assert len(await my_notifications(api, customer, template="drop_live")) == 1


async def test_the_list_is_the_callers_own_paginated_and_needs_sign_in(api, bus, smtp, customer):
    for position in (21, 22, 23):
        await bus.publish(Envelope.wrap(WaitlistJoined(entry=waitlist_entry(customer["id"], position=position)),
                                        producer="booking"))

    async def all_there() -> bool:
        return len(await my_notifications(api, customer)) >= 4  # welcome + 3

    await eventually(all_there, timeout=30, what="four notifications")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/notifications", headers=customer["headers"], params=params)).json()
        seen += [n["id"] for n in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = await my_notifications(api, customer)
    assert seen == [n["id"] for n in everything] and len(seen) == 4
    created = [n["created_at"] for n in everything]
    assert created == sorted(created, reverse=True)

    one = await api.get(f"/notifications/{seen[0]}", headers=customer["headers"])
    assert one.status_code == 200 and one.json()["id"] == seen[0]

    r = await api.get("/notifications")
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    bad = await api.get("/notifications", headers=customer["headers"], params={"cursor": "garbage"})
    assert bad.status_code == 400 and bad.json()["type"].endswith("/invalid-cursor")
    # someone else's notification is not found
    other = await sign_up(api)
    assert (await api.get(f"/notifications/{seen[0]}", headers=other["headers"])).status_code == 404
    assert seen[0] not in {n["id"] for n in await my_notifications(api, other)}


# --- full flows through the services that produce the events -------------------------------------
async def test_subscribers_of_a_real_drop_are_mailed_when_catalog_opens_it(api, smtp, customer):
    owner = await sign_up(api, name="Olga Owner")
    store = await create_store(api, owner, name="Kicks & Co")
    sid, h = store["id"], owner["headers"]
    r = await api.post(f"/stores/{sid}/branches", headers=h, json={
        "name": "Mitte Flagship", "address": "Torstr. 1, 10119 Berlin", "lat": 52.53, "lng": 13.40,
        "phone": "+49 30 123456", "opening_hours": {"timezone": "Europe/Berlin"}})
    assert r.status_code == 201, r.text
    r = await api.post(f"/stores/{sid}/products", headers=h, json={
        "name": "Air Max 1", "sku": f"AM1-{uuid.uuid4().hex[:6]}", "price_cents": 0, "currency": "EUR"})
    assert r.status_code == 201, r.text
    now = datetime.now(UTC)
    r = await api.post(f"/stores/{sid}/drops", headers=h, json={
        "product_id": r.json()["id"], "name": "Spring Sneaker Drop",
        "starts_at": (now + timedelta(hours=1)).isoformat(), "ends_at": (now + timedelta(hours=3)).isoformat(),
        "reservation_rule": {"opens_at": (now + timedelta(seconds=8)).isoformat()}})
    assert r.status_code == 201, r.text
    drop_id = r.json()["id"]
    r = await api.post(f"/drops/{drop_id}/publish", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "SCHEDULED", r.text

    r = await api.post(f"/drops/{drop_id}/subscriptions", headers=customer["headers"])
    assert r.status_code == 201, r.text

    async def mail() -> Any:
        found = smtp.to(customer["email"], "drop_live")
        return found[0] if found else None

    msg = await eventually(mail, timeout=40, what="the drop-live mail when catalog opens the drop")
    assert msg["Subject"] == "Spring Sneaker Drop is live – reserve your slot"
    body = plain(msg)
    assert "from Kicks & Co" in body and f"/drops/{drop_id}" in body
    assert "CET" in body or "CEST" in body  # the branch's zone, not UTC
    assert not smtp.to(owner["email"], "drop_live")  # only subscribers


BERLIN = ZoneInfo("Europe/Berlin")


def berlin(dt: datetime) -> str:
    local = dt.astimezone(BERLIN)
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M} {local.tzname()}"


async def live_drop(api: httpx.AsyncClient, *, capacity: int, price_cents: int = 0) -> dict[str, Any]:
    """A store with a Berlin branch, a product (free unless priced), a drop that is LIVE now
    and one slot starting in three hours (well before the default cancellation deadline)."""
    owner = await sign_up(api, name="Olga Owner")
    store = await create_store(api, owner, name="Kicks & Co")
    sid, h = store["id"], owner["headers"]
    r = await api.post(f"/stores/{sid}/branches", headers=h, json={
        "name": "Mitte Flagship", "address": "Torstr. 1, 10119 Berlin", "lat": 52.53, "lng": 13.40,
        "opening_hours": {"timezone": "Europe/Berlin"}})
    assert r.status_code == 201, r.text
    r = await api.post(f"/stores/{sid}/products", headers=h, json={
        "name": "Air Max 1", "sku": f"AM1-{uuid.uuid4().hex[:6]}", "price_cents": price_cents, "currency": "EUR"})
    assert r.status_code == 201, r.text
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    r = await api.post(f"/stores/{sid}/drops", headers=h, json={
        "product_id": r.json()["id"], "name": "Spring Sneaker Drop",
        "starts_at": (now + timedelta(hours=2)).isoformat(), "ends_at": (now + timedelta(hours=5)).isoformat()})
    assert r.status_code == 201, r.text
    drop_id = r.json()["id"]
    r = await api.post(f"/drops/{drop_id}/publish", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "LIVE", r.text
    start = now + timedelta(hours=3)

    async def slot() -> dict[str, Any] | None:  # booking learns of the drop from catalog's event
        r = await api.post(f"/drops/{drop_id}/slots", headers=h, json={
            "start_time": start.isoformat(), "end_time": (start + timedelta(minutes=30)).isoformat(),
            "capacity_total": capacity})
        return r.json() if r.status_code == 201 else None

    return {"drop_id": drop_id, "owner": owner, "slot": await eventually(slot, timeout=30, what="a slot"),
            "start": start}


async def reserve(api: httpx.AsyncClient, user: dict[str, Any], slot_id: str) -> dict[str, Any]:
    async def attempt() -> dict[str, Any] | None:  # the drop goes on sale in booking a moment later
        r = await api.post("/reservations", json={"slot_id": slot_id},
                           headers={**user["headers"], "Idempotency-Key": uuid.uuid4().hex})
        if r.status_code == 409 and r.json()["type"].endswith(("/drop-not-live", "/slot-closed")):
            return None
        assert r.status_code == 201, r.text
        return dict(r.json())

    return await eventually(attempt, timeout=30, what="a reservation")


async def test_a_reservation_booking_confirms_is_mailed_with_its_qr_slot_and_branch(api, smtp, customer):
    drop = await live_drop(api, capacity=5)
    reservation = await reserve(api, customer, drop["slot"]["id"])
    assert reservation["state"] == "CONFIRMED" and reservation["checkin_token"]

    async def mail() -> Any:
        found = smtp.to(customer["email"], "reservation_confirmed")
        return found[0] if found else None

    msg = await eventually(mail, timeout=30, what="the confirmation mail")
    body = plain(msg)
    assert f"{berlin(drop['start'])} – " in body  # the slot, in the branch's time zone
    assert "Mitte Flagship, Torstr. 1, 10119 Berlin" in body and "Kicks & Co" in body
    assert reservation["id"] in body
    [image] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert image.get_payload(decode=True) == qr_png(reservation["checkin_token"])


async def test_a_seat_freed_by_a_cancellation_is_offered_by_mail_with_its_deadline(
    api, smtp, customer, second_customer
):
    drop = await live_drop(api, capacity=1)
    slot_id = drop["slot"]["id"]
    holder = await reserve(api, customer, slot_id)
    full = await api.post("/reservations", json={"slot_id": slot_id},
                          headers={**second_customer["headers"], "Idempotency-Key": uuid.uuid4().hex})
    assert full.status_code == 409 and full.json()["type"].endswith("/sold-out"), full.text
    r = await api.post(f"/slots/{slot_id}/waitlist", headers=second_customer["headers"])
    assert r.status_code == 201, r.text
    entry_id = r.json()["id"]
    await eventually(lambda: _has(smtp.to(second_customer["email"], "waitlist_joined")), timeout=30,
                     what="the waitlist-joined mail")

    r = await api.post(f"/reservations/{holder['id']}/cancel", headers=customer["headers"])
    assert r.status_code == 200, r.text

    async def offer_mail() -> Any:
        found = smtp.to(second_customer["email"], "waitlist_offer")
        return found[0] if found else None

    msg = await eventually(offer_mail, timeout=30, what="the offer mail")
    entry = (await api.get(f"/waitlist/{entry_id}", headers=second_customer["headers"])).json()
    assert entry["state"] == "OFFERED", entry
    deadline = datetime.fromisoformat(entry["offer_expires_at"].replace("Z", "+00:00"))
    assert berlin(deadline) in plain(msg)
    assert f"{deadline.astimezone(BERLIN):%H:%M}" in msg["Subject"]
    assert f"/waitlist/{entry_id}" in plain(msg)
    await eventually(lambda: _has(smtp.to(customer["email"], "reservation_cancelled")), timeout=30,
                     what="the cancellation mail to the first customer")
    assert "as you asked" in plain(smtp.to(customer["email"], "reservation_cancelled")[0])


async def test_a_declined_card_is_told_once_naming_the_drop_and_amount(api, smtp, customer):
    drop = await live_drop(api, capacity=3, price_cents=1250)
    reservation = await reserve(api, customer, drop["slot"]["id"])
    assert reservation["state"] == "PENDING", reservation

    async def payment() -> dict[str, Any] | None:
        r = await api.get("/payments", params={"reservation_id": reservation["id"]}, headers=customer["headers"])
        items = r.json().get("items") if r.status_code == 200 else None
        return items[0] if items and items[0]["status"] == "requires_payment_method" else None

    pay = await eventually(payment, timeout=30, what="the payment intent")
    r = await api.post(f"/payments/{pay['id']}/sandbox/confirm", headers=customer["headers"],
                       json={"card_number": "4000000000000002"})
    assert r.status_code == 402, r.text

    async def mail() -> Any:
        found = smtp.to(customer["email"], "payment_failed")
        return found[0] if found else None

    msg = await eventually(mail, timeout=30, what="the payment-failed mail")
    assert "Spring Sneaker Drop" in msg["Subject"]  # named from booking's earlier reservation event
    assert "12.50 EUR" in plain(msg)
    # booking cancels the reservation for the failed payment; that is not told a second time
    await eventually(lambda: _cancelled(api, customer, reservation["id"]), timeout=30, what="the cancellation")
    await wait_status(api, customer, "payment_failed", "SENT")
    assert not smtp.to(customer["email"], "reservation_cancelled")


async def _cancelled(api: httpx.AsyncClient, user: dict[str, Any], reservation_id: str) -> bool:
    r = await api.get(f"/reservations/{reservation_id}", headers=user["headers"])
    return r.status_code == 200 and r.json()["state"] == "CANCELLED"


async def test_only_the_customer_reminder_of_an_expiring_hold_is_sent(api, bus, smtp, customer):
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=3)

    def expiring(final_check: bool) -> Envelope:
        snap = ReservationSnapshot(
            reservation_id=uuid.uuid4(), slot_id=uuid.uuid4(), drop_id=uuid.uuid4(), store_id=uuid.uuid4(),
            user_id=uuid.UUID(customer["id"]), state="PENDING", slot_start=SLOT_START,
            slot_end=SLOT_START + timedelta(minutes=30), amount_cents=1250, currency="EUR", requires_payment=True,
            expires_at=expires, drop_name="Spring Sneaker Drop")
        return Envelope.wrap(HoldExpiring(reservation=snap, final_check=final_check), producer="booking")

    await bus.publish(expiring(final_check=True))  # booking's prompt to payments: not for the customer
    await bus.publish(expiring(final_check=False))
    sent = await wait_status(api, customer, "hold_expiring", "SENT")
    assert len(await my_notifications(api, customer, template="hold_expiring")) == 1
    [msg] = smtp.to(customer["email"], "hold_expiring")
    assert f"{expires:%H:%M} UTC" in msg["Subject"] and "the payment" in plain(msg)
    assert sent["event_type"] == "booking.reservation.expiring"


async def test_a_deleted_account_is_forgotten_and_gets_nothing_more(api, bus, smtp, receiver, customer):
    phone = "+4916" + str(uuid.uuid4().int)[:9]
    r = await api.put("/notifications/preferences", headers=customer["headers"],
                      json={"email": True, "sms": True, "push": False, "phone": phone})
    assert r.status_code == 200, r.text
    drop_id = uuid.uuid4()
    assert (await api.post(f"/drops/{drop_id}/subscriptions", headers=customer["headers"])).status_code == 201

    assert (await api.delete(f"/users/{customer['id']}", headers=customer["headers"])).status_code == 204

    async def forgotten() -> bool:  # the access token stays valid for its short life
        prefs = (await api.get("/notifications/preferences", headers=customer["headers"])).json()
        sub = (await api.get(f"/drops/{drop_id}/subscription", headers=customer["headers"])).json()
        return prefs["phone"] is None and prefs["sms"] is False and sub["subscribed"] is False

    await eventually(forgotten, timeout=30, what="phone number and subscriptions forgotten")
    await bus.publish(confirmed(customer["id"], drop_id=drop_id, store_id=uuid.uuid4(), token="ck.gone.sig"))
    failed = await wait_status(api, customer, "reservation_confirmed", "FAILED")
    assert "deleted" in failed["last_error"]
    assert not smtp.to(customer["email"], "reservation_confirmed") and not receiver.to("sms", phone)
