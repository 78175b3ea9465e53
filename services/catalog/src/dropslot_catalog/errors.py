"""Catalog's problem types, and the one place domain refusals become problem+json."""

from __future__ import annotations

from typing import Any

from dropslot_kit.errors import Conflict, Problem
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .domain.lifecycle import ChangeRefused, TransitionRefused


class SlugTaken(Conflict):
    slug, title = "slug-taken", "This store slug is taken"


class SkuTaken(Conflict):
    slug, title = "sku-taken", "This SKU is already used in the store"


class DropNotEditable(Conflict):
    slug, title = "drop-not-editable", "This change is refused once the drop is published"


class InvalidTransition(Conflict):
    slug, title = "invalid-transition", "The drop cannot make this move from its current state"


class ProductInactive(Conflict):
    slug, title = "product-inactive", "The drop's product is not active"


class ValidationFailed(Problem):
    """A 422 decided after the body parsed (e.g. a product of another store), in the same
    shape as the kit's request validation errors."""

    status, slug, title = 422, "validation-error", "Request validation failed"

    def __init__(self, field: str, reason: str, *, location: str = "body", **extra: Any):
        loc = [location, *field.split(".")]
        # Named like the kit's request validation errors: body fields bare, others prefixed.
        name = field if location == "body" else f"{location}.{field}"
        super().__init__(f"{field}: {reason}", errors=[{"name": name, "reason": reason, "loc": loc}], **extra)


def install(app: FastAPI) -> None:
    @app.exception_handler(TransitionRefused)
    async def _transition(request: Request, exc: TransitionRefused) -> JSONResponse:
        p = InvalidTransition(exc.reason, current_status=str(exc.current), target_status=str(exc.target))
        return _json(p, request)

    @app.exception_handler(ChangeRefused)
    async def _change(request: Request, exc: ChangeRefused) -> JSONResponse:
        p = DropNotEditable(
            str(exc),
            drop_status=str(exc.status) if exc.status else None,
            refused=[{"name": r.field, "reason": r.reason} for r in exc.refusals],
        )
        return _json(p, request)


def _json(p: Problem, request: Request) -> JSONResponse:
    from dropslot_kit.errors import PROBLEM_JSON

    return JSONResponse(p.body(request.url.path), status_code=p.status, media_type=PROBLEM_JSON)
