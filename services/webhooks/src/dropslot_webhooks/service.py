"""Use cases of the webhooks service: managing endpoints, fanning events out to them, the
delivery log and replays. Routes and consumers are thin wrappers around these."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dropslot_contracts import Envelope, all_events
from dropslot_contracts.events.webhooks import (
    EndpointCreated,
    EndpointDeleted,
    EndpointSecretRotated,
    EndpointUpdated,
)
from dropslot_kit import telemetry
from dropslot_kit.auth import Principal
from dropslot_kit.db import Database, UnitOfWork
from dropslot_kit.memberships import OWNER, authorize_store

from .adapters import repository as repo
from .adapters.secretbox import SecretBox
from .config import Settings
from .domain import filters, signing
from .domain.ssrf import AddressPolicy, UrlNotAllowed, parse_url
from .errors import DeliveryNotFound, EndpointLimitReached, EndpointNotFound, InvalidField, UrlNotAllowedProblem

RESOLVE_TIMEOUT = 3.0


def event_timestamp(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def delivery_body(env: Envelope) -> str:
    """The body receivers get: `{type, timestamp, data}`, compact."""
    return json.dumps(
        {"type": env.type, "timestamp": event_timestamp(env.occurred_at), "data": env.data},
        separators=(",", ":"), ensure_ascii=False,
    )


def store_of(env: Envelope) -> uuid.UUID | None:
    """Producers put the store on the envelope; older or odd events carry it in the data."""
    if env.store_id is not None:
        return env.store_id
    d = env.data
    for candidate in (d.get("store_id"), *(d.get(k, {}).get("store_id") for k in ("reservation", "drop", "entry")
                                            if isinstance(d.get(k), dict))):
        if candidate:
            try:
                return uuid.UUID(str(candidate))
            except ValueError:
                return None
    return None


def redact_url(url: str) -> str:
    """URLs in events and logs lose any password (events go to the audit log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- cursors -------------------------------------------------------------------------------------
def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode("|".join(str(p) for p in parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, n: int) -> list[str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidField("cursor", "not a cursor from this list") from None
    parts = raw.split("|")
    if len(parts) != n:
        raise InvalidField("cursor", "not a cursor from this list")
    return parts


async def fan_out(env: Envelope, uow: UnitOfWork) -> int:
    """One delivery per matching active endpoint of the event's store, written in the
    consumer's transaction (with its inbox row), so an event is fanned out exactly once."""
    if not filters.deliverable(env.type):
        return 0
    store_id = store_of(env)
    if store_id is None:
        return 0
    # The consumer's span continues the request's trace; deliveries made later carry it on.
    return await repo.fan_out(uow.conn, store_id=store_id, event_id=env.id, event_type=env.type,
                              payload=delivery_body(env), occurred_at=env.occurred_at,
                              traceparent=telemetry.current_traceparent())


# --- views ---------------------------------------------------------------------------------------
def endpoint_view(row: dict[str, Any], *, secret: str | None = None) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "store_id": row["store_id"],
        "url": row["url"],
        "description": row["description"],
        "event_types": list(row["event_types"] or []),
        "active": row["active"],
        "secret_hint": row["secret_hint"],
        "previous_secret_expires_at": row["previous_secret_expires_at"],
        "failing_since": row["failing_since"],
        "disabled_reason": row["disabled_reason"],
        "disabled_at": row["disabled_at"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if secret is not None:
        out["secret"] = secret
    return out


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "endpoint_id": row["endpoint_id"],
        "event_id": row["event_id"],
        "type": row["type"],
        "delivery_status": row["delivery_status"],
        "attempt_count": row["attempt_count"],
        "retry_count": row["retry_count"],
        "next_attempt_at": row["next_attempt_at"] if row["delivery_status"] == "pending" else None,
        "last_attempt_at": row["last_attempt_at"],
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "delivered_at": row["delivered_at"],
        "occurred_at": row["occurred_at"],
        "created_at": row["created_at"],
        "payload": json.loads(row["payload"]),
    }


def attempt_view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "attempt_number", "url", "started_at", "duration_ms", "status_code",
                                "success", "response_body", "error")}


@dataclass
class EndpointInput:
    url: str
    event_types: list[str]
    description: str | None
    active: bool = True


class Webhooks:
    """Everything the API and the consumer do, bound to one service's settings and database."""

    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db
        self.policy = AddressPolicy.from_cidrs(settings.webhooks_allowed_networks)
        self.box = SecretBox.from_settings(settings.webhooks_secret_keys, settings.db_password)
        self.known_types = [cls.TYPE for cls in all_events()]

    # --- validation at the edge ------------------------------------------------------------------
    async def check_url(self, url: str) -> str:
        """Refuse URLs we will not deliver to: bad scheme, or a host that is (or resolves to) a
        loopback/private/link-local/metadata address outside the allowed networks. A name that
        does not resolve now is accepted: it is checked again at every connect."""
        try:
            dest = parse_url(url, allow_http=self.settings.webhooks_allow_http)
            if dest.ip_literal is not None:
                self.policy.check(dest.ip_literal)
                return dest.url
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(dest.host, dest.port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
                )
            except (OSError, TimeoutError):
                return dest.url
            for info in infos:
                try:
                    self.policy.check(str(info[4][0]))
                except UrlNotAllowed:
                    # Not which address: the API must not become a window on internal DNS.
                    raise UrlNotAllowed(f"{dest.host} resolves to an address that is not public") from None
            return dest.url
        except UrlNotAllowed as exc:
            raise UrlNotAllowedProblem(str(exc)) from None

    def check_event_types(self, event_types: list[str]) -> list[str]:
        try:
            return filters.normalize(event_types, self.known_types)
        except filters.InvalidPattern as exc:
            raise InvalidField("event_types", str(exc)) from None

    # --- endpoints -------------------------------------------------------------------------------
    async def _authorize_store(self, uow: UnitOfWork, principal: Principal, store_id: uuid.UUID) -> None:
        await authorize_store(uow.conn, principal, store_id, OWNER)
        await repo.scope_store(uow.conn, store_id)

    async def _authorize_endpoint(
        self, uow: UnitOfWork, principal: Principal, endpoint_id: uuid.UUID, store_id: uuid.UUID | None,
        *, for_update: bool = False,
    ) -> dict[str, Any]:
        owner_store = await repo.endpoint_store(uow.conn, endpoint_id)
        if owner_store is None or (store_id is not None and owner_store != store_id):
            raise EndpointNotFound()
        await self._authorize_store(uow, principal, owner_store)
        row = await repo.get_endpoint(uow.conn, endpoint_id, for_update=for_update)
        if row is None:
            raise EndpointNotFound()
        return row

    async def _authorize_only(self, principal: Principal, store_id: uuid.UUID | None,
                              endpoint_id: uuid.UUID | None = None) -> None:
        """Outsiders get their 404 before any validation (no DNS lookups on their behalf)."""
        async with self.db.uow() as uow:
            if endpoint_id is not None:
                await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
            elif store_id is not None:
                await self._authorize_store(uow, principal, store_id)

    async def create_endpoint(self, principal: Principal, store_id: uuid.UUID, data: EndpointInput) -> dict[str, Any]:
        await self._authorize_only(principal, store_id)
        event_types = self.check_event_types(data.event_types)
        url = await self.check_url(data.url)
        secret = signing.generate_secret()
        endpoint_id = uuid.uuid4()
        async with self.db.uow() as uow:
            await self._authorize_store(uow, principal, store_id)
            if await repo.count_endpoints(uow.conn, store_id) >= self.settings.webhooks_max_endpoints_per_store:
                raise EndpointLimitReached(limit=self.settings.webhooks_max_endpoints_per_store)
            row = await repo.insert_endpoint(uow.conn, {
                "id": endpoint_id, "store_id": store_id, "url": url, "description": data.description,
                "event_types": event_types, "event_type_regex": filters.to_regex(event_types), "active": data.active,
                "secret": self.box.encrypt(secret, endpoint_id), "secret_hint": signing.secret_hint(secret),
                "created_by": principal.user_id,
            })
            uow.emit(EndpointCreated(endpoint_id=endpoint_id, store_id=store_id, url=redact_url(url),
                                     event_types=event_types, description=data.description),
                     store_id=store_id)
        return endpoint_view(row, secret=secret)

    async def list_endpoints(
        self, principal: Principal, store_id: uuid.UUID, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        after = None
        if (parts := decode_cursor(cursor, 2)) is not None:
            try:
                after = (datetime.fromisoformat(parts[0]), uuid.UUID(parts[1]))
            except ValueError:
                raise InvalidField("cursor", "not a cursor from this list") from None
        async with self.db.uow() as uow:
            await self._authorize_store(uow, principal, store_id)
            rows = await repo.list_endpoints(uow.conn, store_id, limit + 1, after)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(page[-1]["created_at"].isoformat(), page[-1]["id"]) if more else None
        return {"items": [endpoint_view(r) for r in page], "next_cursor": next_cursor}

    async def get_endpoint(
        self, principal: Principal, endpoint_id: uuid.UUID, store_id: uuid.UUID | None = None
    ) -> dict[str, Any]:
        async with self.db.uow() as uow:
            row = await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
        return endpoint_view(row)

    async def update_endpoint(
        self, principal: Principal, endpoint_id: uuid.UUID, changes: dict[str, Any], store_id: uuid.UUID | None = None
    ) -> dict[str, Any]:
        await self._authorize_only(principal, store_id, endpoint_id)
        if "url" in changes:
            if changes["url"] is None:
                raise InvalidField("url", "url cannot be null")
            changes["url"] = await self.check_url(changes["url"])
        if "event_types" in changes:
            changes["event_types"] = self.check_event_types(changes["event_types"] or [])
            changes["event_type_regex"] = filters.to_regex(changes["event_types"])
        if "active" in changes and changes["active"] is None:
            raise InvalidField("active", "active cannot be null")
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id, for_update=True)
            row = await repo.update_endpoint(uow.conn, endpoint_id, changes)
            if row is None:
                raise EndpointNotFound()
            if changes.get("active") is True:
                await repo.notify_workers(uow.conn)  # its waiting deliveries may go now
            uow.emit(EndpointUpdated(endpoint_id=endpoint_id, store_id=row["store_id"], url=redact_url(row["url"]),
                                     active=row["active"], event_types=list(row["event_types"] or [])),
                     store_id=row["store_id"])
        return endpoint_view(row)

    async def delete_endpoint(
        self, principal: Principal, endpoint_id: uuid.UUID, store_id: uuid.UUID | None = None
    ) -> None:
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id, for_update=True)
            row = await repo.delete_endpoint(uow.conn, endpoint_id)
            if row is None:
                raise EndpointNotFound()
            uow.emit(EndpointDeleted(endpoint_id=endpoint_id, store_id=row["store_id"], url=redact_url(row["url"])),
                     store_id=row["store_id"])

    async def rotate_secret(
        self, principal: Principal, endpoint_id: uuid.UUID, grace_seconds: float | None,
        store_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        """A new secret signs from now on; the old one keeps signing beside it for the grace
        period, so receivers can switch without dropping a delivery. Rotating again within the
        grace period retires the oldest secret at once (two secrets at most)."""
        grace = self.settings.webhooks_secret_grace_seconds if grace_seconds is None else grace_seconds
        secret = signing.generate_secret()
        async with self.db.uow() as uow:
            row = await self._authorize_endpoint(uow, principal, endpoint_id, store_id, for_update=True)
            previous, expires = None, None
            if grace > 0:
                previous, expires = row["secret"], datetime.now(UTC) + timedelta(seconds=grace)
            row2 = await repo.rotate_secret(uow.conn, endpoint_id, self.box.encrypt(secret, endpoint_id),
                                            signing.secret_hint(secret), previous, expires)
            assert row2 is not None
            uow.emit(EndpointSecretRotated(endpoint_id=endpoint_id, store_id=row2["store_id"],
                                           url=redact_url(row2["url"])), store_id=row2["store_id"])
        return endpoint_view(row2, secret=secret)

    # --- delivery log and replay -----------------------------------------------------------------
    async def list_events(
        self, principal: Principal, endpoint_id: uuid.UUID, limit: int, cursor: str | None,
        status: str | None, event_type: str | None, store_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        before = None
        if (parts := decode_cursor(cursor, 1)) is not None:
            try:
                before = int(parts[0])
            except ValueError:
                raise InvalidField("cursor", "not a cursor from this list") from None
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
            rows = await repo.list_events(uow.conn, endpoint_id, limit + 1, before, status, event_type)
        page, more = rows[:limit], len(rows) > limit
        return {"items": [event_view(r) for r in page], "next_cursor": encode_cursor(page[-1]["seq"]) if more else None}

    async def get_event(
        self, principal: Principal, endpoint_id: uuid.UUID, delivery_id: uuid.UUID, store_id: uuid.UUID | None = None
    ) -> dict[str, Any]:
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
            row = await repo.get_event(uow.conn, endpoint_id, delivery_id)
        if row is None:
            raise DeliveryNotFound()
        return event_view(row)

    async def list_attempts(
        self, principal: Principal, endpoint_id: uuid.UUID, delivery_id: uuid.UUID, limit: int,
        cursor: str | None, store_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        after = None
        if (parts := decode_cursor(cursor, 1)) is not None:
            try:
                after = int(parts[0])
            except ValueError:
                raise InvalidField("cursor", "not a cursor from this list") from None
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
            delivery = await repo.get_event(uow.conn, endpoint_id, delivery_id)
            if delivery is None:
                raise DeliveryNotFound()
            rows = await repo.list_attempts(uow.conn, delivery["id"], limit + 1, after)
        page, more = rows[:limit], len(rows) > limit
        next_cursor = encode_cursor(page[-1]["id"]) if more else None
        return {"items": [attempt_view(r) for r in page], "next_cursor": next_cursor}

    async def replay_event(
        self, principal: Principal, endpoint_id: uuid.UUID, delivery_id: uuid.UUID, store_id: uuid.UUID | None = None
    ) -> dict[str, Any]:
        """Send one event again, now, on a fresh retry schedule. It keeps its webhook-id: it is
        the same event, and receivers that already processed it can recognise it."""
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
            row = await repo.requeue_event(uow.conn, endpoint_id, delivery_id)
        if row is None:
            raise DeliveryNotFound()
        return event_view(row)

    async def replay_since(
        self, principal: Principal, endpoint_id: uuid.UUID, since: datetime, only_failed: bool,
        store_id: uuid.UUID | None = None,
    ) -> dict[str, Any]:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        async with self.db.uow() as uow:
            await self._authorize_endpoint(uow, principal, endpoint_id, store_id)
            n = await repo.requeue_since(uow.conn, endpoint_id, since, only_failed)
        return {"endpoint_id": endpoint_id, "since": since, "only_failed": only_failed, "replayed": n}
