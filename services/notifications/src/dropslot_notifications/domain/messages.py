"""From an event's data to the messages it asks for (pure: the caller supplies the local
copies it needs). Every payload carries every key its templates use, `None` where the data
is unknown, so a template's `{% if %}` decides and a genuinely missing key is a bug the
renderer reports.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .model import TEMPLATES, Intent

# Payload key of a reservation message written while the local copy of its drop did not exist
# yet (catalog's events travel in another queue): the drop's id, so the sender can look the
# drop up again when it sends (see `with_drop`).
AWAITING_DROP = "awaiting_drop"

CANCEL_REASONS = {
    "customer": "as you asked",
    "store": "by the store",
    "payment_failed": "because the payment did not go through",
    "drop_cancelled": "because the drop was cancelled",
    "expired": "because the hold expired",
}

ENDPOINT_DISABLED_REASONS = {
    "gone": "it answered 410 Gone, which tells senders the endpoint no longer exists",
    "failing": "no delivery to it has succeeded for too long",
}


@dataclass(frozen=True)
class DropInfo:
    """What the local copy of catalog's drops knows about one drop."""

    name: str | None = None
    product_name: str | None = None
    store_name: str | None = None
    branches: list[dict[str, Any]] = field(default_factory=list)


def _absolute(base_url: str, url: str | None) -> str | None:
    if not url:
        return None
    return base_url.rstrip("/") + url if url.startswith("/") else url


def _branches(raw: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {"name": b.get("name") or "", "address": b.get("address") or "", "phone": b.get("phone"),
         "timezone": b.get("timezone") or (b.get("opening_hours") or {}).get("timezone")}
        for b in (raw or [])
    ]


def _tz(branches: list[dict[str, Any]]) -> str | None:
    """The zone times are shown in: the (first) pickup branch's, if catalog knows it."""
    return next((b["timezone"] for b in branches if b.get("timezone")), None)


def _described(drop_name: str | None, product_name: str | None, store_name: str | None,
               branches: list[dict[str, Any]]) -> dict[str, Any]:
    """The part of a reservation view that the drop can supply."""
    return {
        "title": drop_name or product_name or "your reservation",
        "drop_name": drop_name,
        "product_name": product_name,
        "store_name": store_name,
        "branches": branches,
        "tz": _tz(branches),
    }


def reservation_view(snap: dict[str, Any], drop: DropInfo | None, base_url: str) -> dict[str, Any]:
    drop = drop or DropInfo()
    rid = str(snap["reservation_id"])
    drop_id = snap.get("drop_id")
    base = base_url.rstrip("/")
    branches = _branches(snap.get("branches") if snap.get("branches") is not None else drop.branches)
    return {
        "id": rid,
        "state": snap.get("state"),
        "drop_id": str(drop_id) if drop_id else None,
        **_described(snap.get("drop_name") or drop.name, snap.get("product_name") or drop.product_name,
                     snap.get("store_name") or drop.store_name, branches),
        "slot_start": snap.get("slot_start"),
        "slot_end": snap.get("slot_end"),
        "amount_cents": snap.get("amount_cents") or 0,
        "currency": snap.get("currency") or "",
        "requires_payment": bool(snap.get("requires_payment")),
        "expires_at": snap.get("expires_at"),
        "qr_code_url": _absolute(base_url, snap.get("qr_code_url")),
        "checkin_token": snap.get("checkin_token"),
        "url": f"{base}/reservations/{rid}",
        "drop_url": f"{base}/drops/{drop_id}" if drop_id else base,
    }


def unknown_reservation(reservation_id: uuid.UUID | str, base_url: str) -> dict[str, Any]:
    """For a payment event about a reservation no booking event has told us about yet."""
    return reservation_view({"reservation_id": reservation_id}, None, base_url)


def entry_view(entry: dict[str, Any], drop: DropInfo | None, base_url: str, *,
               reason: str | None = None) -> dict[str, Any]:
    drop = drop or DropInfo()
    eid = str(entry["entry_id"])
    drop_name = entry.get("drop_name") or drop.name
    product_name = entry.get("product_name") or drop.product_name
    return {
        "id": eid,
        "slot_id": str(entry["slot_id"]) if entry.get("slot_id") else None,
        "drop_id": str(entry["drop_id"]) if entry.get("drop_id") else None,
        "title": drop_name or product_name or "your drop",
        "drop_name": drop_name,
        "product_name": product_name,
        "store_name": entry.get("store_name") or drop.store_name,
        # Why an entry left the line without a seat (booking.waitlist.lapsed): None or
        # "offer_expired" = an offer ran out; anything else = the line closed.
        "reason": reason,
        "position": entry.get("position"),
        "state": entry.get("state"),
        "offer_expires_at": entry.get("offer_expires_at"),
        "slot_start": entry.get("slot_start"),
        "slot_end": entry.get("slot_end"),
        "tz": _tz(_branches(drop.branches)),
        "url": f"{base_url.rstrip('/')}/waitlist/{eid}",
    }


