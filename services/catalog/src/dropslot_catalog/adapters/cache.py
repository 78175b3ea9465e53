"""Redis cache of public answers, invalidated by a version key.

Every entry's key contains the version current when it was computed; a write bumps the
version after its commit, so every entry computed before the write becomes unreachable at
once (and expires by TTL). A reader reads the version *before* querying the database, so
an answer computed from data older than a concurrent write is stored under the old
version, never the new one.

If the process dies between commit and bump, stale entries live until their TTL (the
setting `catalog_cache_ttl_seconds`); the same holds for a bump that fails because Redis is
briefly unreachable. Redis being down never fails a request: reads go to the database.

Keys are prefixed with the broker namespace, so systems sharing a Redis (tests, staging)
never see each other's entries.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("dropslot.catalog.cache")

# One round trip for a read: the current version and the entry stored under it.
_GET = """
local v = redis.call('GET', KEYS[1]) or '0'
return {v, redis.call('GET', ARGV[1] .. v .. ':' .. ARGV[2])}
"""


@dataclass(frozen=True)
class Cached:
    version: str
    etag: str | None
    body: bytes | None


class PublicCache:
    def __init__(self, url: str, namespace: str, *, ttl_seconds: int, enabled: bool = True):
        self.enabled = enabled
        self.ttl = ttl_seconds
        self.prefix = f"{namespace}:catalog:public:"
        self.version_key = self.prefix + "version"
        self.redis = redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._get = self.redis.register_script(_GET)
        self._warned_at = 0.0

    @staticmethod
    def key_for(kind: str, query: str) -> str:
        return kind + ":" + hashlib.sha1(query.encode()).hexdigest()

    async def get(self, key: str) -> Cached | None:
        """The current version and the entry, if any; None when Redis is unavailable."""
        if not self.enabled:
            return None
        try:
            version, raw = await self._get(keys=[self.version_key], args=[self.prefix, key])
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return None
        version = version.decode() if isinstance(version, bytes) else str(version)
        if raw is None:
            return Cached(version, None, None)
        etag, _, body = bytes(raw).partition(b"\n")
        return Cached(version, etag.decode(), body)

    async def put(self, version: str, key: str, etag: str, body: bytes) -> None:
        if not self.enabled:
            return
        try:
            await self.redis.set(f"{self.prefix}{version}:{key}", etag.encode() + b"\n" + body, ex=self.ttl)
        except (RedisError, OSError) as exc:
            self._warn(exc)

    async def invalidate(self) -> None:
        """Call after a committed write that may change a public answer."""
        if not self.enabled:
            return
        try:
            await self.redis.incr(self.version_key)
        except (RedisError, OSError) as exc:
            self._warn(exc)

    async def close(self) -> None:
        await self.redis.aclose()

    def _warn(self, exc: BaseException) -> None:
        if time.monotonic() - self._warned_at > 30:
            log.warning("public cache unavailable, answering from the database: %r", exc)
            self._warned_at = time.monotonic()
