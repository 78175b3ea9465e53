"""Every template renders on every channel it is offered on, with the data the events carry;
broken templates and missing data fail loudly with the reason. No I/O beyond reading files."""

from __future__ import annotations

import email
import email.policy
import struct
import uuid
import zlib
from pathlib import Path

import pytest
import segno
from dropslot_notifications.adapters.channels import build_email
from dropslot_notifications.domain import messages as m
from dropslot_notifications.domain.failures import TemplateFailure
from dropslot_notifications.domain.model import TEMPLATES, Channel, Intent
from dropslot_notifications.rendering import (
    QR_BORDER,
    QR_CID,
    QR_MASK,
    QR_SCALE,
    Renderer,
    format_money,
    format_when,
    qr_png,
)

BASE = "http://gw.test"
USER = {"name": "Ann Example", "email": "ann@example.com"}


def snapshot(**over: object) -> dict:
    snap = {
        "reservation_id": str(uuid.uuid4()), "slot_id": str(uuid.uuid4()), "drop_id": str(uuid.uuid4()),
        "store_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "state": "CONFIRMED",
        "slot_start": "2026-11-24T14:00:00Z", "slot_end": "2026-11-24T14:30:00Z", "amount_cents": 2500,
        "currency": "EUR", "requires_payment": True, "expires_at": "2026-11-24T13:10:00Z",
        "drop_name": "Winter Sneaker Drop", "product_name": "Air Max 1", "qr_code_url": "/api/v1/reservations/r/qr.svg",
        "checkin_token": "ck.eyJyIjoiMSJ9.sig",
    }
    snap.update(over)
    return snap


DROP = m.DropInfo("Winter Sneaker Drop", "Air Max 1", "Kicks & Co",
                  [{"name": "Mitte", "address": "Torstr. 1, Berlin", "phone": "+4930123456"}])


def entry(**over: object) -> dict:
    e = {"entry_id": str(uuid.uuid4()), "slot_id": str(uuid.uuid4()), "drop_id": str(uuid.uuid4()),
         "store_id": str(uuid.uuid4()), "user_id": str(uuid.uuid4()), "position": 3, "state": "OFFERED",
         "offer_expires_at": "2026-11-24T13:45:00Z", "slot_start": "2026-11-24T14:00:00Z",
         "drop_name": "Winter Sneaker Drop"}
    e.update(over)
    return e


def intents() -> list[Intent]:
    uid = uuid.uuid4()
    snap = snapshot()
    return [
        m.verification_intent(user_id=uid, email="ann@example.com", name="Ann", token="tok/+=", expires_at=None,
                              welcome=True, base_url=BASE, path="/verify-email"),
        m.password_reset_intent(user_id=uid, email="ann@example.com", name="Ann", token="rst",
                                expires_at="2026-11-24T15:00:00Z", base_url=BASE, path="/reset-password"),
        m.password_changed_intent(user_id=uid, email="ann@example.com", name=None, reason="reset",
                                  at="2026-11-24T15:00:00Z", base_url=BASE),
        m.reservation_intent("reservation_confirmed", snap, DROP, BASE, dedupe=None),
        m.reservation_intent("hold_expiring", snap, DROP, BASE, dedupe=None),
        m.reservation_intent("reservation_expired", snap, None, BASE, dedupe=None),
        m.reservation_intent("reservation_cancelled", snap, DROP, BASE, dedupe=None,
                             extra={"cancellation": m.cancellation("store", True)}),
        Intent(uid, "payment_failed", {"reservation": m.unknown_reservation(uuid.uuid4(), BASE), "payment": {
            "id": "p", "reason": "card_declined", "amount_cents": 2500, "currency": "EUR"}}),
        Intent(uid, "refund_issued", {"reservation": m.reservation_view(snap, DROP, BASE), "refund": {
            "refunded_cents": 1000, "total_refunded_cents": 2500, "currency": "EUR"}}),
        Intent(uid, "waitlist_joined", {"entry": m.entry_view(entry(state="WAITING"), DROP, BASE)}),
        Intent(uid, "waitlist_offer", {"entry": m.entry_view(entry(), DROP, BASE)}),
        Intent(uid, "waitlist_offer_lapsed", {"entry": m.entry_view(entry(), None, BASE, reason="offer_expired")}),
        Intent(uid, "drop_live", {"drop": m.drop_view(
            {"drop_id": str(uuid.uuid4()), "name": "Winter Sneaker Drop", "starts_at": "2026-11-24T12:00:00Z",
             "ends_at": "2026-11-24T20:00:00Z"}, "Kicks & Co", BASE)}),
        *endpoint_disabled(),
    ]


