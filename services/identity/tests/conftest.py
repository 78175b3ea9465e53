"""Fixtures for identity's integration and end-to-end tests.

- `id_settings`: identity's settings on the session's test database.
- `identity_db`: a connection as the identity role, for what only the database can show
  (the signing key, to forge an expired token with a real key) or do (age a token past its
  expiry instead of waiting 48 hours).
- `tap`: a queue bound to `identity.#` on the session's exchange: sees the events exactly as
  notifications or audit would (that is also how tests get verification and reset tokens,
  which identity only ever sends by event).
- `admin`: a platform admin made with the real command line (`make admin` runs the same).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from dropslot_identity.config import Settings
from dropslot_kit.broker import json_events_in
from dropslot_kit.testing import env_for, eventually, unique_email

ADMIN_PASSWORD = "admin horse battery staple 7"


@pytest.fixture(scope="session")
def id_settings(test_settings) -> Settings:
    return Settings(**{**test_settings.model_dump(), "service": "identity"})


@pytest.fixture(scope="session")
async def identity_db(id_settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(id_settings.plain_service_dsn(), server_settings={"search_path": "identity"})
    yield conn
    await conn.close()


class EventTap:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._conn: Any = None

    async def start(self, rabbit_url: str, namespace: str, pattern: str = "identity.#") -> None:
        self._conn = await aio_pika.connect(rabbit_url)
        channel = await self._conn.channel()
        exchange = await channel.declare_exchange(f"{namespace}.events", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=pattern)
        await queue.consume(self._on_message)

    async def _on_message(self, message: Any) -> None:
        async with message.process():
            self.events.extend(json_events_in(message.body))

    def find(self, type_: str, **data: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_
                and all(str(e["data"].get(k)) == str(v) for k, v in data.items())]

    async def wait_for(self, type_: str, wait: float = 30.0, **data: Any) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            found = self.find(type_, **data)
            return found[-1] if found else None

        return await eventually(check, timeout=wait, what=f"event {type_} {data}")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


@pytest.fixture(scope="session")
async def tap(system) -> AsyncIterator[EventTap]:
    t = EventTap()
    await t.start(system.settings.rabbit_url, system.settings.broker_namespace)
    yield t
    await t.close()


def run_admin_cli(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_for(settings)}
    return subprocess.run([sys.executable, "-m", "dropslot_identity.admin", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def login(http: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    r = await http.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    tokens = r.json()
    return {**tokens, "headers": {"Authorization": f"Bearer {tokens['access_token']}"}}


@pytest.fixture(scope="session")
async def admin(system) -> dict[str, Any]:
    email = unique_email("admin")
    done = await asyncio.to_thread(run_admin_cli, system.settings, "--email", email, "--password", ADMIN_PASSWORD)
    assert done.returncode == 0, done.stderr
    async with httpx.AsyncClient(base_url=system.api, timeout=20.0) as http:
        tokens = await login(http, email, ADMIN_PASSWORD)
        me = (await http.get("/users/me", headers=tokens["headers"])).json()
    return {**me, **tokens, "email": email, "password": ADMIN_PASSWORD, "cli_output": done.stdout}


@pytest.fixture(scope="session")
def admin_cli(system) -> Any:
    """Run `python -m dropslot_identity.admin ARGS...` against the test system (in a thread)."""

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_admin_cli, system.settings, *args)

    return run
