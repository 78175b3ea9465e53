from dropslot_kit.settings import KitSettings
from pydantic import Field


class Settings(KitSettings):
    service: str = "gateway"
    # Service name -> base URLs of its replicas (the launcher / compose / k8s fill this in).
    upstreams: dict[str, list[str]] = Field(default_factory=lambda: {
        "identity": ["http://127.0.0.1:8001"],
        "catalog": ["http://127.0.0.1:8002"],
        "booking": ["http://127.0.0.1:8003", "http://127.0.0.1:8013"],
        "payments": ["http://127.0.0.1:8004"],
        "notifications": ["http://127.0.0.1:8005"],
        "webhooks": ["http://127.0.0.1:8006"],
        "audit": ["http://127.0.0.1:8007"],
    })
    connect_timeout_seconds: float = 2.0
    upstream_timeout_seconds: float = 15.0
    max_connections_per_upstream: int = 256
    max_body_bytes: int = 1_048_576
    # Rate limits (requests per minute). Per user when a valid token is given, else per address.
    rate_limit_enabled: bool = True
    rate_limit_user_per_minute: int = 600
    rate_limit_ip_per_minute: int = 6000
    rate_limit_reserve_per_minute: int = 30
    rate_limit_prefix: str = "dropslot:rl"
    # How often each replica shares its counts through Redis (see ratelimit.py).
    rate_limit_sync_seconds: float = 0.05
    # How long a checked access token is remembered (at most until it expires), and so needs no
    # second signature check. Within the verifier's JWKS cache (300 s) a token that verified once
    # keeps verifying anyway, so remembering it as long adds no exposure.
    verified_token_seconds: float = 300.0
    # Give booking's sold-out refusals again here while booking's own cache would (refusals.py).
    repeat_refusals: bool = True
    # Peers whose X-Forwarded-For is believed (a load balancer or CDN in front of the gateway).
    trusted_proxies: list[str] = Field(default_factory=list)