STORE_ID = uuid.UUID("5f0c0000-0000-4000-8000-000000000001")
ENDPOINT_ID = uuid.UUID("e9d00000-0000-4000-8000-000000000002")


def endpoint_disabled(**over: object) -> list[Intent]:
    fields: dict = dict(
        store_id=STORE_ID, store_name="Kicks & Co", endpoint_id=ENDPOINT_ID, url="https://erp.kicks.test/hooks",
        description="ERP <sync>", reason="failing", failing_since="2026-11-19T08:00:00Z",
        last_status_code=503, last_error=None, disabled_at="2026-11-24T08:00:05Z", base_url=BASE,
    )
    fields.update(over)
    return m.endpoint_disabled_intents([uuid.uuid4()], **fields)


def ctx(intent: Intent) -> dict:
    return {**intent.payload, "user": USER, "base_url": BASE, "notification_id": str(uuid.uuid4())}


def test_every_template_in_the_catalogue_is_exercised_here() -> None:
    assert {i.template for i in intents()} == set(TEMPLATES)


@pytest.mark.parametrize("intent", intents(), ids=lambda i: i.template)
def test_every_template_renders_on_each_of_its_channels(intent: Intent) -> None:
    renderer = Renderer()
    for channel in TEMPLATES[intent.template].channels:
        out = renderer.render(intent.template, channel, ctx(intent))
        assert out.text.strip(), (intent.template, channel)
        assert "{{" not in out.text and "{%" not in out.text
        if channel is Channel.EMAIL:
            assert out.subject and "\n" not in out.subject
            assert out.html and out.html.lstrip().startswith("<!doctype html>")
        if channel is Channel.PUSH:
            assert out.subject
        if channel is Channel.SMS:
            assert "\n" not in out.text and len(out.text) <= 320


def test_verification_mail_carries_the_token_and_a_link_with_it_url_encoded() -> None:
    intent = intents()[0]
    out = Renderer().render("email_verification", Channel.EMAIL, ctx(intent))
    assert f"{BASE}/verify-email?token=tok%2F%2B%3D" in out.text
    assert "tok/+=" in out.text
    assert "Welcome" in (out.subject or "")


def test_confirmation_email_embeds_the_qr_of_the_checkin_token_and_shows_slot_and_branch() -> None:
    snap = snapshot()
    intent = m.reservation_intent("reservation_confirmed", snap, DROP, BASE, dedupe=None)
    out = Renderer().render("reservation_confirmed", Channel.EMAIL, ctx(intent))
    assert [img.cid for img in out.images] == [QR_CID]
    assert out.images[0].data == qr_png(snap["checkin_token"])
    assert out.images[0].data.startswith(b"\x89PNG")
    assert f'src="cid:{QR_CID}"' in (out.html or "")
    assert "Tue 24 Nov 2026, 14:00 UTC – 14:30 UTC" in out.text
    assert "Mitte, Torstr. 1, Berlin" in out.text
    assert "25.00 EUR" in out.text
    assert f"{BASE}/api/v1/reservations/r/qr.svg" in out.text  # a relative qr_code_url is made absolute


