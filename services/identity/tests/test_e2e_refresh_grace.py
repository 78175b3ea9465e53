"""Refresh-token reuse grace, through the gateway: a client refreshing twice at once with the same
token (two tabs, a retry after a lost response) stays signed in; reuse after the grace window, or
of a token two rotations old, still revokes the session; a logged-out session is never revived.

The default system runs with the default grace (30 s); the window-expiry case runs on a second
system whose grace is 2 s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import jwt
import pytest
from dropslot_kit.testing import (
    Infra,
    RunningSystem,
    own_system,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

SHORT_GRACE = 2.0


def sid(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["sid"])


def problem_type(r: httpx.Response) -> str:
    return str(r.json()["type"]).rsplit("/", 1)[-1]


async def refresh(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post("/auth/refresh", json={"refresh_token": token})


async def me(http: httpx.AsyncClient, access_token: str) -> int:
    r = await http.get("/users/me", headers={"Authorization": f"Bearer {access_token}"})
    return r.status_code


async def assert_no_theft_event(http: httpx.AsyncClient, tap, user: dict, token: str) -> None:
    """Log out, wait for that event (emitted after anything the refreshes emitted), then check that
    no reuse revocation was ever emitted for this user."""
    assert (await http.post("/auth/logout", json={"refresh_token": token})).status_code == 204
    await tap.wait_for("identity.session.revoked", user_id=user["id"], reason="logout")
    assert tap.find("identity.session.revoked", user_id=user["id"], reason="reuse_detected") == []


async def test_parallel_refreshes_with_one_token_all_succeed_and_either_token_keeps_working(http, tap):
    user = await sign_up(http, email=unique_email("parallel"))
    session = sid(user["access_token"])
    responses = await asyncio.gather(*(refresh(http, user["refresh_token"]) for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    pairs = [r.json() for r in responses]
    assert len({p["refresh_token"] for p in pairs}) == 4
    assert {sid(p["access_token"]) for p in pairs} == {session}
    for p in pairs:
        assert await me(http, p["access_token"]) == 200

    # Whichever token the client keeps (the last one written to storage) rotates and keeps working.
    kept = pairs[2]["refresh_token"]
    r = await refresh(http, kept)
    assert r.status_code == 200, r.text
    r = await refresh(http, r.json()["refresh_token"])
    assert r.status_code == 200, r.text
    latest = r.json()
    assert await me(http, latest["access_token"]) == 200
    await assert_no_theft_event(http, tap, user, latest["refresh_token"])


async def test_each_token_of_a_parallel_refresh_can_be_the_one_kept(http):
    """Two sessions of one user, each refreshed twice at once; one keeps the first answer, the
    other the second: both go on."""
    user = await sign_up(http, email=unique_email("either"))
    other = (await http.post("/auth/login", json={"email": user["email"], "password": user["password"]})).json()
    for start, keep in ((user["refresh_token"], 0), (other["refresh_token"], 1)):
        a, b = await asyncio.gather(refresh(http, start), refresh(http, start))
        assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
        r = await refresh(http, (a, b)[keep].json()["refresh_token"])
        assert r.status_code == 200, r.text
        assert await me(http, r.json()["access_token"]) == 200


async def test_a_retry_inside_the_window_gets_a_working_pair(http, tap):
    """The first answer was lost on the way: the client retries with the token it still has."""
    user = await sign_up(http, email=unique_email("retry"))
    first = await refresh(http, user["refresh_token"])
    assert first.status_code == 200  # ...but the client never saw this
    retry = await refresh(http, user["refresh_token"])
    assert retry.status_code == 200, retry.text
    pair = retry.json()
    assert pair["refresh_token"] != first.json()["refresh_token"]
    assert sid(pair["access_token"]) == sid(user["access_token"])
    assert await me(http, pair["access_token"]) == 200
    # Retrying the same lost call once more is still fine.
    assert (await refresh(http, user["refresh_token"])).status_code == 200
    r = await refresh(http, pair["refresh_token"])
    assert r.status_code == 200, r.text
    await assert_no_theft_event(http, tap, user, r.json()["refresh_token"])


async def test_a_token_two_rotations_old_is_theft_even_inside_the_window(http, tap):
    user = await sign_up(http, email=unique_email("twoold"))
    second = await refresh(http, user["refresh_token"])
    third = await refresh(http, second.json()["refresh_token"])
    assert third.status_code == 200
    r = await refresh(http, user["refresh_token"])
    assert r.status_code == 401 and problem_type(r) == "refresh-token-reused"
    assert (await refresh(http, third.json()["refresh_token"])).status_code == 401
    await tap.wait_for("identity.session.revoked", user_id=user["id"], reason="reuse_detected")


async def test_logout_is_not_undone_by_a_token_inside_the_window(http, tap):
    user = await sign_up(http, email=unique_email("gracelogout"))
    r = await refresh(http, user["refresh_token"])
    assert r.status_code == 200
    successor = r.json()
    assert (await http.post("/auth/logout", json={"refresh_token": successor["refresh_token"]})).status_code == 204
    r = await refresh(http, user["refresh_token"])  # spent a moment ago, session logged out since
    assert r.status_code == 401, r.text
    assert (await refresh(http, successor["refresh_token"])).status_code == 401
    assert await me(http, successor["access_token"]) == 401
    await tap.wait_for("identity.session.revoked", user_id=user["id"], reason="logout")


async def test_a_suspended_account_is_not_revived_by_the_window(http, admin):
    user = await sign_up(http, email=unique_email("gracesuspend"))
    r = await refresh(http, user["refresh_token"])
    assert r.status_code == 200
    r2 = await http.post(f"/users/{user['id']}/suspend", json={}, headers=admin["headers"])
    assert r2.status_code == 200, r2.text
    assert (await refresh(http, user["refresh_token"])).status_code == 401
    assert (await refresh(http, r.json()["refresh_token"])).status_code == 401


# --- a system with a short grace window ----------------------------------------------------------------
@pytest.fixture(scope="module")
def short_grace_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with own_system(infra, "idg", tmp_path_factory.mktemp("identity-grace"), extra_env={
        "DROPSLOT_IDENTITY_REFRESH_REUSE_GRACE_SECONDS": str(SHORT_GRACE),
    }) as running:
        yield running


@pytest.fixture
async def short_http(short_grace_system: RunningSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=short_grace_system.api, timeout=20.0) as client:
        yield client


async def test_reuse_after_the_window_revokes_the_family(short_http):
    http = short_http
    user = await sign_up(http, email=unique_email("late"))
    r = await refresh(http, user["refresh_token"])
    assert r.status_code == 200
    successor = r.json()
    await asyncio.sleep(SHORT_GRACE + 1.0)
    r = await refresh(http, user["refresh_token"])
    assert r.status_code == 401 and problem_type(r) == "refresh-token-reused", r.text
    # The whole family is gone: the successor and its access token too.
    assert (await refresh(http, successor["refresh_token"])).status_code == 401
    assert await me(http, successor["access_token"]) == 401
