"""The app factory every service uses: health, readiness, metrics, problem+json, request
context, and a lifespan that runs the database, broker, consumers, outbox relay and the
service's own background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dropslot_contracts import Actor
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import context, heap, telemetry
from .auth import JWKSVerifier
from .broker import EventConsumers, Messaging
from .context import CallContext
from .db import Database
from .errors import PayloadTooLarge, install_problem_handlers, problem_answer, problem_response
from .outbox import OutboxRelay
from .settings import KitSettings

log = logging.getLogger("dropslot.app")

Background = Callable[["ServiceRuntime"], Awaitable[None]]


@dataclass
class ServiceRuntime:
    settings: KitSettings
    db: Database | None
    messaging: Messaging
    relay: OutboxRelay | None
    verifier: JWKSVerifier
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


async def supervise(name: str, loop: Callable[[], Awaitable[None]], *, restart_delay: float = 1.0) -> None:
    """Keep a background loop running; a crash is logged and the loop restarted."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s crashed; restarting in %.0fs", name, restart_delay)
            await asyncio.sleep(restart_delay)


def _client_ip(client: tuple[str, int] | None, headers: dict[bytes, bytes]) -> str | None:
    # The gateway resolves the caller's address (trusting only its configured proxies) and
    # overwrites X-Real-IP; a client-supplied X-Forwarded-For is not believed.
    real = headers.get(b"x-real-ip")
    if real:
        return real.decode()
    return client[0] if client else None


def enter_request(headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None) -> tuple[Any, str]:
    """The request's context (request id, the actor's ip and user agent) for what it calls:
    (a token for `context.reset`, the request id)."""
    named = dict(headers)
    request_id = (named.get(b"x-request-id") or uuid.uuid4().hex.encode()).decode()
    ua = named.get(b"user-agent")
    token = context.set_current(
        CallContext(
            actor=Actor(ip=_client_ip(client, named), user_agent=ua.decode() if ua else None),
            correlation_id=request_id,
            request_id=request_id,
        )
    )
    return token, request_id


class RequestContextMiddleware:
    """Pure ASGI (cheap on the hot path): request id, actor ip/user agent, metrics."""

    def __init__(self, app: Any, service: str):
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token, request_id = enter_request(scope["headers"], scope.get("client"))
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            context.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in ("/health", "/ready", "/metrics"):
                telemetry.record_request(self.service, scope["method"], path, status, time.perf_counter() - started)


@dataclass
class DirectRequest:
    """What a direct route's handler gets: the whole request, already read."""

    app: ServiceApp
    method: str
    path: str  # the route's path (its template for a route with a parameter)
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes
    param: str | None = None  # a parameter route's last path segment, as sent (percent-decoded)


# status, headers (Content-Length is added for the handler), body
DirectAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
DirectHandler = Callable[[DirectRequest], Awaitable[DirectAnswer]]


@dataclass(frozen=True)
class DirectRoute:
    path: str  # what labels the request's metrics, as Starlette's route would (a template if it has a parameter)
    handler: DirectHandler
    max_body: int  # a longer body is not read whole: 413
    prefix: str | None = None  # a route whose last segment is a parameter: the path up to it