def _read_png_1bit(data: bytes) -> list[list[int]]:
    """A minimal reader for the PNGs qr_png writes (checks signature, CRCs, IHDR): pixel rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (1, 0, 0) and b"IEND" in chunks
    raw, stride = zlib.decompress(chunks[b"IDAT"]), 1 + (width + 7) // 8
    rows = []
    for y in range(height):
        line = raw[y * stride:(y + 1) * stride]
        assert line[0] == 0  # no filter
        bits = "".join(f"{b:08b}" for b in line[1:])[:width]
        rows.append([int(c) for c in bits])
    return rows


def test_qr_png_is_the_qr_code_of_the_token_pixel_for_pixel() -> None:
    token = "abc." + "x" * 200
    pixels = _read_png_1bit(qr_png(token))
    qr = segno.make(token, error="m", micro=False, mask=QR_MASK, boost_error=False)
    modules = [list(row) for row in qr.matrix]
    n = len(modules) + 2 * QR_BORDER
    assert len(pixels) == len(pixels[0]) == n * QR_SCALE
    for y in range(n):
        for x in range(n):
            inside = QR_BORDER <= y < n - QR_BORDER and QR_BORDER <= x < n - QR_BORDER
            dark = inside and modules[y - QR_BORDER][x - QR_BORDER]
            block = {pixels[y * QR_SCALE + dy][x * QR_SCALE + dx] for dy in range(QR_SCALE) for dx in range(QR_SCALE)}
            assert block == {0 if dark else 1}, (x, y)
    assert qr.mask == QR_MASK and qr.designator.endswith("-M")
    assert qr_png(token) == qr_png(token) and qr_png("abc") != qr_png("abd")


def test_confirmation_without_a_token_has_no_image_and_still_renders() -> None:
    intent = m.reservation_intent("reservation_confirmed", snapshot(checkin_token=None), DROP, BASE, dedupe=None)
    out = Renderer().render("reservation_confirmed", Channel.EMAIL, ctx(intent))
    assert out.images == [] and "cid:" not in (out.html or "")


def test_waitlist_offer_states_its_deadline_everywhere() -> None:
    intent = Intent(uuid.uuid4(), "waitlist_offer", {"entry": m.entry_view(entry(), DROP, BASE)})
    r = Renderer()
    email_out = r.render("waitlist_offer", Channel.EMAIL, ctx(intent))
    assert "13:45 UTC" in (email_out.subject or "")
    assert "Tue 24 Nov 2026, 13:45 UTC" in email_out.text
    assert "Tue 24 Nov 2026, 13:45 UTC" in r.render("waitlist_offer", Channel.SMS, ctx(intent)).text
    assert "13:45 UTC" in (r.render("waitlist_offer", Channel.PUSH, ctx(intent)).subject or "")


def test_html_is_escaped_but_text_is_not() -> None:
    intent = m.reservation_intent("reservation_confirmed", snapshot(drop_name="<b>Tom & Jerry</b>"), DROP, BASE,
                                  dedupe=None)
    out = Renderer().render("reservation_confirmed", Channel.EMAIL, ctx(intent))
    assert "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;" in (out.html or "")
    assert "<b>Tom & Jerry</b>" in out.text


def test_subject_cannot_carry_a_header_injection() -> None:
    intent = m.reservation_intent("reservation_confirmed", snapshot(drop_name="X\r\nBcc: evil@example.com"),
                                  DROP, BASE, dedupe=None)
    out = Renderer().render("reservation_confirmed", Channel.EMAIL, ctx(intent))
    assert "\r" not in (out.subject or "") and "\n" not in (out.subject or "")


def test_missing_data_is_a_template_failure_naming_it() -> None:
    intent = Intent(uuid.uuid4(), "waitlist_offer", {"not_entry": {}})
    with pytest.raises(TemplateFailure, match="entry"):
        Renderer().render("waitlist_offer", Channel.EMAIL, ctx(intent))


def test_an_override_directory_replaces_single_files_and_its_errors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "payment_failed").mkdir()
    (tmp_path / "payment_failed" / "email.txt").write_text("Oops {% if %}\n")
    (tmp_path / "drop_live").mkdir()
    (tmp_path / "drop_live" / "sms.txt").write_text("LIVE: {{ drop.title }}")
    r = Renderer(tmp_path)
    pf = next(i for i in intents() if i.template == "payment_failed")
    with pytest.raises(TemplateFailure, match="syntax error in payment_failed/email.txt line 1"):
        r.render("payment_failed", Channel.EMAIL, ctx(pf))
    # the other channels of that template, and other templates, are unaffected
    assert r.render("payment_failed", Channel.SMS, ctx(pf)).text
    live = next(i for i in intents() if i.template == "drop_live")
    assert r.render("drop_live", Channel.SMS, ctx(live)).text == "LIVE: Winter Sneaker Drop"


def test_unknown_template_is_a_template_failure() -> None:
    with pytest.raises(TemplateFailure, match="unknown template"):
        Renderer().render("no_such_thing", Channel.EMAIL, {})


def test_formatters() -> None:
    assert format_when("2026-11-24T14:05:00+01:00") == "Tue 24 Nov 2026, 13:05 UTC"
    assert format_money(2550, "eur") == "25.50 EUR"
    assert format_money(5, "USD") == "0.05 USD"
    assert format_money(1500, "JPY") == "1500 JPY"


def test_email_is_multipart_with_text_html_and_the_inline_qr() -> None:
    snap = snapshot()
    intent = m.reservation_intent("reservation_confirmed", snap, DROP, BASE, dedupe=None)
    rendered = Renderer().render("reservation_confirmed", Channel.EMAIL, ctx(intent))
    nid = uuid.uuid4()
    raw = bytes(build_email(sender="DropSlot <no-reply@dropslot.test>", to="ann@example.com", message=rendered,
                            notification_id=nid, template="reservation_confirmed"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Message-ID"] == f"<{nid}@dropslot.test>"
    assert msg["X-DropSlot-Notification-Id"] == str(nid)
    assert "Tue 24 Nov 2026" in msg.get_body(("plain",)).get_content()
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1 and images[0]["Content-ID"] == f"<{QR_CID}>"
    assert images[0].get_payload(decode=True) == qr_png(snap["checkin_token"])


def test_times_are_shown_in_the_pickup_branchs_zone_when_catalog_knows_it() -> None:
    drop = m.DropInfo("Winter Sneaker Drop", None, None,
                      [{"name": "Mitte", "address": "Torstr. 1", "phone": None, "timezone": "Europe/Berlin"}])
    intent = m.reservation_intent("reservation_confirmed", snapshot(), drop, BASE, dedupe=None)
    out = Renderer().render("reservation_confirmed", Channel.EMAIL, ctx(intent))
    assert "Tue 24 Nov 2026, 15:00 CET – 15:30 CET" in out.text
    offer = Intent(uuid.uuid4(), "waitlist_offer", {"entry": m.entry_view(entry(), drop, BASE)})
    assert "14:45 CET" in (Renderer().render("waitlist_offer", Channel.PUSH, ctx(offer)).subject or "")
    # a zone catalog sent that this machine does not know falls back to UTC instead of failing
    assert format_when("2026-11-24T14:00:00Z", "Mars/Olympus_Mons") == "Tue 24 Nov 2026, 14:00 UTC"


def test_endpoint_disabled_mail_names_the_endpoint_the_reason_since_when_and_how_to_re_enable() -> None:
    [intent] = endpoint_disabled()
    out = Renderer().render("webhook_endpoint_disabled", Channel.EMAIL, ctx(intent))
    reenable = f"PATCH {BASE}/api/v1/stores/{STORE_ID}/webhook-endpoints/{ENDPOINT_ID}"
    for part in (out.text, out.html or ""):
        assert "https://erp.kicks.test/hooks" in part
        assert "no delivery to it has succeeded for too long" in part
        assert "Thu 19 Nov 2026, 08:00 UTC" in part  # failing since
        assert "HTTP 503" in part
        assert reenable in part and '{"active": true}' in part.replace("&#34;", '"')
        assert f"{BASE}/api/v1/webhook-endpoints/{ENDPOINT_ID}/events" in part
    assert "ERP <sync>" in out.text and "ERP &lt;sync&gt;" in (out.html or "")
    assert out.subject == "Webhook endpoint disabled for Kicks & Co: ERP <sync>"
    assert TEMPLATES["webhook_endpoint_disabled"].account  # goes whatever the owner's preferences


def test_endpoint_gone_without_description_store_name_or_failure_run_still_says_why() -> None:
    [intent] = endpoint_disabled(reason="gone", failing_since=None, description=None, store_name=None,
                                 last_status_code=410, last_error=None)
    out = Renderer().render("webhook_endpoint_disabled", Channel.EMAIL, ctx(intent))
    assert "410 Gone" in out.text and "failing since" not in out.text
    assert "Description" not in out.text
    assert out.subject == "Webhook endpoint disabled: https://erp.kicks.test/hooks"


def test_endpoint_disabled_mails_every_owner_once_per_disablement() -> None:
    owners = [uuid.uuid4(), uuid.uuid4()]
    common: dict = dict(store_id=STORE_ID, store_name=None, endpoint_id=ENDPOINT_ID, url="https://x.test",
                        description=None, reason="failing", last_status_code=None, last_error="timeout",
                        base_url=BASE)
    first = m.endpoint_disabled_intents(owners, failing_since="2026-11-19T08:00:00Z",
                                        disabled_at="2026-11-24T08:00:05Z", **common)
    again = m.endpoint_disabled_intents(owners, failing_since="2026-11-19T08:00:00Z",
                                        disabled_at="2026-11-24T08:00:09Z", **common)
    later = m.endpoint_disabled_intents(owners, failing_since="2026-12-01T08:00:00Z",
                                        disabled_at="2026-12-06T08:00:05Z", **common)
    assert [i.user_id for i in first] == owners
    assert {i.dedupe_key for i in first} == {i.dedupe_key for i in again}  # the same disablement
    assert {i.dedupe_key for i in first}.isdisjoint({i.dedupe_key for i in later})  # failing again later
