"""Unit tests of the webhook rules (no I/O)."""

from __future__ import annotations

import base64
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dropslot_contracts import all_events
from dropslot_webhooks.adapters.secretbox import SecretBox, SecretBoxError
from dropslot_webhooks.config import DEFAULT_SCHEDULE
from dropslot_webhooks.domain import filters, signing
from dropslot_webhooks.domain.schedule import next_delay, parse_retry_after
from dropslot_webhooks.domain.ssrf import AddressPolicy, UrlNotAllowed, parse_url
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

KNOWN = [c.TYPE for c in all_events()]


# --- signing -------------------------------------------------------------------------------------
def test_secret_has_prefix_and_32_random_bytes() -> None:
    s = signing.generate_secret()
    assert s.startswith("whsec_")
    assert len(signing.secret_key(s)) == 32
    assert s != signing.generate_secret()
    with pytest.raises(ValueError):
        signing.generate_secret(16)


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = signing.generate_secret()
    body = b'{"type":"booking.reservation.created","timestamp":"2026-11-24T10:00:00Z","data":{"a":1}}'
    ts = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": signing.signature_header([signing.secret_key(secret)], "msg_1", ts, body),
    }
    assert Webhook(secret).verify(body, headers)["data"] == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the body is covered by the signature
        Webhook(secret).verify(body.replace(b"1}", b"2}"), headers)


def test_both_secrets_verify_during_rotation() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b"{}"
    ts = int(datetime.now(UTC).timestamp())
    header = signing.signature_header([signing.secret_key(new), signing.secret_key(old)], "m", ts, body)
    assert len(header.split(" ")) == 2 and all(p.startswith("v1,") for p in header.split(" "))
    for secret in (old, new):
        Webhook(secret).verify(body, {"webhook-id": "m", "webhook-timestamp": str(ts), "webhook-signature": header})


def test_secret_hint_does_not_reveal_the_secret() -> None:
    s = signing.generate_secret()
    hint = signing.secret_hint(s)
    assert hint.startswith("whsec_") and len(hint) < 12 and s[6:30] not in hint


def test_invalid_secrets() -> None:
    for bad in ("nope", "whsec_", "whsec_***"):
        with pytest.raises(signing.InvalidSecret):
            signing.secret_key(bad)


# --- secret box ----------------------------------------------------------------------------------
def test_secret_box_round_trip_bound_to_endpoint_and_key_rotation() -> None:
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    box = SecretBox([k1])
    eid = uuid.uuid4()
    stored = box.encrypt("whsec_abc", eid)
    assert "whsec_abc" not in stored
    assert box.decrypt(stored, eid) == "whsec_abc"
    with pytest.raises(SecretBoxError):
        box.decrypt(stored, uuid.uuid4())  # copied onto another endpoint: refused
    rotated = SecretBox([k2, k1])  # new key first: old ciphertexts still open
    assert rotated.decrypt(stored, eid) == "whsec_abc"
    assert SecretBox([k2]).encrypt("x", eid).split(".")[1] != stored.split(".")[1]
    with pytest.raises(SecretBoxError):
        SecretBox([k2]).decrypt(stored, eid)
    assert SecretBox.from_settings([base64.b64encode(k1).decode()], "").decrypt(stored, eid) == "whsec_abc"


# --- schedule ------------------------------------------------------------------------------------
def test_schedule_without_jitter_is_the_standard_one() -> None:
    delays = [next_delay(n, DEFAULT_SCHEDULE) for n in range(1, 9)]
    assert delays == [5, 300, 1800, 7200, 18000, 36000, 36000, None]  # 8 attempts, then give up


def test_schedule_scales_and_jitters_within_bounds() -> None:
    rnd = random.Random(7)
    seen = [next_delay(2, DEFAULT_SCHEDULE, scale=0.01, jitter=0.2, rand=rnd) for _ in range(200)]
    assert all(2.4 <= d <= 3.6 for d in seen)  # 300 s * 0.01 +/- 20 %
    assert len({round(d, 3) for d in seen}) > 50  # really spread


