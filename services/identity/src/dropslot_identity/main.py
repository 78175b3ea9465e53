"""DropSlot identity service: the app factory (`uvicorn dropslot_identity.main:create_app --factory`).

Accounts, sign-in, access tokens (RS256 JWTs by default, or EdDSA; keys published at /api/v1/auth/jwks.json),
email verification, password reset, roles. Routes: see `api.py`; rules: `domain/`;
use cases: `service.py`; SQL: `adapters/repo.py`; throttling: `adapters/throttle.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from dropslot_kit.app import ServiceRuntime, create_service_app
from fastapi import FastAPI

from . import api, keys
from .adapters import repo
from .adapters.hashing import Passwords
from .adapters.throttle import SignInThrottle
from .config import Settings
from .consumers import consumers
from .service import IdentityService

log = logging.getLogger("dropslot.identity")


async def key_rotation_loop(rt: ServiceRuntime) -> None:
    """Rotate the signing key when it is older than the configured age (every replica checks;
    the advisory lock and the age test make only one of them rotate)."""
    svc: IdentityService = rt.extras["identity"]
    days = svc.settings.identity_key_rotation_days
    if days <= 0:
        return
    while True:
        kid = await keys.rotate(svc.db, svc.settings, older_than=timedelta(days=days))
        if kid is not None:
            log.info("signing key rotated: new kid %s", kid)
            await svc.ring.load(force=True)
        await asyncio.sleep(3600)


async def housekeeping_loop(rt: ServiceRuntime) -> None:
    svc: IdentityService = rt.extras["identity"]
    while True:
        await asyncio.sleep(3600)
        async with svc.db.uow() as uow:
            n = await repo.purge_expired(uow.conn)
        if n:
            log.info("housekeeping: removed %d expired tokens and sessions", n)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def startup(rt: ServiceRuntime) -> None:
        """Make sure a signing key exists and warm the cache. If the database is briefly unreachable,
        start anyway: the key ring loads (and creates the first key) on first use."""
        svc: IdentityService = rt.extras["identity"]
        for attempt in range(3):
            try:
                await keys.ensure_key(svc.db, settings)
                await svc.ring.load(force=True)
                return
            except Exception as exc:  # noqa: BLE001  (any database failure: retry, then go lazy)
                log.warning("signing keys not loaded at start (attempt %d): %r", attempt + 1, exc)
                await asyncio.sleep(1.0 + attempt)

    async def shutdown(rt: ServiceRuntime) -> None:
        with contextlib.suppress(Exception):
            await rt.extras["identity"].throttle.close()

    app = create_service_app(
        settings, title="DropSlot identity", routers=[api.router], consumers=consumers,
        background=[("signing-key-rotation", key_rotation_loop), ("housekeeping", housekeeping_loop)],
        on_startup=startup, on_shutdown=shutdown,
    )
    rt: ServiceRuntime = app.state.rt
    assert rt.db is not None
    ring = keys.KeyRing(rt.db, settings)
    # Identity verifies its own tokens from its key table rather than over HTTP from itself.
    verifier = keys.LocalVerifier(ring, settings)
    app.state.verifier = rt.verifier = verifier
    rt.extras["identity"] = IdentityService(rt.db, settings, ring, Passwords(settings), SignInThrottle(settings))
    return app
