"""Pytest fixtures shared by every test suite (registered in the root conftest.py).

Real infrastructure only: URLs from the environment when set (DROPSLOT_ADMIN_DATABASE_URL,
DROPSLOT_RABBIT_URL, DROPSLOT_REDIS_URL), else the local defaults when something answers
there, else testcontainers when a Docker engine works, else a clear failure, never a skip.
Each test session gets its own database and its own broker namespace, removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .launcher import System, prepare_database, reachable
from .settings import KitSettings, with_credentials

T = TypeVar("T")


@dataclass(frozen=True)
class Infra:
    admin_database_url: str
    rabbit_url: str
    redis_url: str
    source: str


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_containers: list[Any] = []


def resolve_infra() -> Infra:
    defaults = KitSettings()
    env = os.environ
    admin = env.get("DROPSLOT_ADMIN_DATABASE_URL", defaults.admin_database_url)
    rabbit = env.get("DROPSLOT_RABBIT_URL", defaults.rabbit_url)
    redis = env.get("DROPSLOT_REDIS_URL", defaults.redis_url)
    if reachable(admin, 5432) and reachable(rabbit, 5672) and reachable(redis, 6379):
        src = "environment" if "DROPSLOT_ADMIN_DATABASE_URL" in env else "local defaults"
        return Infra(admin, rabbit, redis, src)
    if _docker_works():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer
        from testcontainers.redis import RedisContainer

        pg = PostgresContainer("postgres:16", username="postgres", password="postgres").start()
        rmq = RabbitMqContainer("rabbitmq:3.13").start()
        rds = RedisContainer("redis:7").start()
        _containers.extend([pg, rmq, rds])
        return Infra(
            f"postgresql://postgres:postgres@{pg.get_container_host_ip()}:{pg.get_exposed_port(5432)}/postgres",
            f"amqp://guest:guest@{rmq.get_container_host_ip()}:{rmq.get_exposed_port(5672)}/",
            f"redis://{rds.get_container_host_ip()}:{rds.get_exposed_port(6379)}/0",
            "testcontainers",
        )
    pytest.fail(
        "Integration tests need PostgreSQL, RabbitMQ and Redis. None answered at "
        f"{admin} / {rabbit} / {redis}, and no Docker engine is available for testcontainers. "
        "Set DROPSLOT_ADMIN_DATABASE_URL, DROPSLOT_RABBIT_URL and DROPSLOT_REDIS_URL, or start them "
        "(see README: 'Running the tests').",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    yield resolve_infra()
    for c in _containers:
        with contextlib.suppress(Exception):
            c.stop()


def settings_for(infra: Infra, dbname: str, namespace: str, service: str = "kit") -> KitSettings:
    host_db = with_credentials(infra.admin_database_url, "x", None).split("@", 1)[1].rsplit("/", 1)[0]
    return KitSettings(
        service=service,
        database_url=f"postgresql://{host_db}/{dbname}",
        admin_database_url=infra.admin_database_url,
        rabbit_url=infra.rabbit_url,
        redis_url=infra.redis_url,
        broker_namespace=namespace,
    )


def env_for(settings: KitSettings) -> dict[str, str]:
    return {
        "DROPSLOT_DATABASE_URL": settings.database_url,
        "DROPSLOT_ADMIN_DATABASE_URL": settings.admin_database_url,
        "DROPSLOT_RABBIT_URL": settings.rabbit_url,
        "DROPSLOT_REDIS_URL": settings.redis_url,
        "DROPSLOT_BROKER_NAMESPACE": settings.broker_namespace,
        "DROPSLOT_DB_PASSWORD": settings.db_password,
    }


def fresh_settings(infra: Infra, prefix: str = "t") -> KitSettings:
    """A new migrated database and broker namespace (remove with `drop_test_resources`)."""
    suffix = uuid.uuid4().hex[:10]
    settings = settings_for(infra, f"dropslot_{prefix}_{suffix}", f"{prefix}{suffix}")
    with open(os.devnull, "w") as quiet:
        prepare_database(settings, log=quiet)
    return settings


@pytest.fixture(scope="session")
def test_settings(infra: Infra) -> Iterator[KitSettings]:
    """A fresh, migrated database and a broker namespace for this test session."""
    settings = fresh_settings(infra)
    yield settings
    drop_test_resources(settings)


def drop_test_resources(settings: KitSettings) -> None:
    from .bootstrap import drop_database

    with contextlib.suppress(Exception):
        asyncio.run(drop_database(settings))
    with contextlib.suppress(Exception):
        asyncio.run(delete_namespace(settings))


def _namespace_queues(namespace: str) -> list[str]:
    if not shutil.which("rabbitmqctl"):
        return []
    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name"],
                         capture_output=True, text=True, timeout=30).stdout
    return [n.strip() for n in out.splitlines() if n.strip().startswith(namespace + ".")]


async def delete_namespace(settings: KitSettings) -> None:
    """Remove every queue and exchange of a test namespace."""
    import aio_pika

    names = _namespace_queues(settings.broker_namespace)
    conn = await aio_pika.connect(settings.rabbit_url)
    async with conn:
        ch = await conn.channel()
        for name in names:
            with contextlib.suppress(Exception):
                await ch.queue_delete(name)
        for ex in ("events", "dlx"):
            with contextlib.suppress(Exception):
                await ch.exchange_delete(f"{settings.broker_namespace}.{ex}")


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 15.0,  # noqa: ASYNC109  (a polling deadline, not a cancellation timeout)
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll until `check` returns a truthy value (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from last
        await asyncio.sleep(interval)


@dataclass
class RunningSystem:
    system: System
    settings: KitSettings
    log_dir: Path

    @property
    def url(self) -> str:
        return self.system.gateway.url

    @property
    def api(self) -> str:
        return self.system.gateway.url + "/api/v1"

    def service_url(self, name: str) -> str:
        return self.system.find(name).url


def start_system(settings: KitSettings, log_dir: Path, *, booking_replicas: int = 2,
                 extra_env: dict[str, str] | None = None, nice: dict[str, int] | None = None) -> RunningSystem:
    env = env_for(settings)
    env.update({
        "DROPSLOT_LOG_JSON": "true",
        "DROPSLOT_RETRY_DELAYS_MS": "[200, 500, 1000]",
        "DROPSLOT_WEBHOOKS_ALLOWED_NETWORKS": '["127.0.0.0/8", "::1/128"]',
        # Test receivers are plain http on loopback; the retry schedule (5 s, 5 min, ...) runs 100x faster.
        "DROPSLOT_WEBHOOKS_ALLOW_HTTP": "true",
        "DROPSLOT_WEBHOOKS_RETRY_SCALE": "0.01",
        "DROPSLOT_PAYMENTS_SANDBOX_CALLBACK_DELAY_SECONDS": "0.1",
        # Budgets of concurrent test systems sharing one Redis stay apart.
        "DROPSLOT_RATE_LIMIT_PREFIX": f"rl:{settings.broker_namespace}",
    })
    env.update(extra_env or {})
    system = System(env=env, booking_replicas=booking_replicas, free_ports=True, log_dir=log_dir)
    if nice is not None:
        system.nice = nice
    system.plan()
    system.start()
    try:
        system.wait_ready(90)
    except Exception:
        logs = system.logs()
        system.stop()
        raise RuntimeError(f"the system did not start:\n{logs}") from None
    return RunningSystem(system, settings, log_dir)


@contextlib.contextmanager
def own_system(infra: Infra, prefix: str, log_dir: Path, *, booking_replicas: int = 1,
               extra_env: dict[str, str] | None = None) -> Iterator[RunningSystem]:
    """A second whole system with settings of its own (its own database and namespace, removed
    afterwards), for tests that need different settings from the session's system. It runs
    beside others on a shared PostgreSQL, so its pools are kept small."""
    settings = fresh_settings(infra, prefix)
    env = {"DROPSLOT_DB_POOL_SIZE": "2", "DROPSLOT_DB_MAX_OVERFLOW": "6", "DROPSLOT_BOOKING_POOL_SIZE": "2",
           **(extra_env or {})}
    try:
        running = start_system(settings, log_dir, booking_replicas=booking_replicas, extra_env=env)
        try:
            yield running
        finally:
            running.system.stop()
    finally:
        drop_test_resources(settings)


@pytest.fixture(scope="session")
def system(test_settings: KitSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    """The whole system as processes on free ports, driven through the gateway only."""
    log_dir = tmp_path_factory.mktemp("system-logs")
    running = start_system(test_settings, log_dir)
    yield running
    running.system.stop()


@pytest.fixture
async def http(system: RunningSystem) -> AsyncIterator[Any]:
    import httpx

    async with httpx.AsyncClient(base_url=system.api, timeout=20.0) as client:
        yield client


# --- API helpers for end-to-end tests (public API only, see API.md) ------------------------------
def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


async def sign_up(http: Any, *, email: str | None = None, password: str = "correct horse battery staple 9",
                  name: str = "Test User") -> dict[str, Any]:
    """Register and sign in; returns {id, email, password, access_token, refresh_token, headers}."""
    email = email or unique_email()
    r = await http.post("/auth/register", json={"email": email, "password": password, "name": name})
    assert r.status_code == 201, r.text
    user = r.json()
    r = await http.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    tokens = r.json()
    return {
        **user, "email": email, "password": password, **tokens,
        "headers": {"Authorization": f"Bearer {tokens['access_token']}"},
    }


async def create_store(http: Any, owner: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    slug = f"store-{uuid.uuid4().hex[:10]}"
    r = await http.post("/stores", json={"name": name or slug, "slug": slug}, headers=owner["headers"])
    assert r.status_code == 201, r.text
    return dict(r.json())
