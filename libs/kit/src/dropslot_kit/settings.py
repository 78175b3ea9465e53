"""Settings base: every variable is `DROPSLOT_*`, with defaults that work on a dev machine."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES_WITH_DB = ("identity", "catalog", "booking", "payments", "notifications", "webhooks", "audit")


class KitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DROPSLOT_", extra="ignore")

    service: str = "kit"
    # Where the database is; a service connects to it as its own role `dropslot_<service>`.
    database_url: str = "postgresql://127.0.0.1:5432/dropslot"
    admin_database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    db_password: str = "dropslot-dev"
    db_pool_size: int = 10
    db_max_overflow: int = 10

    rabbit_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Prefix of the exchanges and queues, so several systems can share one broker.
    broker_namespace: str = "dropslot"
    prefetch: int = 64
    # Group commit for consumers: deliveries that arrive while a consumer's transaction is in
    # flight share the next one (at most this many; bounded by the prefetch too).
    consume_batching: bool = True
    consume_batch_max: int = 64
    # Under load (the last batch held more than one event) wait this long before the next one.
    consume_batch_linger_ms: float = 20.0
    delivery_limit: int = 5
    retry_delays_ms: list[int] = Field(default_factory=lambda: [1_000, 5_000, 30_000])

    redis_url: str = "redis://127.0.0.1:6379/0"
    jwks_url: str = "http://127.0.0.1:8001/api/v1/auth/jwks.json"
    jwt_issuer: str = "dropslot-identity"
    jwt_audience: str = "dropslot"
    # Shared by the gateway and the services: the gateway forwards an HMAC of each token it
    # verified, so services need not check its signature again (auth.py). The first key signs,
    # all are accepted (rotation). Empty: no proofs, every service checks every signature.
    gateway_proof_keys: list[str] = Field(default_factory=list)
    public_base_url: str = "http://127.0.0.1:8000"

    outbox_batch: int = 256
    # Consecutive events travel as one message (a JSON array, routed by every type it holds) of
    # at most this many; 1 = one message per event. See outbox.py.
    outbox_message_events: int = 100
    outbox_poll_seconds: float = 1.0
    publish_timeout_seconds: float = 5.0

    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    log_json: bool = True

    @property
    def db_role(self) -> str:
        return f"dropslot_{self.service}"

    def service_dsn(self, driver: str = "postgresql+asyncpg") -> str:
        """The database URL with this service's own (non-superuser) role."""
        return with_credentials(self.database_url, self.db_role, self.db_password, driver)

    def plain_service_dsn(self) -> str:
        return self.service_dsn("postgresql")


def with_credentials(url: str, user: str, password: str | None, driver: str = "postgresql") -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = quote(user, safe="")
    if password:
        netloc += ":" + quote(password, safe="")
    netloc += "@" + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((driver, netloc, parts.path, parts.query, ""))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "dropslot"