def test_retry_after_pushes_later_never_earlier() -> None:
    assert next_delay(1, DEFAULT_SCHEDULE, retry_after=60) == 60
    assert next_delay(2, DEFAULT_SCHEDULE, retry_after=1) == 300
    assert next_delay(1, DEFAULT_SCHEDULE, retry_after=10**9, retry_after_max=3600) == 3600
    assert next_delay(8, DEFAULT_SCHEDULE, retry_after=1) is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Tue, 24 Nov 2026 10:01:30 GMT", now) == 90
    assert parse_retry_after((now - timedelta(minutes=1)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- filters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "event_type", "expected"), [
    ("booking.reservation.created", "booking.reservation.created", True),
    ("booking.reservation.created", "booking.reservation.confirmed", False),
    ("booking.reservation.*", "booking.reservation.checked_in", True),
    ("booking.reservation.*", "booking.waitlist.joined", False),
    ("booking.*", "booking.waitlist.joined", True),
    ("*", "payments.payment.succeeded", True),
    ("*.reservation.created", "booking.reservation.created", True),
    ("*.reservation.created", "booking.reservation.expired", False),
    ("#.succeeded", "payments.payment.succeeded", True),
    ("catalog.#", "catalog.drop.published", True),
])
def test_pattern_matching(pattern: str, event_type: str, expected: bool) -> None:
    assert filters.matches(pattern, event_type) is expected


def test_empty_filter_means_everything() -> None:
    assert filters.wants([], "booking.reservation.created")
    assert filters.wants(None, "payments.payment.refunded")
    assert not filters.wants(["payments.*"], "booking.reservation.created")


def test_what_a_store_can_receive() -> None:
    types = filters.deliverable_types(KNOWN)
    for t in ("booking.reservation.created", "booking.reservation.checked_in", "booking.waitlist.offered",
              "payments.payment.succeeded", "catalog.drop.published", "catalog.product.created"):
        assert t in types
    for t in ("booking.refund.requested", "identity.user.registered", "catalog.store.created",
              "webhooks.endpoint.disabled", "audit.partition.dropped"):
        assert t not in types


FILTERS = [[], ["booking.*"], ["booking.reservation.*", "payments.payment.succeeded"], ["*"], ["#.succeeded"],
           ["catalog.#"], ["*.reservation.created"], ["booking.#.created"], ["booking.reservation.checked_in"]]


@pytest.mark.parametrize("patterns", FILTERS)
def test_the_filter_as_a_regex_agrees_with_wants(patterns: list[str]) -> None:
    import re

    rx = filters.to_regex(patterns)
    for t in [*KNOWN, "a.b.c.d", "booking.x.y.created"]:
        assert (rx is None or re.match(rx, "." + t) is not None) == filters.wants(patterns, t), (patterns, t)


def test_normalize_rejects_typos_and_keeps_order() -> None:
    assert filters.normalize(["booking.reservation.*", "payments.*", "booking.reservation.*"], KNOWN) == [
        "booking.reservation.*", "payments.*"]
    for bad in ("booking.reservaton.created", "identity.user.registered", "Booking.x", "a..b", "", "a b"):
        with pytest.raises(filters.InvalidPattern):
            filters.normalize([bad], KNOWN)


# --- SSRF ----------------------------------------------------------------------------------------
POLICY = AddressPolicy()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.100.100.200", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fd00:ec2::254", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UrlNotAllowed):
        POLICY.check(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_pass(address: str) -> None:
    POLICY.check(address)


def test_allowed_networks_open_exactly_what_they_list() -> None:
    policy = AddressPolicy.from_cidrs(["127.0.0.0/8", "::1/128"])
    policy.check("127.0.0.1")
    policy.check("127.3.2.1")
    policy.check("::1")
    policy.check("::ffff:127.0.0.1")
    for addr in ("10.0.0.1", "169.254.169.254", "192.168.0.1"):
        with pytest.raises(UrlNotAllowed):
            policy.check(addr)


def test_url_syntax() -> None:
    assert parse_url("https://example.com/hook", allow_http=False).port == 443
    assert parse_url("http://example.com:8080/x", allow_http=True).port == 8080
    assert str(parse_url("https://[::1]:9/x", allow_http=False).ip_literal) == "::1"
    for bad, allow_http in (("http://example.com/", False), ("ftp://example.com/", True), ("https:///x", True),
                            ("https://2130706433/", True), ("https://127.1/", True), ("https://0x7f000001/", True),
                            ("https://example.com:99999/", True), ("example.com/hook", True),
                            ("https://exa mple.com/", True), ("https://example.com/" + "a" * 3000, True)):
        with pytest.raises(UrlNotAllowed):
            parse_url(bad, allow_http=allow_http)
