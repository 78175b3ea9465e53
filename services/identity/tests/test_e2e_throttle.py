"""Sign-in throttling through the gateway: per account (and address), per address, never forever.

Each test uses its own accounts; the per-address test connects from its own loopback address
(127.x.y.z), so no other test's sign-ins from 127.0.0.1 are affected.
"""

from __future__ import annotations

import random

import httpx
import pytest
from dropslot_kit.testing import sign_up, unique_email

pytestmark = pytest.mark.e2e


async def attempt(http, email: str, password: str) -> httpx.Response:
    return await http.post("/auth/login", json={"email": email, "password": password})


async def test_failed_sign_ins_lock_the_account_at_that_address(http):
    victim = await sign_up(http, email=unique_email("locked"))
    for i in range(5):
        r = await attempt(http, victim["email"], f"wrong guess number {i}")
        assert r.status_code == 401, (i, r.text)
    r = await attempt(http, victim["email"], "wrong guess number 6")
    assert r.status_code == 429, r.text
    assert r.json()["type"].endswith("/rate-limited")
    retry_after = int(r.headers["Retry-After"])
    assert 0 < retry_after <= 30
    # While locked even the right password is refused (a guesser learns nothing).
    r = await attempt(http, victim["email"], victim["password"])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # Other accounts at the same address are not affected.
    other = await sign_up(http, email=unique_email("unaffected"))
    assert (await attempt(http, other["email"], other["password"])).status_code == 200
    # The user still has a way in that needs no password: the reset mail (which also lifts the lock).
    assert (await http.post("/auth/password-reset", json={"email": victim["email"]})).status_code == 202


async def test_one_address_guessing_many_accounts_is_throttled_but_its_known_users_are_not(system):
    ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    transport = httpx.AsyncHTTPTransport(local_address=ip)
    async with httpx.AsyncClient(base_url=system.api, transport=transport, timeout=20.0) as http:
        regular = await sign_up(http, email=unique_email("regular"))  # signs in from this address
        throttled = None
        for i in range(40):
            r = await attempt(http, unique_email(f"stuffing{i}"), "leaked password 123")
            if r.status_code == 429:
                throttled = i
                break
            assert r.status_code == 401, r.text
        assert throttled == 30, f"address lock expected after 30 failures, got {throttled}"
        assert int(r.headers["Retry-After"]) > 0
        # Someone who signed in from here before is not shut out by the stuffing.
        assert (await attempt(http, regular["email"], regular["password"])).status_code == 200
        # A real account that never signed in from here is protected like the rest.
        fresh = unique_email("newcomer")
        async with httpx.AsyncClient(base_url=system.api, timeout=20.0) as elsewhere:
            await sign_up(elsewhere, email=fresh)
        assert (await attempt(http, fresh, "correct horse battery staple 9")).status_code == 429
