"""Operator commands for identity, run against the database as the identity role (DROPSLOT_* env).

    python -m dropslot_identity.admin --email E --password P [--name N]
        Create a platform admin (email verified, roles customer + platform_admin), or promote the
        existing account with that email (its password is left alone). Idempotent; says what it did.
        `make admin EMAIL=... PASSWORD=...` runs this.
    python -m dropslot_identity.admin rotate-keys
        Start signing access tokens with a new key. The old keys stay in the JWKS until every token
        they signed has expired, so nobody is logged out. Running replicas switch within
        DROPSLOT_IDENTITY_KEY_CACHE_SECONDS.

The events these commands emit go to identity's outbox; a running identity service publishes them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from dropslot_kit.db import Database
from dropslot_kit.errors import Problem

from . import keys
from .adapters import repo
from .adapters.hashing import Passwords
from .adapters.throttle import SignInThrottle
from .config import Settings
from .service import IdentityService


async def _make_admin(settings: Settings, email: str, password: str, name: str | None) -> str:
    db = Database(settings)
    throttle = SignInThrottle(settings)
    try:
        svc = IdentityService(db, settings, keys.KeyRing(db, settings), Passwords(settings), throttle)
        return await svc.ensure_platform_admin(email, password, name)
    finally:
        await throttle.close()
        await db.dispose()


async def _rotate(settings: Settings) -> str:
    db = Database(settings)
    try:
        kid = await keys.rotate(db, settings)
        async with db.uow() as uow:
            published = await repo.published_keys(uow.conn, keys.keep_retired_seconds(settings))
        listed = ", ".join(str(k["kid"]) + (" (retired)" if k["retired_at"] else " (signing)") for k in published)
        return f"new signing key {kid}; published keys: {listed}"
    finally:
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = Settings()
    if argv[:1] == ["rotate-keys"]:
        print(asyncio.run(_rotate(settings)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m dropslot_identity.admin",
                                     description="Create or promote a platform admin (or: rotate-keys).")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    try:
        print(asyncio.run(_make_admin(settings, args.email, args.password, args.name)))
    except Problem as exc:
        print(f"error: {exc.detail or exc.title}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