def drop_view(snap: dict[str, Any], store_name: str | None, base_url: str) -> dict[str, Any]:
    drop_id = str(snap["drop_id"])
    return {
        "id": drop_id,
        "title": snap.get("name") or snap.get("product_name") or "A drop",
        "product_name": snap.get("product_name"),
        "store_name": snap.get("store_name") or store_name,
        "starts_at": snap.get("starts_at"),
        "ends_at": snap.get("ends_at"),
        "tz": _tz(_branches(snap.get("branches"))),
        "url": f"{base_url.rstrip('/')}/drops/{drop_id}",
    }


def account_link(base_url: str, path: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{path}?token={quote(token, safe='')}"


def verification_intent(
    *, user_id: uuid.UUID, email: str, name: str | None, token: str, expires_at: str | None,
    welcome: bool, base_url: str, path: str,
) -> Intent:
    payload = {"name": name, "email": email, "token": token, "expires_at": expires_at, "welcome": welcome,
               "link": account_link(base_url, path, token)}
    return Intent(user_id, "email_verification", payload, email=email)


def password_reset_intent(
    *, user_id: uuid.UUID, email: str, name: str | None, token: str, expires_at: str | None,
    base_url: str, path: str,
) -> Intent:
    payload = {"name": name, "email": email, "token": token, "expires_at": expires_at,
               "link": account_link(base_url, path, token)}
    return Intent(user_id, "password_reset", payload, email=email)


def password_changed_intent(
    *, user_id: uuid.UUID, email: str | None, name: str | None, reason: str | None, at: str | None, base_url: str,
) -> Intent:
    payload = {"name": name, "email": email, "reason": reason, "changed_at": at,
               "reset_url": f"{base_url.rstrip('/')}/forgot-password"}
    return Intent(user_id, "password_changed", payload, email=email)


def reservation_intent(
    template: str, snap: dict[str, Any], drop: DropInfo | None, base_url: str, *,
    dedupe: str | None, extra: dict[str, Any] | None = None,
) -> Intent:
    payload = {"reservation": reservation_view(snap, drop, base_url), **(extra or {})}
    if drop is None and snap.get("drop_id") and TEMPLATES[template].waits_for_drop:
        payload[AWAITING_DROP] = str(snap["drop_id"])
    return Intent(uuid.UUID(str(snap["user_id"])), template, payload, dedupe_key=dedupe)


def with_drop(payload: dict[str, Any], drop: DropInfo) -> dict[str, Any]:
    """A reservation message's payload written before its drop was known, completed from the
    local copy of the drop found at send time (what the reservation event carried still wins)."""
    view = payload["reservation"]
    described = _described(view.get("drop_name") or drop.name, view.get("product_name") or drop.product_name,
                           view.get("store_name") or drop.store_name,
                           view.get("branches") or _branches(drop.branches))
    return {**payload, "reservation": {**view, **described}}


def cancellation(reason: str, refund: bool) -> dict[str, Any]:
    return {"reason": reason, "refund": refund, "reason_text": CANCEL_REASONS.get(reason, f"({reason})")}


def endpoint_disabled_intents(
    owners: list[uuid.UUID], *, store_id: uuid.UUID, store_name: str | None, endpoint_id: uuid.UUID, url: str,
    description: str | None, reason: str, failing_since: str | None, last_status_code: int | None,
    last_error: str | None, disabled_at: str | None, base_url: str,
) -> list[Intent]:
    """One mail per owner of the store. The dedupe key names the disablement (endpoint and the
    start of its failure run, or when it was switched off): a second event about the same one
    mails nobody twice, while the same endpoint failing again after a re-enable does."""
    api = f"{base_url.rstrip('/')}/api/v1"
    payload = {
        "store": {"id": str(store_id), "name": store_name},
        "endpoint": {
            "id": str(endpoint_id), "url": url, "description": description, "reason": reason,
            "reason_text": ENDPOINT_DISABLED_REASONS.get(reason, f"({reason})"),
            "failing_since": failing_since, "disabled_at": disabled_at,
            "last_status_code": last_status_code, "last_error": last_error,
        },
        # API.md: owners re-enable an endpoint with PATCH {active: true}; what waited is then delivered.
        "reenable": {
            "method": "PATCH", "url": f"{api}/stores/{store_id}/webhook-endpoints/{endpoint_id}",
            "body": '{"active": true}',
        },
        "events_url": f"{api}/webhook-endpoints/{endpoint_id}/events",
    }
    dedupe = f"{endpoint_id}:{failing_since or disabled_at}"
    return [Intent(owner, "webhook_endpoint_disabled", payload, dedupe_key=dedupe) for owner in owners]
