"""Fixed-window rate limits shared by the gateway replicas through Redis, with no Redis round
trip on the request path.

Each replica counts requests in memory and, every `sync_interval` seconds, pushes what it
counted to Redis (one script call for all keys) and learns the global counts back. A
request is judged on the global count at the last sync plus what this replica has counted
since. With one replica the limit is exact; with N replicas a burst spread over them can pass
the limit by what the other replicas admitted since their last sync (at most N-1 times the
traffic of one interval, 50 ms by default), which a rate limit can afford. During a drop storm
this takes a network round trip and a Redis command parse off every request.

When Redis is unreachable the limits keep holding per replica (counts stay local), instead of
failing open or taking the drop down.

A sync is one script call (`SYNC`): it adds every count and sets a new key's expiry in Redis,
where a pipeline of INCRBY/EXPIRE commands cost the gateway ~8 % of its CPU in a drop storm
(redis-py packs and parses each command in Python).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as redis

log = logging.getLogger("dropslot.gateway.ratelimit")

# KEYS: counters; ARGV[1]: seconds to keep a new counter; ARGV[i + 1]: what to add to KEYS[i].
# Returns the counters' new values. A counter equal to what was just added is new (counts only
# grow), and gets its expiry in the same atomic step.
SYNC = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[i + 1])
  local total = redis.call('INCRBY', key, n)
  if total == n then redis.call('EXPIRE', key, ARGV[1]) end
  out[i] = total
end
return out
"""


class RateLimiter:
    def __init__(self, url: str, prefix: str = "dropslot:rl", *, window: int = 60, sync_interval: float = 0.05):
        self.redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.prefix = prefix
        self.window = window
        self.sync_interval = sync_interval
        self._sync_script = self.redis.register_script(SYNC)
        self._known: dict[str, int] = {}  # Redis key -> global count at the last sync
        self._pending: dict[str, int] = {}  # Redis key -> counted here since the last sync
        self._bucket = 0
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sync_loop())

    def hit(self, keys: list[tuple[str, int]]) -> int | None:
        """Count one request against each (key, limit). Returns seconds to wait if any is over."""
        now = time.time()
        bucket = int(now // self.window)
        if bucket != self._bucket:  # a new window: the old counts are history
            self._bucket = bucket
            self._known = {k: v for k, v in self._known.items() if k.endswith(f":{bucket}")}
        over = False
        for key, limit in keys:
            k = f"{self.prefix}:{key}:{bucket}"
            mine = self._pending.get(k, 0) + 1
            self._pending[k] = mine
            if self._known.get(k, 0) + mine > limit:
                over = True
        if over:
            return max(1, (bucket + 1) * self.window - int(now))
        return None

    async def sync(self) -> None:
        """Push the local counts to Redis and learn the global ones."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for k, n in pending.items():  # still counted while the round trip is in flight
            self._known[k] = self._known.get(k, 0) + n
        keys = list(pending)
        try:
            results = await self._sync_script(keys=keys, args=[self.window + 1, *pending.values()])
        except (redis.RedisError, OSError) as exc:
            # Already counted in _known above: limits keep holding on what this replica saw.
            if time.monotonic() - self._warned_at > 30:
                log.warning("rate limits are per replica while Redis is unreachable: %r", exc)
                self._warned_at = time.monotonic()
            return
        for k, total in zip(keys, results, strict=True):
            # The global count, ours included; what arrived here meanwhile is pending on top.
            if k.endswith(f":{self._bucket}"):  # not a window that ended during the round trip
                self._known[k] = int(total)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.sync()
            except Exception:  # never let the loop die: limits would silently stop being shared
                log.exception("rate-limit sync failed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # gather, not a suppressed await: a cancellation of close() itself must not be swallowed
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.sync(), 2.0)  # the last counts, if Redis answers soon
        with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.redis.aclose(), 2.0)
