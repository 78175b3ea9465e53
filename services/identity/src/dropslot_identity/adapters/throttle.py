"""Sign-in throttling state in Redis (shared by every identity replica).

Three counters, each with its own lock (see config for the thresholds):
- `pair`: one account from one address, the strict one;
- `account`: one account from anywhere; addresses it signed in from before are exempt;
- `address`: one address across accounts; accounts already known at that address are exempt.
The exemptions are what keep an attacker from locking a real user out: the user's usual
address is not blocked by guesses made elsewhere, and people sharing an address with an
attacker keep signing in to their own accounts. Every lock expires, and the counters are
forgotten a window after the last failure.

Keys hold a hash of the email, never the address itself, and are prefixed with the broker
namespace so several systems (tests, dev) can share one Redis. If Redis is unreachable,
throttling fails open with a warning: refusing every sign-in would be worse.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

import redis.asyncio as redis

from ..config import Settings
from ..domain.throttle import LockRule

log = logging.getLogger("dropslot.identity.throttle")


def account_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


class SignInThrottle:
    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        s = settings
        self.redis = client or redis.from_url(s.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = f"{s.broker_namespace}:identity:signin"
        self.window = s.identity_signin_window_seconds
        self.known_ttl = s.identity_known_address_days * 86400
        base, cap = s.identity_signin_base_lock_seconds, s.identity_signin_max_lock_seconds
        self.rules = {
            "pair": LockRule(s.identity_signin_pair_threshold, base, cap),
            "account": LockRule(s.identity_signin_account_threshold, base, cap),
            "address": LockRule(s.identity_signin_address_threshold, base, cap),
        }
        self.reset_limit = s.identity_reset_requests_per_hour
        self._warned_at = 0.0

    def _ids(self, email: str, ip: str) -> dict[str, str]:
        acct = account_key(email)
        return {"pair": f"{acct}:{ip}", "account": acct, "address": ip}

    def _known(self, email: str, ip: str) -> str:
        return f"{self.prefix}:known:{account_key(email)}:{ip}"

    def _warn(self, exc: BaseException) -> None:
        if time.monotonic() - self._warned_at > 30:
            log.warning("sign-in throttling is off while Redis is unreachable: %r", exc)
            self._warned_at = time.monotonic()

    async def retry_after(self, email: str, ip: str) -> int | None:
        """Seconds until this sign-in may be tried, or None when it may be tried now."""
        ids = self._ids(email, ip)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for kind, ident in ids.items():
                pipe.pttl(f"{self.prefix}:lock:{kind}:{ident}")
            pipe.exists(self._known(email, ip))
            *ttls, known = await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)
            return None
        waits = []
        for kind, ttl in zip(ids, ttls, strict=True):
            if ttl is None or int(ttl) <= 0:
                continue
            if kind in ("account", "address") and known:
                continue  # this account has signed in from this address before
            waits.append(int(ttl))
        return math.ceil(max(waits) / 1000) if waits else None

    async def failed(self, email: str, ip: str) -> None:
        ids = self._ids(email, ip)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for kind, ident in ids.items():
                key = f"{self.prefix}:fail:{kind}:{ident}"
                pipe.incr(key)
                pipe.expire(key, self.window)
            counts = (await pipe.execute())[::2]
            pipe = self.redis.pipeline(transaction=False)
            for (kind, ident), count in zip(ids.items(), counts, strict=True):
                seconds = self.rules[kind].lock_seconds(int(count))
                if seconds:
                    pipe.set(f"{self.prefix}:lock:{kind}:{ident}", int(count), ex=seconds)
            await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)

    async def succeeded(self, email: str, ip: str) -> None:
        """The pair's failures are forgiven, and the address becomes known for this account."""
        await self.remember(email, ip)
        pair = self._ids(email, ip)["pair"]
        try:
            await self.redis.delete(f"{self.prefix}:fail:pair:{pair}", f"{self.prefix}:lock:pair:{pair}")
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)

    async def remember(self, email: str, ip: str) -> None:
        try:
            await self.redis.set(self._known(email, ip), 1, ex=self.known_ttl)
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)

    async def clear_account(self, email: str, ip: str | None = None) -> None:
        """After a password reset the account-wide lock goes (the owner proved the mailbox)."""
        acct = account_key(email)
        keys = [f"{self.prefix}:fail:account:{acct}", f"{self.prefix}:lock:account:{acct}"]
        if ip:
            keys += [f"{self.prefix}:fail:pair:{acct}:{ip}", f"{self.prefix}:lock:pair:{acct}:{ip}"]
        try:
            await self.redis.delete(*keys)
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)

    async def allow_reset_mail(self, email: str) -> bool:
        """At most N reset mails per account per hour, so the endpoint cannot flood a mailbox."""
        key = f"{self.prefix}:reset:{account_key(email)}:{int(time.time() // 3600)}"
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 3700)
            count = (await pipe.execute())[0]
        except (redis.RedisError, OSError) as exc:
            self._warn(exc)
            return True
        return int(count) <= self.reset_limit

    async def close(self) -> None:
        await self.redis.aclose()
