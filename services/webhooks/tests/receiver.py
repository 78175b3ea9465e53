"""Real HTTP receivers on loopback for webhook tests, and event builders."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from dropslot_contracts import Envelope
from dropslot_contracts.events.booking import ReservationCreated, ReservationSnapshot
from standardwebhooks.webhooks import Webhook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verify(self, secret: str) -> Any:
        """What a receiver using the standardwebhooks library does (raises if not genuine)."""
        return Webhook(secret).verify(self.body, self.headers)


Behaviour = Callable[[Received, int], Awaitable[web.Response] | web.Response]


def ok(_: Received, __: int) -> web.Response:
    return web.Response(status=204)


@dataclass
class Receiver:
    """Records every request; `behaviour(request, n)` (n = 1-based request count) answers."""

    behaviour: Behaviour = ok
    port: int = field(default_factory=free_port)
    path: str = "/hook"
    requests: list[Received] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Received({k.lower(): v for k, v in request.headers.items()}, await request.read(), time.time())
        self.requests.append(rec)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            result = self.behaviour(rec, len(self.requests))
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]
        finally:
            self.inflight -= 1

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        return [r.id for r in self.requests]

    def types(self) -> list[str]:
        import json

        return [json.loads(r.body)["type"] for r in self.requests]


def reservation_snapshot(store_id: uuid.UUID, **extra: Any) -> ReservationSnapshot:
    start = datetime.now(UTC) + timedelta(days=1)
    fields: dict[str, Any] = dict(
        reservation_id=uuid.uuid4(), slot_id=uuid.uuid4(), drop_id=uuid.uuid4(), store_id=store_id,
        user_id=uuid.uuid4(), state="CONFIRMED", slot_start=start, slot_end=start + timedelta(minutes=30),
        amount_cents=0, currency="EUR", requires_payment=False,
    )
    return ReservationSnapshot(**{**fields, **extra})


def reservation_envelope(store_id: uuid.UUID) -> Envelope:
    return Envelope.wrap(ReservationCreated(reservation=reservation_snapshot(store_id)), producer="booking",
                         store_id=store_id, tenant_key=f"t-{store_id.hex[:8]}")


def envelope_of_type(event_type: str, store_id: uuid.UUID, **data: Any) -> Envelope:
    """A store event of any type (the data is what our fan-out needs, not a full payload)."""
    return Envelope(type=event_type, producer=event_type.split(".")[0], store_id=store_id,
                    data={"store_id": str(store_id), **data})
