"""Problem details (RFC 9457): one exception hierarchy, mapped to problem+json once, here."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://dropslot.dev/problems/"
PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("dropslot.errors")

_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    429: "rate-limited",
    500: "internal-error",
    502: "bad-gateway",
    503: "service-unavailable",
    504: "gateway-timeout",
}


class Problem(Exception):
    """A failure the client should see. Subclass per stable problem type."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return problem_body(self.status, self.slug, self.title, self.detail, instance, **self.extra)


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Authentication required"


class InvalidToken(Unauthorized):
    slug, title = "invalid-token", "The access token is invalid or expired"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not allowed"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class InternalError(Problem):
    status, slug, title = 500, "internal-error", "Internal error"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


def problem_answer(exc: Problem, instance: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A problem as a whole answer (status, headers, compact JSON body), for handlers that answer
    outside FastAPI: the gateway, and the kit's direct routes (every refusal of a drop storm)."""
    headers = [(b"content-type", PROBLEM_JSON.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status, headers, orjson.dumps(exc.body(instance))


def problem_body(
    status: int, slug: str, title: str, detail: str | None = None, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    status: int, slug: str, title: str, detail: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        problem_body(status, slug, title, detail, **extra), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return JSONResponse(
            exc.body(request.url.path), status_code=exc.status, headers=exc.headers, media_type=PROBLEM_JSON
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "name": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body",
                "reason": e.get("msg", "invalid"),
                "loc": list(e.get("loc", ())),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        return problem_response(
            422, "validation-error", "Request validation failed", "Some fields are invalid", errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _HTTP_SLUGS.get(exc.status_code, "error")
        title = slug.replace("-", " ").capitalize()
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem_response(exc.status_code, slug, title, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(InternalError.status, InternalError.slug, InternalError.title)
