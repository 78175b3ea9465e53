"""Identity's rules without I/O: password policy, tokens, roles, statuses, throttling, keys."""

from __future__ import annotations

import base64
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from dropslot_identity.auth import client_ip
from dropslot_identity.domain import passwords, roles, tokens, users
from dropslot_identity.domain.throttle import LockRule
from dropslot_identity.keys import generate, load_private, public_jwk, serialize_private
from starlette.requests import Request


# --- password policy -------------------------------------------------------------------------------
@pytest.mark.parametrize("pw", ["correct horse battery staple 9", "tangerine-ukulele-47", "Zq7!vP0#mW"])
def test_reasonable_passwords_pass(pw):
    assert passwords.problems(pw, email="someone@example.com", name="Some One") == []


@pytest.mark.parametrize("pw, why", [
    ("short", "at least 8"),
    ("password", "common"),
    ("Password1", "common"),           # case does not rescue a breached password
    ("iloveyou", "common"),
    ("qwertyuiop", "common"),
    ("aaaaaaaaaaaa", "too simple"),
    ("abcdefghij", "too simple"),
    ("98765432", "too simple"),
    ("zxcvbnmasdf", None),             # not a straight run: allowed unless breached
    ("x" * 257, "at most 256"),
])
def test_weak_passwords_are_refused_with_a_reason(pw, why):
    found = passwords.problems(pw)
    if why is None:
        assert not any("too simple" in p for p in found)
    else:
        assert any(why in p for p in found), found


def test_password_must_not_be_the_email_or_name():
    assert any("email" in p for p in passwords.problems("margarethe.k@example.com", email="Margarethe.K@example.com"))
    assert any("email" in p for p in passwords.problems("margarethe.k", email="margarethe.k@example.com"))
    assert any("name" in p for p in passwords.problems("Ada Lovelace", name="ada lovelace"))


def test_policy_lengths_are_configurable():
    strict = passwords.PasswordPolicy(min_length=12, max_length=20)
    assert passwords.problems("glimmer-otter", policy=strict) == []
    assert passwords.problems("glimmer-ott", policy=strict)
    assert passwords.problems("glimmer-otter-" * 2, policy=strict)


# --- tokens ---------------------------------------------------------------------------------------------
def test_tokens_are_random_and_stored_only_as_a_hash():
    a, b = tokens.new_token(), tokens.new_token()
    assert a != b and len(a) >= 43
    h = tokens.hash_token(a)
    assert isinstance(h, bytes) and len(h) == 32 and a.encode() not in h
    assert tokens.same_token(a, h) and not tokens.same_token(b, h)
    assert tokens.looks_like_token(a)
    assert not tokens.looks_like_token("x") and not tokens.looks_like_token("a b" * 10)


# --- users ----------------------------------------------------------------------------------------------
def test_email_shape_and_case_insensitive_key():
    assert users.valid_email("a.b+tag@example.co.uk")
    for bad in ("no-at-sign", "a@b", "a@@b.com", "two words@example.com", "a@example.", ""):
        assert not users.valid_email(bad), bad
    assert users.email_key("  Ada@Example.COM ") == "ada@example.com"
    assert users.clean_email("  Ada@Example.COM ") == "Ada@Example.COM"


def test_status_machine():
    assert users.can_move("active", "suspended") and users.can_move("suspended", "active")
    assert users.can_move("suspended", "deleted")
    assert not users.can_move("deleted", "active") and not users.can_move("deleted", "suspended")


# --- roles ----------------------------------------------------------------------------------------------
S1, S2 = uuid.uuid4(), uuid.uuid4()


def test_role_scope_rules():
    assert roles.scope_problem("store_staff", S1) is None
    assert roles.scope_problem("platform_admin", None) is None
    assert roles.scope_problem("store_staff", None)[0] == "store_id"
    assert roles.scope_problem("customer", S1)[0] == "store_id"
    assert roles.scope_problem("god", None)[0] == "code"


def test_who_may_grant_what():
    owner = [("customer", None), ("store_owner", S1)]
    admin = [("platform_admin", None)]
    staff = [("store_staff", S1)]
    assert roles.may_manage(owner, "store_staff", S1)
    assert not roles.may_manage(owner, "store_staff", S2)       # another store
    assert not roles.may_manage(owner, "store_owner", S1)       # owners do not make owners
    assert not roles.may_manage(owner, "platform_admin", None)
    assert not roles.may_manage(staff, "store_staff", S1)       # staff do not hire staff
    assert not roles.may_manage([("customer", None)], "store_staff", S1)
    for code, store in (("store_owner", S2), ("platform_admin", None), ("customer", None)):
        assert roles.may_manage(admin, code, store)


# --- throttling arithmetic ------------------------------------------------------------------------------
def test_lockout_grows_exponentially_and_is_capped():
    rule = LockRule(threshold=5, base_seconds=30, max_seconds=900)
    assert [rule.lock_seconds(n) for n in range(1, 5)] == [0, 0, 0, 0]
    assert [rule.lock_seconds(n) for n in range(5, 11)] == [30, 60, 120, 240, 480, 900]
    assert rule.lock_seconds(10_000) == 900


# --- client address -------------------------------------------------------------------------------------
def _request(xff: str | None, peer: str = "10.0.0.9") -> Request:
    headers = [(b"x-forwarded-for", xff.encode())] if xff else []
    return Request({"type": "http", "headers": headers, "client": (peer, 1234)})


def test_client_address_trusts_only_the_proxy_hops():
    assert client_ip(_request("6.6.6.6, 203.0.113.5"), 1) == "203.0.113.5"   # forged left part ignored
    assert client_ip(_request("203.0.113.5, 10.1.1.1"), 2) == "203.0.113.5"
    assert client_ip(_request(None), 1) == "10.0.0.9"
    assert client_ip(_request("203.0.113.5"), 0) == "10.0.0.9"


# --- signing keys ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
def test_jwk_round_trip_and_encrypted_storage(algorithm):
    key = generate(algorithm)
    jwk = public_jwk(key.public_key())
    if algorithm == "EdDSA":
        assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519" and "n" not in jwk
    else:
        assert jwk["kty"] == "RSA" and jwk["e"] == "AQAB" and key.key_size == 2048
    assert jwk["alg"] == algorithm and jwk["use"] == "sig" and jwk["kid"]
    assert public_jwk(key.public_key())["kid"] == jwk["kid"]  # thumbprint: stable
    pem = serialize_private(key, "s3cret")
    assert "ENCRYPTED" in pem
    with pytest.raises(TypeError):
        load_private(pem, None)
    again = load_private(pem, "s3cret")
    token = jwt.encode({"sub": "x"}, again, algorithm=algorithm, headers={"kid": jwk["kid"]})
    assert jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[algorithm])["sub"] == "x"


def test_rsa_thumbprint_is_rfc7638():
    """RFC 7638 section 3.1's example key and its thumbprint."""
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
         "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajr"
         "n1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")
    public = rsa.RSAPublicNumbers(65537, int.from_bytes(base64.urlsafe_b64decode(n + "=="), "big")).public_key()
    assert public_jwk(public)["kid"] == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_a_short_rsa_key_is_refused():
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="fewer than 2048"):
        load_private(serialize_private(short, None), None)
