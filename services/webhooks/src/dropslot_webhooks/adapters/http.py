"""The HTTP client that delivers webhooks: aiohttp, no redirects, a total timeout, and the
address policy enforced at connect time.

Hostnames are resolved by `GuardedResolver`, which refuses the whole name if any address it
resolves to is not allowed; aiohttp then connects to exactly the addresses the resolver
returned (the checked ones), so a DNS answer cannot change between check and connect.
IP-literal URLs never reach a resolver in aiohttp, so they are checked before the request.
Proxies from the environment are ignored (`trust_env=False`): a proxy would connect for us.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ..domain.schedule import parse_retry_after
from ..domain.ssrf import AddressPolicy, UrlNotAllowed, parse_url

USER_AGENT = "DropSlot-Webhooks/1.0"


class AddressNotAllowed(OSError):
    """Raised inside aiohttp's connect path (an OSError, so aiohttp wraps it as a connect error)."""


class GuardedResolver(AbstractResolver):
    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None):
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            try:
                self.policy.check(r["host"])
            except UrlNotAllowed:
                # Not which address: the attempt log is shown to the store's owner.
                raise AddressNotAllowed(f"{host} resolves to an address that is not public") from None
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    duration: float
    status_code: int | None
    response_body: str | None
    error: str | None
    retry_after: float | None = None

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def outcome(self) -> str:
        if self.success:
            return "success"
        if self.status_code is not None:
            return "failure"
        return "timeout" if self.error and self.error.startswith("timeout") else "error"


class Sender:
    def __init__(self, policy: AddressPolicy, *, allow_http: bool, timeout: float, body_limit: int,
                 max_connections: int):
        self.policy = policy
        self.allow_http = allow_http
        self.timeout = timeout
        self.body_limit = body_limit
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.policy), limit=self.max_connections, limit_per_host=0,
                ttl_dns_cache=30, keepalive_timeout=30,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, headers: dict[str, str], body: bytes) -> AttemptResult:
        assert self._session is not None, "sender not started"
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()

        def done(code: int | None = None, text: str | None = None, error: str | None = None,
                 retry_after: float | None = None) -> AttemptResult:
            return AttemptResult(started_at, time.perf_counter() - t0, code, text, error, retry_after)

        try:
            dest = parse_url(url, allow_http=self.allow_http)
            if dest.ip_literal is not None:
                self.policy.check(dest.ip_literal)
        except UrlNotAllowed as exc:
            return done(error=f"url not allowed: {exc}")
        try:
            async with self._session.post(
                url, data=body, headers={**headers, "Content-Type": "application/json"}, allow_redirects=False,
            ) as resp:
                raw = await resp.content.read(self.body_limit)
                retry_after = None
                if resp.status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                return done(resp.status, raw.decode("utf-8", errors="replace"), None, retry_after)
        except TimeoutError:
            return done(error=f"timeout after {self.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            cause: Any = exc.os_error
            if isinstance(cause, AddressNotAllowed) or isinstance(exc.__cause__, AddressNotAllowed):
                return done(error=f"address not allowed: {cause}")
            return done(error=f"connection failed: {cause or exc}")
        except aiohttp.ClientError as exc:
            return done(error=f"{type(exc).__name__}: {exc}"[:1000])
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            return done(error=f"{type(exc).__name__}: {exc}"[:1000])
