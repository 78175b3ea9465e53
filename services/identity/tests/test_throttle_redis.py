"""The throttle against the real Redis, with short timings: locks grow, expire, and decay."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from dropslot_identity.adapters.throttle import SignInThrottle
from dropslot_identity.config import Settings


@pytest.fixture
async def throttle(id_settings):
    s = Settings(**{
        **id_settings.model_dump(),
        "broker_namespace": f"thr{uuid.uuid4().hex[:8]}",
        "identity_signin_pair_threshold": 3,
        "identity_signin_account_threshold": 5,
        "identity_signin_address_threshold": 8,
        "identity_signin_base_lock_seconds": 1,
        "identity_signin_max_lock_seconds": 4,
        "identity_signin_window_seconds": 3,
    })
    t = SignInThrottle(s)
    yield t
    await t.close()


async def test_lock_grows_then_expires_and_failures_decay(throttle):
    email, ip = "someone@example.com", "198.51.100.7"
    for _ in range(2):
        await throttle.failed(email, ip)
    assert await throttle.retry_after(email, ip) is None
    await throttle.failed(email, ip)                   # 3rd failure: locked for 1 s
    assert await throttle.retry_after(email, ip) == 1
    await asyncio.sleep(1.1)
    assert await throttle.retry_after(email, ip) is None   # the lock expired by itself
    await throttle.failed(email, ip)                   # 4th: 2 s
    assert await throttle.retry_after(email, ip) == 2
    await asyncio.sleep(3.2)                           # past the window after the last failure
    await throttle.failed(email, ip)                   # counting starts over: no lock
    assert await throttle.retry_after(email, ip) is None


async def test_a_distributed_guess_does_not_lock_the_owner_at_their_usual_address(throttle):
    email, home = "owner@example.com", "203.0.113.1"
    await throttle.succeeded(email, home)
    for n in range(5):                                 # five attackers, one failure each
        await throttle.failed(email, f"192.0.2.{n}")
    assert await throttle.retry_after(email, "192.0.2.99") is not None   # account locked for strangers
    assert await throttle.retry_after(email, home) is None               # not for the owner at home
    await throttle.clear_account(email)                                   # a password reset lifts it
    assert await throttle.retry_after(email, "192.0.2.99") is None


async def test_success_forgives_the_pairs_failures(throttle):
    email, ip = "forgetful@example.com", "198.51.100.8"
    for _ in range(2):
        await throttle.failed(email, ip)
    await throttle.succeeded(email, ip)
    await throttle.failed(email, ip)
    assert await throttle.retry_after(email, ip) is None


async def test_reset_mails_are_limited_per_account(throttle):
    allowed = [await throttle.allow_reset_mail("mailbox@example.com") for _ in range(7)]
    assert allowed == [True] * 5 + [False] * 2


async def test_redis_down_fails_open(id_settings):
    s = Settings(**{**id_settings.model_dump(), "redis_url": "redis://127.0.0.1:1/0"})
    t = SignInThrottle(s)
    try:
        await t.failed("x@example.com", "198.51.100.9")
        assert await t.retry_after("x@example.com", "198.51.100.9") is None
    finally:
        await t.close()
