import asyncio
import uuid

import pytest
from dropslot_kit.auth import JWKSVerifier
from dropslot_kit.errors import InvalidToken
from dropslot_kit.testkeys import JwksServer, TestSigner


@pytest.fixture
async def keys():
    signer = TestSigner()
    server = JwksServer(signer)
    await server.start()
    yield signer, server
    await server.stop()


def verifier(url: str) -> JWKSVerifier:
    return JWKSVerifier(url, issuer="dropslot-identity", audience="dropslot", min_refresh_interval=0.0)


async def test_valid_token_gives_principal_with_store_roles(keys):
    signer, server = keys
    store = uuid.uuid4()
    uid = uuid.uuid4()
    p = await verifier(server.url).verify(signer.token(uid, roles=[{"code": "store_owner", "store_id": str(store)}]))
    assert p.user_id == uid and p.owns_store(store) and p.works_at(store)
    assert not p.owns_store(uuid.uuid4()) and not p.is_platform_admin


async def test_keys_are_cached_between_verifications(keys):
    signer, server = keys
    v = verifier(server.url)
    for _ in range(5):
        await v.verify(signer.token())
    assert server.hits == 1


@pytest.mark.parametrize("case", ["other-key", "expired", "altered", "wrong-audience", "garbage", "refresh-typ"])
async def test_bad_tokens_are_refused(keys, case):
    signer, server = keys
    token = {
        "other-key": lambda: TestSigner(kid=signer.kid).token(),
        "expired": lambda: signer.token(ttl=-60),
        "altered": lambda: _alter(signer.token()),
        "wrong-audience": lambda: signer.token(audience="someone-else"),
        "garbage": lambda: "not-a-token",
        "refresh-typ": lambda: signer.token(typ="refresh"),
    }[case]()
    with pytest.raises(InvalidToken):
        await verifier(server.url).verify(token)


async def test_rotated_key_is_picked_up_without_restart(keys):
    signer, server = keys
    v = verifier(server.url)
    await v.verify(signer.token())
    new = TestSigner()
    server.signers.append(new)  # identity rotates: the old key stays published, the new one signs
    await v.verify(new.token())
    await v.verify(signer.token())


def _alter(token: str) -> str:
    head, body, sig = token.split(".")
    import base64
    import json

    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["roles"] = [{"code": "platform_admin", "store_id": None}]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


async def test_a_verified_token_is_remembered_but_never_past_its_expiry(keys, monkeypatch):
    signer, server = keys
    v = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", leeway=0)
    token = signer.token(ttl=2)
    first = await v.verify(token)
    calls = 0
    real = v._verify

    async def counting(t: str):
        nonlocal calls
        calls += 1
        return await real(t)

    monkeypatch.setattr(v, "_verify", counting)
    assert await v.verify(token) == first and calls == 0  # remembered: no second signature check
    await asyncio.sleep(2.2)  # the token has expired
    with pytest.raises(InvalidToken):
        await v.verify(token)
    assert calls == 1


async def test_an_altered_token_is_not_taken_for_a_remembered_one(keys):
    signer, server = keys
    v = verifier(server.url)
    token = signer.token()
    await v.verify(token)
    with pytest.raises(InvalidToken):
        await v.verify(_alter(token))


async def test_remembered_tokens_are_bounded(keys):
    signer, server = keys
    v = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", verified_max=3)
    tokens = [signer.token() for _ in range(5)]
    for t in tokens:
        await v.verify(t)
    assert list(v._verified) == tokens[2:]
