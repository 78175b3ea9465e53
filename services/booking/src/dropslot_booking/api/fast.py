"""`POST /api/v1/reservations` and `GET /api/v1/slots/{slot_id}` as kit direct routes: what a
drop storm hits (reserving, and reloading a slot's availability).

FastAPI's routing, dependency injection and response machinery cost about a millisecond of CPU
per request here, more than the reservation itself. This handler does the same as the FastAPI
route in routes.py (which stays for the OpenAPI document and as the fallback while tracing is
on): same body rules, same problem+json answers, same token check (the kit's verifier, with the
gateway's proof), same use case. The kit gives it the whole request, inside the request context
(request ids, the actor and metrics still apply), straight from the parsed request
(`ServiceApp.add_direct_route`, `serving.DirectHttpProtocol`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import orjson
from dropslot_kit import context, refusals
from dropslot_kit.app import DirectAnswer, DirectRequest
from dropslot_kit.auth import PROOF_HEADER
from dropslot_kit.errors import (
    Forbidden,
    InternalError,
    InvalidToken,
    PayloadTooLarge,
    Problem,
    ServiceUnavailable,
    Unauthorized,
    problem_answer,
)
from pydantic import TypeAdapter, ValidationError

from ..errors import SoldOut
from ..service import reserve, slots

log = logging.getLogger("dropslot.booking.fast")

PATH = "/api/v1/reservations"
SLOT_PATH = "/api/v1/slots/{slot_id}"
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
        data = orjson.loads(raw) if raw else None
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


async def reserve_answer(req: DirectRequest) -> DirectAnswer:
    """The answer to `POST /api/v1/reservations` (only that method and path reach it)."""
    try:
        status, body = await _reserve(req)
        return status, [(b"content-type", b"application/json")], body.encode()
    except SoldOut as exc:
        answer = problem_answer(exc, PATH)
        _mark_repeatable(req, exc, answer[1])
        return answer
    except Exception as exc:
        # Unavailable: nothing was written (or the transaction's fate is unknown, which a retry
        # with the same Idempotency-Key settles).
        return _failed(exc, "POST", PATH, "try again in a moment (same Idempotency-Key)")


def _failed(exc: Exception, method: str, path: str, retry: str) -> DirectAnswer:
    """A direct handler's answer to what it raised: its problem; 503 (`retry` as the detail) when
    the database is unreachable or out of connections; otherwise a 500, logged."""
    if isinstance(exc, Problem):
        return problem_answer(exc, path)
    if isinstance(exc, UNAVAILABLE):
        log.warning("%s %s unavailable: %r", method, path, exc)
        return problem_answer(ServiceUnavailable(retry, headers={"Retry-After": "1"}), path)
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return problem_answer(InternalError(), path)


async def _reserve(req: DirectRequest) -> tuple[int, str]:
    state = req.app.state
    auth = key = proof = None
    for name, value in req.headers:
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
    principal = await state.verifier.verify(token.strip(), proof)
    context.act_as(principal.user_id)
    slot_id, note = parse_body(req.body)
    if key is not None and (not key or len(key) > MAX_KEY):
        raise _Invalid("Idempotency-Key must be 1-255 characters",
                       errors=[{"name": "Idempotency-Key", "reason": "1-255 characters",
                                "loc": ["header", "Idempotency-Key"], "type": "string_too_long"}])
    return await reserve.reserve(state.rt.extras["booking"], principal, slot_id, note, key)


def _mark_repeatable(req: DirectRequest, exc: SoldOut, headers: list[tuple[bytes, bytes]]) -> None:
    """Tell the gateway it may give this same refusal itself, for as long as this replica's slot
    cache would give it (kit refusals)."""
    slot_id = exc.extra.get("slot_id")
    if not isinstance(slot_id, str):
        return
    bk = req.app.state.rt.extras["booking"]
    for_how_long = bk.slot_cache.sold_out_for(uuid.UUID(slot_id), bk.clock())
    if for_how_long is not None:
        seconds, verified_only = for_how_long
        seconds = min(seconds, bk.settings.booking_repeat_refusal_seconds)
        if seconds > 0:
            headers.append(refusals.directive(slot_id, seconds, verified_only))


def _lookup_keys(body: bytes) -> list[tuple[uuid.UUID, str]]:
    try:
        data = orjson.loads(body)
        pairs = data["keys"]
        if not isinstance(pairs, list):
            raise TypeError
        out = []
        for user_id, key in pairs:
            if not isinstance(user_id, str) or not isinstance(key, str):
                raise TypeError
            out.append((uuid.UUID(user_id), key))
    except (ValueError, TypeError, KeyError):
        raise _invalid("keys", 'expected {"keys": [[user id, Idempotency-Key], ...]}', "value_error") from None
    if len(out) > refusals.MAX_LOOKUP:
        raise PayloadTooLarge(f"at most {refusals.MAX_LOOKUP} keys per lookup")
    return out


async def lookup_answer(req: DirectRequest) -> DirectAnswer:
    """`POST /internal/v1/idempotency-lookups`, for the gateway only (kit refusals): which of these
    (person, Idempotency-Key) pairs have a stored answer, as `{"found": [their indexes]}`. The
    body must carry the gateway's proof (it is not a path the gateway routes from outside)."""
    path = refusals.LOOKUP_PATH
    try:
        proof = next((v.decode("latin-1") for k, v in req.headers if k == PROOF), None)
        if not req.app.state.verifier.vouched(req.body.decode("latin-1"), proof):
            raise Forbidden("only the gateway may ask this")
        pairs = _lookup_keys(req.body)
        bk = req.app.state.rt.extras["booking"]
        stored = await asyncio.gather(*(bk.stored_answer(user_id, key) for user_id, key in pairs))
        found = [i for i, answer in enumerate(stored) if answer is not None]
        return 200, [(b"content-type", b"application/json")], orjson.dumps({"found": found})
    except Exception as exc:
        return _failed(exc, "POST", path, "try again in a moment")


_UUID = TypeAdapter(uuid.UUID)


def _slot_id(param: str | None) -> uuid.UUID:
    """The path's slot id, refused as FastAPI refuses a bad `slot_id: uuid.UUID` (same message)."""
    try:
        return _UUID.validate_python(param or "")
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
    raise _Invalid("Some fields are invalid",
                   errors=[{"name": "path.slot_id", "reason": reason, "loc": ["path", "slot_id"],
                            "type": "uuid_parsing"}])


async def slot_answer(req: DirectRequest) -> DirectAnswer:
    """The answer to `GET /api/v1/slots/{slot_id}` (public, no token): the FastAPI route's
    (`service.slots.get`, one statement) without FastAPI's layers. Always a fresh read, never a
    cached one: whoever has just reserved sees their seat gone."""
    path = SLOT_PATH.replace("{slot_id}", req.param or "")
    try:
        slot_id = _slot_id(req.param)
    except _Invalid as exc:
        return problem_answer(exc)  # as FastAPI's validation answer: no instance
    try:
        body = await slots.get(req.app.state.rt.extras["booking"], slot_id)
        return 200, [(b"content-type", b"application/json")], orjson.dumps(body)
    except Exception as exc:
        return _failed(exc, "GET", path, "try again in a moment")
