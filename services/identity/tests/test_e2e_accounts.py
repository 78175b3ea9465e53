"""Accounts through the gateway: sign-up, sign-in, refresh rotation, logout, email verification,
password reset. Tokens that identity only mails out are read from its events, as notifications
reads them."""

from __future__ import annotations

import hashlib

import jwt
import pytest
from dropslot_kit.testing import eventually, sign_up, unique_email

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery staple 9"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


async def login(http, email: str, password: str) -> dict:
    r = await http.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    return {**r.json(), "headers": {"Authorization": f"Bearer {r.json()['access_token']}"}}


def problem_type(r) -> str:
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    return r.json()["type"].rsplit("/", 1)[-1]


async def test_sign_up_returns_the_user_and_a_verification_event(http, tap):
    email = unique_email("signup")
    r = await http.post("/auth/register", json={"email": email, "password": PASSWORD, "name": "Ada Lovelace"})
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["email"] == email and user["name"] == "Ada Lovelace" and user["status"] == "active"
    assert user["email_verified_at"] is None and user["email_verified"] is False
    assert user["roles"] == [{"code": "customer", "store_id": None}]
    assert "password" not in r.text and "hash" not in r.text

    event = await tap.wait_for("identity.user.registered", user_id=user["id"])
    assert event["data"]["email"] == email and event["data"]["name"] == "Ada Lovelace"
    assert event["data"]["verification_token"] and event["data"]["verification_expires_at"]
    assert event["actor"]["user_id"] == user["id"] and event["actor"]["ip"]


async def test_duplicate_email_is_409_email_taken_whatever_the_case(http):
    email = unique_email("dup")
    await sign_up(http, email=email)
    r = await http.post("/auth/register", json={"email": email.upper(), "password": PASSWORD, "name": "Twin"})
    assert r.status_code == 409 and problem_type(r) == "email-taken"


@pytest.mark.parametrize("password", ["short", "password123", "12345678", "aaaaaaaaaaaa"])
async def test_weak_password_is_422_naming_the_field(http, password):
    r = await http.post("/auth/register", json={"email": unique_email("weak"), "password": password, "name": "W"})
    assert r.status_code == 422 and problem_type(r) == "weak-password"
    body = r.json()
    assert body["field"] == "password" and body["errors"][0]["name"] == "password" and body["errors"][0]["reason"]


async def test_malformed_email_is_a_validation_error(http):
    r = await http.post("/auth/register", json={"email": "not-an-email", "password": PASSWORD, "name": "X"})
    assert r.status_code == 422 and problem_type(r) == "validation-error"
    assert r.json()["errors"][0]["name"] == "email"


async def test_sign_in_issues_a_short_lived_rs256_token_with_roles(http):
    user = await sign_up(http, email=unique_email("signin"))
    assert user["token_type"] == "bearer" and user["expires_in"] == 600
    header = jwt.get_unverified_header(user["access_token"])
    assert header["alg"] == "RS256" and header["kid"]
    c = claims(user["access_token"])
    assert c["iss"] == "dropslot-identity" and c["aud"] == "dropslot" and c["typ"] == "access"
    assert c["sub"] == user["id"] and c["email"] == user["email"] and c["email_verified"] is False
    assert c["exp"] - c["iat"] == 600 and c["jti"] and c["sid"]
    assert c["roles"] == [{"code": "customer", "store_id": None}]
    keys = (await http.get("/auth/jwks.json")).json()["keys"]
    assert header["kid"] in {k["kid"] for k in keys}
    assert all("d" not in k for k in keys), "a private key part leaked into the JWKS"

    me = await http.get("/users/me", headers=user["headers"])
    assert me.status_code == 200 and me.json()["id"] == user["id"]
    assert set(me.json()) >= {"id", "email", "name", "status", "email_verified_at", "roles"}


