"""`POST /api/v1/reservations` as a pure ASGI handler: the one route a drop storm hits.

FastAPI's routing, dependency injection and response machinery cost about a millisecond of CPU
per request here, more than the reservation itself. This handler does the same as the FastAPI
route in routes.py (which stays for the OpenAPI document and as the fallback): same body rules,
same problem+json answers, same token check (the kit's verifier, with the gateway's proof), same use case. It is
one of the kit's direct routes (`ServiceApp.add_direct_route`): reached straight from uvicorn, inside the kit's
request context (request ids, the actor and metrics still apply), before any of FastAPI's layers.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import asyncpg
from dropslot_kit import context
from dropslot_kit.auth import PROOF_HEADER
from dropslot_kit.errors import PROBLEM_JSON, InvalidToken, Problem, Unauthorized, problem_body

from ..service import reserve

log = logging.getLogger("dropslot.booking.fast")

PATH = "/api/v1/reservations"
PROOF = PROOF_HEADER.encode()
MAX_BODY = 16_384
MAX_NOTE = 500
MAX_KEY = 255


UNAVAILABLE = (asyncpg.exceptions.TooManyConnectionsError, asyncpg.exceptions.ConnectionDoesNotExistError,
               asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.InterfaceError, ConnectionError, OSError)


class _Invalid(Problem):
    status, slug, title = 422, "validation-error", "Request validation failed"


def _invalid(name: str, reason: str, kind: str) -> _Invalid:
    return _Invalid("Some fields are invalid",
                    errors=[{"name": name, "reason": reason, "loc": ["body", name] if name != "body" else ["body"],
                             "type": kind}])


def parse_body(raw: bytes) -> tuple[uuid.UUID, str | None]:
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        raise _invalid("body", "JSON decode error", "json_invalid") from None
    if not isinstance(data, dict):
        raise _invalid("body", "Input should be a valid object", "model_attributes_type")
    slot = data.get("slot_id")
    if slot is None:
        raise _invalid("slot_id", "Field required", "missing")
    try:
        slot_id = uuid.UUID(slot) if isinstance(slot, str) else None
    except ValueError:
        slot_id = None
    if slot_id is None:
        raise _invalid("slot_id", "Input should be a valid UUID", "uuid_parsing")
    note = data.get("customer_note")
    if note is not None and not isinstance(note, str):
        raise _invalid("customer_note", "Input should be a valid string", "string_type")
    if note is not None and len(note) > MAX_NOTE:
        raise _invalid("customer_note", f"String should have at most {MAX_NOTE} characters", "string_too_long")
    return slot_id, note


class FastReserve:
    """The ASGI handler of `POST /api/v1/reservations` (only that method and path reach it)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        extra_headers: list[tuple[bytes, bytes]] = []
        try:
            status, body = await self._handle(scope, receive)
            ctype = b"application/json"
        except Problem as exc:
            status, ctype = exc.status, PROBLEM_JSON.encode()
            body = json.dumps(exc.body(PATH))
            extra_headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        except UNAVAILABLE as exc:
            # The database is unreachable or out of connections: nothing was written (or the
            # transaction's fate is unknown, which a retry with the same Idempotency-Key settles).
            log.warning("reserve unavailable: %r", exc)
            status, ctype = 503, PROBLEM_JSON.encode()
            body = json.dumps(problem_body(503, "service-unavailable", "Service unavailable",
                                           "try again in a moment (same Idempotency-Key)"))
            extra_headers = [(b"retry-after", b"1")]
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            status, ctype = 500, PROBLEM_JSON.encode()
            body = json.dumps(problem_body(500, "internal-error", "Internal error"))
        payload = body.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(payload)).encode()),
                                *extra_headers]})
        await send({"type": "http.response.body", "body": payload})

    async def _handle(self, scope: dict[str, Any], receive: Any) -> tuple[int, str]:
        app = scope["app"]
        auth = key = proof = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value.decode("latin-1")
            elif name == b"idempotency-key":
                key = value.decode("latin-1")
            elif name == PROOF:
                proof = value.decode("latin-1")
        if auth is None:
            raise Unauthorized("sign in first", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("Authorization must be 'Bearer <token>'")
        principal = await app.state.verifier.verify(token.strip(), proof)
        context.act_as(principal.user_id)

        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise _Invalid("request body too large")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        slot_id, note = parse_body(b"".join(chunks))
        if key is not None and (not key or len(key) > MAX_KEY):
            raise _Invalid("Idempotency-Key must be 1-255 characters",
                           errors=[{"name": "Idempotency-Key", "reason": "1-255 characters",
                                    "loc": ["header", "Idempotency-Key"], "type": "string_too_long"}])
        return await reserve.reserve(app.state.rt.extras["booking"], principal, slot_id, note, key)
