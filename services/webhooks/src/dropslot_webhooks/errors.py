"""Problem types of the webhooks service (API.md, webhooks)."""

from __future__ import annotations

from dropslot_kit.errors import Conflict, NotFound, Problem


class UrlNotAllowedProblem(Problem):
    status, slug, title = 422, "url-not-allowed", "This URL is not allowed as a webhook endpoint"


class InvalidField(Problem):
    """A 422 shaped like the kit's request validation errors, for checks pydantic cannot do."""

    status, slug, title = 422, "validation-error", "Request validation failed"

    def __init__(self, name: str, reason: str):
        super().__init__("Some fields are invalid", errors=[{"name": name, "reason": reason}])


class EndpointLimitReached(Conflict):
    slug, title = "endpoint-limit-reached", "This store has as many webhook endpoints as it may"


class EndpointNotFound(NotFound):
    title = "No such webhook endpoint"


class DeliveryNotFound(NotFound):
    title = "No such webhook event"
