"""An HTTP-level fake of the few Stripe API endpoints the adapter uses (aiohttp), so the real
SDK's requests, form encoding, headers and error parsing are exercised end to end.

Implements: POST /v1/payment_intents, GET /v1/payment_intents/{id} (with expand[]=latest_charge),
POST /v1/payment_intents/{id}/capture, /cancel, POST /v1/refunds, honouring Idempotency-Key as
Stripe does (same key -> the stored response). Test controls: `authorize(id)` plays the
customer confirming a card, `fail_next(n)` answers the next n requests with a 500.
With `webhook_url` set, it also sends events the way Stripe does: asynchronously, signed
`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web


def _nested(form: Any) -> dict[str, Any]:
    """`metadata[a]=1&expand[0]=x` -> {"metadata": {"a": "1"}, "expand": ["x"]}."""
    out: dict[str, Any] = {}
    for key, value in form.items():
        if "[" in key:
            head, rest = key.split("[", 1)
            sub = rest.rstrip("]")
            if sub.isdigit() or sub == "":
                out.setdefault(head, []).append(value)
            else:
                out.setdefault(head, {})[sub.split("][")[0]] = value
        else:
            out[key] = value
    return out


def stripe_signature(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


class FakeStripe:
    def __init__(self, webhook_url: str | None = None, webhook_secret: str | None = None) -> None:
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.sent: list[tuple[bytes, str, int]] = []  # body, signature header, receiver's status
        self._tasks: set[asyncio.Task[None]] = set()
        self.intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, str | None, str | None]] = []  # method, path, idem key, api key
        self._fail = 0
        self.app = web.Application(middlewares=[self._middleware])
        r = self.app.router
        r.add_post("/v1/payment_intents", self.create)
        r.add_get("/v1/payment_intents/{id}", self.retrieve)
        r.add_post("/v1/payment_intents/{id}/capture", self.capture)
        r.add_post("/v1/payment_intents/{id}/cancel", self.cancel)
        r.add_post("/v1/refunds", self.refund)

    def fail_next(self, n: int) -> None:
        self._fail = n

    def _emit(self, event_type: str, obj: dict[str, Any]) -> None:
        if not self.webhook_url or not self.webhook_secret:
            return
        payload = {"id": f"evt_{secrets.token_hex(12)}", "object": "event", "type": event_type,
                   "api_version": "2024-06-20", "created": int(time.time()), "livemode": False,
                   "data": {"object": obj}}
        body = json.dumps(payload).encode()
        task = asyncio.get_running_loop().create_task(self._post(body, stripe_signature(self.webhook_secret, body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, body: bytes, header: str) -> None:
        await asyncio.sleep(0.05)
        assert self.webhook_url is not None
        async with aiohttp.ClientSession() as session, session.post(
                self.webhook_url, data=body,
                headers={"Content-Type": "application/json", "Stripe-Signature": header}) as resp:
            self.sent.append((body, header, resp.status))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        self.requests.append((request.method, request.path, key, request.headers.get("Authorization")))
        if not (request.headers.get("Authorization") or "").startswith("Bearer sk_test_"):
            return self._error(401, "invalid_request_error", None, "Invalid API Key provided")
        if self._fail > 0:
            self._fail -= 1
            return web.json_response({"error": {"type": "api_error", "message": "boom"}}, status=500)
        if request.method == "POST" and key and key in self.idempotent:
            status, body = self.idempotent[key]
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        resp = await handler(request)
        if request.method == "POST" and key and isinstance(resp, web.Response) and resp.status < 500:
            import json

            self.idempotent[key] = (resp.status, json.loads(resp.body))  # type: ignore[arg-type]
        return resp

    @staticmethod
    def _error(status: int, kind: str, code: str | None, message: str) -> web.Response:
        return web.json_response({"error": {"type": kind, "code": code, "message": message}}, status=status)

    def _view(self, pi: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        out = dict(pi)
        if "latest_charge" in expand and pi["latest_charge"]:
            out["latest_charge"] = self.charges[pi["latest_charge"]]
        return out

    async def create(self, request: web.Request) -> web.Response:
        p = _nested(await request.post())
        if p.get("capture_method") != "manual":
            return self._error(400, "invalid_request_error", "parameter_invalid", "expected manual capture")
        pid = f"pi_{secrets.token_hex(8)}"
        pi = {"id": pid, "object": "payment_intent", "amount": int(p["amount"]), "currency": p["currency"],
              "status": "requires_payment_method", "capture_method": "manual",
              "client_secret": f"{pid}_secret_{secrets.token_hex(6)}", "amount_capturable": 0, "amount_received": 0,
              "metadata": p.get("metadata", {}), "last_payment_error": None, "next_action": None,
              "cancellation_reason": None, "latest_charge": None, "created": int(time.time())}
        self.intents[pid] = pi
        return web.json_response(pi)

    async def retrieve(self, request: web.Request) -> web.Response:
        pi = self.intents.get(request.match_info["id"])
        if pi is None:
            return self._error(404, "invalid_request_error", "resource_missing", "No such payment_intent")
        return web.json_response(self._view(pi, _nested(request.query).get("expand", [])))

    def authorize(self, pid: str) -> None:
        pi = self.intents[pid]
        charge_id = f"ch_{secrets.token_hex(8)}"
        self.charges[charge_id] = {"id": charge_id, "object": "charge", "payment_intent": pid, "amount": pi["amount"],
                                   "amount_captured": 0, "amount_refunded": 0}
        pi.update(status="requires_capture", amount_capturable=pi["amount"], latest_charge=charge_id)
        self._emit("payment_intent.amount_capturable_updated", dict(pi))

    async def capture(self, request: web.Request) -> web.Response:
        pi = self.intents[request.match_info["id"]]
        if pi["status"] != "requires_capture":
            return self._error(400, "invalid_request_error", "payment_intent_unexpected_state",
                               f"This PaymentIntent could not be captured because it has a status of {pi['status']}.")
        pi.update(status="succeeded", amount_received=pi["amount"], amount_capturable=0)
        self.charges[pi["latest_charge"]]["amount_captured"] = pi["amount"]
        self._emit("payment_intent.succeeded", dict(pi))
        return web.json_response(self._view(pi, _nested(await request.post()).get("expand", [])))

    async def cancel(self, request: web.Request) -> web.Response:
        pi = self.intents[request.match_info["id"]]
        if pi["status"] in ("succeeded", "canceled", "processing"):
            return self._error(400, "invalid_request_error", "payment_intent_unexpected_state",
                               f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}.")
        p = _nested(await request.post())
        pi.update(status="canceled", cancellation_reason=p.get("cancellation_reason"), amount_capturable=0)
        self._emit("payment_intent.canceled", dict(pi))
        return web.json_response(pi)

    async def refund(self, request: web.Request) -> web.Response:
        p = _nested(await request.post())
        pi = self.intents[p["payment_intent"]]
        if pi["status"] != "succeeded":
            return self._error(400, "invalid_request_error", "payment_intent_unexpected_state", "not captured")
        charge = self.charges[pi["latest_charge"]]
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        amount = int(p.get("amount", remaining))
        if amount > remaining:
            return self._error(400, "invalid_request_error", "amount_too_large",
                               f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})")
        charge["amount_refunded"] += amount
        self._emit("charge.refunded", dict(charge))
        return web.json_response({"id": f"re_{secrets.token_hex(8)}", "object": "refund", "amount": amount,
                                  "payment_intent": pi["id"], "status": "succeeded"})
