"""Fixed-window rate limits in Redis: one pipelined round trip per request.

Fails open when Redis is unreachable: a rate limiter must not take the drop down.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as redis

log = logging.getLogger("dropslot.gateway.ratelimit")


class RateLimiter:
    def __init__(self, url: str, prefix: str = "dropslot:rl"):
        # A blocking pool: under a storm more requests are in flight than there are connections,
        # and they should queue for one briefly rather than fail open.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=0.5, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self.redis = redis.Redis(connection_pool=pool)
        self.prefix = prefix
        self._warned_at = 0.0

    async def hit(self, keys: list[tuple[str, int]], window: int = 60) -> int | None:
        """Count one request against each (key, limit). Returns seconds to wait if any is over."""
        now = int(time.time())
        bucket = now // window
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, _ in keys:
                k = f"{self.prefix}:{key}:{bucket}"
                pipe.incr(k)
                pipe.expire(k, window + 1)
            counts = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            if time.monotonic() - self._warned_at > 30:
                log.warning("rate limiting disabled while Redis is unreachable: %r", exc)
                self._warned_at = time.monotonic()
            return None
        for (_key, limit), count in zip(keys, counts[::2], strict=True):
            if int(count) > limit:
                return max(1, (bucket + 1) * window - now)
        return None

    async def close(self) -> None:
        await self.redis.aclose()