async def test_wrong_password_and_unknown_email_get_the_same_401(http):
    user = await sign_up(http, email=unique_email("wrongpw"))
    wrong = await http.post("/auth/login", json={"email": user["email"], "password": "not the password 1"})
    unknown = await http.post("/auth/login", json={"email": unique_email("ghost"), "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert problem_type(wrong) == problem_type(unknown) == "invalid-credentials"
    strip = lambda b: {k: v for k, v in b.items() if k != "instance"}  # noqa: E731
    assert strip(wrong.json()) == strip(unknown.json())
    # Sign-in is case-insensitive on the address.
    assert (await http.post("/auth/login", json={"email": user["email"].upper(), "password": PASSWORD})).status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_whole_family(http, tap):
    user = await sign_up(http, email=unique_email("rotate"))
    first = user["refresh_token"]
    r = await http.post("/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first and second["access_token"] != user["access_token"]
    assert claims(second["access_token"])["sid"] == claims(user["access_token"])["sid"]
    r = await http.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 200
    third = r.json()

    # The spent first token comes back: someone else has it. The session dies for everyone.
    r = await http.post("/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 401 and problem_type(r) == "refresh-token-reused"
    r = await http.post("/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert r.status_code == 401, "the latest token of a revoked family must not work either"
    event = await tap.wait_for("identity.session.revoked", user_id=user["id"], reason="reuse_detected")
    assert event["data"]["session_id"] == claims(user["access_token"])["sid"]
    # Identity refuses the session's access token at once; other sessions are untouched.
    assert (await http.get("/users/me", headers={"Authorization": f"Bearer {third['access_token']}"})
            ).status_code == 401
    other = await login(http, user["email"], user["password"])
    assert (await http.get("/users/me", headers=other["headers"])).status_code == 200


async def test_garbage_refresh_token_is_401(http):
    r = await http.post("/auth/refresh", json={"refresh_token": "A" * 43})
    assert r.status_code == 401 and problem_type(r) == "refresh-token-invalid"


async def test_logout_revokes_the_session(http, tap):
    user = await sign_up(http, email=unique_email("logout"))
    r = await http.post("/auth/logout", json={"refresh_token": user["refresh_token"]}, headers=user["headers"])
    assert r.status_code == 204
    r = await http.post("/auth/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 401
    assert (await http.get("/users/me", headers=user["headers"])).status_code == 401
    await tap.wait_for("identity.session.revoked", user_id=user["id"], reason="logout")
    # Logging out twice is harmless.
    assert (await http.post("/auth/logout", json={"refresh_token": user["refresh_token"]})).status_code == 204


async def age_token(identity_db, token: str) -> None:
    """Move a one-time token's expiry into the past (instead of waiting out its lifetime)."""
    done = await identity_db.execute(
        "UPDATE one_time_tokens SET expires_at = now() - interval '1 minute' WHERE token_hash = $1",
        hashlib.sha256(token.encode()).digest())
    assert done == "UPDATE 1"


async def test_email_verification_is_single_use_and_expires(http, tap, identity_db):
    user = await sign_up(http, email=unique_email("verify"))
    token = (await tap.wait_for("identity.user.registered", user_id=user["id"]))["data"]["verification_token"]
    r = await http.post("/auth/verify-email", json={"token": token})
    assert r.status_code == 200, r.text
    assert r.json()["email_verified"] is True and r.json()["email_verified_at"]
    verified = await tap.wait_for("identity.user.email_verified", user_id=user["id"])
    assert verified["data"]["email"] == user["email"] and verified["data"]["name"]

    r = await http.post("/auth/verify-email", json={"token": token})
    assert r.status_code == 400 and problem_type(r) == "token-invalid"
    r = await http.post("/auth/verify-email", json={"token": "made-up-token-" + "x" * 30})
    assert r.status_code == 400 and problem_type(r) == "token-invalid"
    # The next access token says so.
    r = await http.post("/auth/refresh", json={"refresh_token": user["refresh_token"]})
    assert claims(r.json()["access_token"])["email_verified"] is True

    other = await sign_up(http, email=unique_email("verify-late"))
    late = (await tap.wait_for("identity.user.registered", user_id=other["id"]))["data"]["verification_token"]
    await age_token(identity_db, late)
    r = await http.post("/auth/verify-email", json={"token": late})
    assert r.status_code == 400 and problem_type(r) == "token-expired"
    me = await http.get("/users/me", headers=other["headers"])
    assert me.json()["email_verified_at"] is None


async def test_resending_verification_replaces_the_old_link(http, tap):
    user = await sign_up(http, email=unique_email("resend"))
    old = (await tap.wait_for("identity.user.registered", user_id=user["id"]))["data"]["verification_token"]
    r = await http.post("/auth/verify-email/resend", headers=user["headers"])
    assert r.status_code == 202
    new = (await tap.wait_for("identity.email_verification.requested", user_id=user["id"]))["data"]["token"]
    assert new != old
    assert (await http.post("/auth/verify-email", json={"token": old})).status_code == 400
    assert (await http.post("/auth/verify-email", json={"token": new})).status_code == 200


async def test_password_reset_flow(http, tap, identity_db):
    user = await sign_up(http, email=unique_email("reset"))
    # The same answer whether or not the account exists.
    r_unknown = await http.post("/auth/password-reset", json={"email": unique_email("nobody")})
    r = await http.post("/auth/password-reset", json={"email": user["email"]})
    assert r.status_code == r_unknown.status_code == 202
    event = await tap.wait_for("identity.password_reset.requested", user_id=user["id"])
    token = event["data"]["token"]
    assert event["data"]["email"] == user["email"] and event["data"]["expires_at"]

    r = await http.post("/auth/password-reset/confirm", json={"token": token, "password": "password1"})
    assert r.status_code == 422 and problem_type(r) == "weak-password"
    new_password = "a brand new passphrase 42"
    r = await http.post("/auth/password-reset/confirm", json={"token": token, "password": new_password})
    assert r.status_code == 204, r.text

    old = await http.post("/auth/login", json={"email": user["email"], "password": user["password"]})
    assert old.status_code == 401
    await login(http, user["email"], new_password)
    # Sessions from before the reset are over.
    assert (await http.post("/auth/refresh", json={"refresh_token": user["refresh_token"]})).status_code == 401
    changed = await tap.wait_for("identity.user.password_changed", user_id=user["id"])
    assert changed["data"]["reason"] == "reset"

    r = await http.post("/auth/password-reset/confirm", json={"token": token, "password": "yet another phrase 43"})
    assert r.status_code == 400 and problem_type(r) == "token-invalid"

    await http.post("/auth/password-reset", json={"email": user["email"]})
    events = await _two_reset_events(tap, user["id"])
    late = events[-1]["data"]["token"]
    await age_token(identity_db, late)
    r = await http.post("/auth/password-reset/confirm", json={"token": late, "password": "yet another phrase 43"})
    assert r.status_code == 400 and problem_type(r) == "token-expired"


async def _two_reset_events(tap, user_id):
    async def check():
        found = tap.find("identity.password_reset.requested", user_id=user_id)
        return found if len(found) >= 2 else None

    return await eventually(check, timeout=30, what="second reset mail event")


async def test_profile_update_and_password_change(http, tap):
    user = await sign_up(http, email=unique_email("profile"))
    r = await http.patch("/users/me", json={"name": "New Name"}, headers=user["headers"])
    assert r.status_code == 200 and r.json()["name"] == "New Name"
    await tap.wait_for("identity.user.updated", user_id=user["id"], name="New Name")

    other_device = await login(http, user["email"], user["password"])
    r = await http.post("/users/me/password", headers=user["headers"],
                        json={"current_password": "wrong one entirely", "new_password": "fresh phrase for me 8"})
    assert r.status_code == 401
    r = await http.post("/users/me/password", headers=user["headers"],
                        json={"current_password": user["password"], "new_password": "fresh phrase for me 8"})
    assert r.status_code == 204
    assert (await http.post("/auth/refresh", json={"refresh_token": other_device["refresh_token"]})).status_code == 401
    assert (await http.post("/auth/refresh", json={"refresh_token": user["refresh_token"]})).status_code == 200