class ServiceApp(FastAPI):
    """FastAPI, plus *direct routes*: handlers for the one or two (method, path) pairs a drop storm
    hits, given the whole request and answering it whole, inside the kit's request context
    (request id, actor, metrics under the route's path), before FastAPI's own layers (error
    middleware, its telemetry and body-limit wrappers, routing, dependency injection). Those layers
    were ~18 % of a booking replica's request path in a storm, and a direct handler answers its
    own errors as problem+json anyway.

    Run by uvicorn with the kit's protocol (`serving.DirectHttpProtocol`, as the launcher, compose
    and the k8s manifests do), a direct route is reached straight from the parsed request, with no
    ASGI in between; under any other ASGI server (or in-process tests) `__call__` gets there.

    A direct route keeps a FastAPI route of the same path for the OpenAPI document, which is
    also what serves the path while tracing is on (so those requests get their server spans).
    """

    def __init__(self, *args: Any, service: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.service = service
        self.direct_routes: dict[tuple[str, str], DirectRoute] = {}
        self._parameter_routes: dict[str, list[DirectRoute]] = {}  # method -> its routes with a parameter

    def add_direct_route(self, method: str, path: str, handler: DirectHandler, *, max_body: int = 65_536) -> None:
        """`path` is literal, or ends in one parameter segment (`/api/v1/slots/{slot_id}`): that
        route takes any path of the prefix plus one more non-empty segment, and its handler gets
        the segment as `DirectRequest.param`."""
        prefix = None
        if "{" in path or "}" in path:
            head, _, last = path.rpartition("/")
            if "{" in head or "}" in head or not re.fullmatch(r"\{[^{}/]+\}", last):
                raise ValueError(f"a direct route may have one parameter, as its last segment: {path}")
            prefix = head + "/"
        route = DirectRoute(path, handler, max_body, prefix)
        self.direct_routes[(method, path)] = route
        if prefix is not None:
            self._parameter_routes.setdefault(method, []).append(route)

    def direct_route(self, method: str, path: str) -> DirectRoute | None:
        """The direct route for this request, if it has one now (none while tracing is on)."""
        if not self.direct_routes or telemetry.tracing_enabled():
            return None
        route = self.direct_routes.get((method, path))
        if route is None and self._parameter_routes:
            for candidate in self._parameter_routes.get(method, ()):
                prefix = candidate.prefix
                assert prefix is not None
                if len(path) > len(prefix) and path.startswith(prefix) and "/" not in path[len(prefix):]:
                    return candidate
        return route

    async def answer_direct(self, route: DirectRoute, method: str, headers: list[tuple[bytes, bytes]], body: bytes,
                            client: tuple[str, int] | None, *, too_large: bool = False,
                            path: str | None = None) -> DirectAnswer:
        """A direct route's answer, inside the request context, with its metrics and request id
        (`too_large`: the body was longer than the route's `max_body`, and not kept; `path`: the
        request's, percent-decoded, which a route with a parameter needs)."""
        started = time.perf_counter()
        token, request_id = enter_request(headers, client)
        status = 500
        try:
            if too_large:
                status, out, payload = problem_answer(PayloadTooLarge(f"at most {route.max_body} bytes"), route.path)
            else:
                param = None
                if route.prefix is not None:
                    param = (path or "")[len(route.prefix):]
                status, out, payload = await route.handler(
                    DirectRequest(self, method, route.path, headers, body, param))
            out.append((b"x-request-id", request_id.encode()))
            out.append((b"content-length", b"%d" % len(payload)))
            return status, out, payload
        finally:
            context.reset(token)
            telemetry.record_request(self.service, method, route.path, status, time.perf_counter() - started)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:  # type: ignore[override]
        if scope["type"] == "http":
            route = self.direct_route(scope["method"], scope["path"])
            if route is not None:
                chunks, size = [], 0
                while True:
                    message = await receive()
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size <= route.max_body:
                        chunks.append(chunk)
                    if not message.get("more_body"):
                        break
                too_large = size > route.max_body
                status, headers, payload = await self.answer_direct(
                    route, scope["method"], scope["headers"], b"" if too_large else b"".join(chunks),
                    scope.get("client"), too_large=too_large, path=scope["path"])
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": payload})
                return
        await super().__call__(scope, receive, send)


def create_service_app(
    settings: KitSettings,
    *,
    title: str,
    routers: Sequence[APIRouter] = (),
    consumers: EventConsumers | None = None,
    background: Sequence[tuple[str, Background]] = (),
    with_db: bool = True,
    on_startup: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
    on_shutdown: Callable[[ServiceRuntime], Awaitable[None]] | None = None,
) -> ServiceApp:
    telemetry.setup_logging(settings.service, settings.log_level, settings.log_json)
    telemetry.setup_tracing(settings.service, settings.otlp_endpoint)

    db = Database(settings) if with_db else None
    messaging = Messaging(settings, db, consumers)
    verifier = JWKSVerifier(settings.jwks_url, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                            proof_keys=settings.gateway_proof_keys)

    async def publish(routing_key: str, body: bytes, message_id: str, headers: dict[str, Any]) -> None:
        await messaging.publish_raw(routing_key, body, message_id=message_id, headers=headers)

    relay = OutboxRelay(settings, publish) if db is not None else None
    rt = ServiceRuntime(settings=settings, db=db, messaging=messaging, relay=relay, verifier=verifier)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await messaging.start()
        if on_startup is not None:
            await on_startup(rt)
        if relay is not None:
            rt.tasks.append(asyncio.create_task(supervise("outbox-relay", relay.run)))
            rt.tasks.append(asyncio.create_task(supervise("outbox-metrics", lambda: _backlog_loop(relay))))
        for name, loop in background:
            rt.tasks.append(asyncio.create_task(supervise(name, lambda loop=loop: loop(rt))))  # type: ignore[misc]
        heap.settle()
        log.info("%s started", settings.service)
        try:
            yield
        finally:
            for task in rt.tasks:
                task.cancel()
            await asyncio.gather(*rt.tasks, return_exceptions=True)
            if on_shutdown is not None:
                await on_shutdown(rt)
            with contextlib.suppress(Exception):
                await messaging.stop()
            if relay is not None:
                await relay.close()
            if db is not None:
                await db.dispose()
            heap.release()

    app = ServiceApp(title=title, lifespan=lifespan, docs_url="/docs", openapi_url="/openapi.json",
                     service=settings.service)
    app.state.rt = rt
    app.state.verifier = verifier
    install_problem_handlers(app)
    for router in routers:
        app.include_router(router)
    app.add_api_route("/health", _health(settings.service), methods=["GET"], include_in_schema=False)
    app.add_api_route("/ready", _ready(rt), methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    app.add_api_route("/asyncapi.json", _asyncapi(rt), methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestContextMiddleware, service=settings.service)
    if telemetry.tracing_enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # Per-message ASGI send/receive spans say nothing a reader needs and cost a span each.
        FastAPIInstrumentor.instrument_app(app, excluded_urls="health,ready,metrics", exclude_spans=["receive", "send"])
    return app


async def _backlog_loop(relay: OutboxRelay) -> None:
    while True:
        with contextlib.suppress(Exception):
            if relay._pool is not None:  # noqa: SLF001
                await relay.measure_backlog()
        await asyncio.sleep(2.0)


def _health(service: str) -> Callable[[], Awaitable[dict[str, str]]]:
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    return health


def _ready(rt: ServiceRuntime) -> Callable[[], Awaitable[Response]]:
    async def ready() -> Response:
        checks: dict[str, Any] = {}
        if rt.db is not None:
            try:
                await asyncio.wait_for(rt.db.ping(), 2.0)
                checks["database"] = "ok"
            except Exception as exc:
                checks["database"] = f"down: {type(exc).__name__}"
        try:
            checks["broker"] = "ok" if await rt.messaging.ping() else "down"
        except Exception as exc:
            checks["broker"] = f"down: {type(exc).__name__}"
        attached = await rt.messaging.consumers_attached()
        checks["consumers"] = {q: ("attached" if ok else "detached") for q, ok in attached.items()}
        ok = all(v == "ok" for k, v in checks.items() if k != "consumers") and all(attached.values())
        body = {"status": "ready" if ok else "not-ready", "service": rt.settings.service, "checks": checks}
        if ok:
            return JSONResponse(body)
        # problem+json's `status` is the HTTP code; the readiness verdict travels as `state`.
        return problem_response(503, "not-ready", "Service not ready", service=rt.settings.service,
                                state="not-ready", checks=checks)

    return ready


async def _metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _asyncapi(rt: ServiceRuntime) -> Callable[[], Awaitable[Response]]:
    async def asyncapi() -> Response:
        from faststream.specification import AsyncAPI

        spec = AsyncAPI(rt.messaging.spec_broker, title=f"dropslot-{rt.settings.service}")
        return Response(spec.to_specification().to_json(), media_type="application/json")

    return asyncapi
