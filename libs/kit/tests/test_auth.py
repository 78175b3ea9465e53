import asyncio
import time
import uuid

import jwt
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


BAD = ["other-key", "expired", "altered", "wrong-audience", "garbage", "refresh-typ", "wrong-issuer", "alg-none",
       "no-exp", "no-sub", "issued-in-future", "not-yet-valid", "bad-signature", "four-segments", "not-base64",
       "alg-hs256", "header-not-object"]


@pytest.mark.parametrize("case", BAD)
async def test_bad_tokens_are_refused(keys, case):
    signer, server = keys
    now = int(time.time())
    token = {
        "other-key": lambda: TestSigner(kid=signer.kid).token(),
        "expired": lambda: signer.token(ttl=-60),
        "altered": lambda: _alter(signer.token()),
        "wrong-audience": lambda: signer.token(audience="someone-else"),
        "garbage": lambda: "not-a-token",
        "refresh-typ": lambda: signer.token(typ="refresh"),
        "wrong-issuer": lambda: signer.token(issuer="someone-else"),
        "alg-none": lambda: _unsigned(signer, {"sub": "x", "iss": "dropslot-identity", "aud": "dropslot",
                                               "iat": now, "exp": now + 60}),
        "no-exp": lambda: _signed(signer, {"sub": str(uuid.uuid4()), "iss": "dropslot-identity", "aud": "dropslot",
                                           "iat": now}),
        "no-sub": lambda: _signed(signer, {"iss": "dropslot-identity", "aud": "dropslot", "iat": now, "exp": now + 60}),
        "issued-in-future": lambda: signer.token(iat=now + 3600),
        "not-yet-valid": lambda: signer.token(nbf=now + 3600),
        "bad-signature": lambda: signer.token()[:-4] + "AAAA",
        "four-segments": lambda: signer.token() + ".AAAA",
        "not-base64": lambda: "a$b.c*d.e!f",
        "alg-hs256": lambda: jwt.encode({"sub": "x", "iss": "dropslot-identity", "aud": "dropslot", "iat": now,
                                         "exp": now + 60}, "s" * 32, algorithm="HS256", headers={"kid": signer.kid}),
        "header-not-object": lambda: _b64(b"[1]") + "." + signer.token().split(".", 1)[1],
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


async def test_an_audience_list_that_names_us_is_accepted(keys):
    signer, server = keys
    p = await verifier(server.url).verify(signer.token(audience=["other", "dropslot"]))
    assert p.user_id


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(signer: TestSigner, claims: dict) -> str:
    return jwt.encode(claims, signer.key, algorithm="EdDSA", headers={"kid": signer.kid})


def _unsigned(signer: TestSigner, claims: dict) -> str:
    import json

    head = _b64(json.dumps({"alg": "none", "kid": signer.kid}).encode())
    return f"{head}.{_b64(json.dumps(claims).encode())}."


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
    calls = _counting(v, monkeypatch)
    assert await v.verify(token) == first and calls[0] == 0  # remembered: no second signature check
    await asyncio.sleep(2.2)  # the token has expired
    with pytest.raises(InvalidToken):
        await v.verify(token)
    assert calls[0] == 1


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


def _claiming(alg: str, signer: TestSigner) -> str:
    """One of the signer's good tokens whose header names `alg` under the signer's kid."""
    _, body, sig = signer.token().split(".")
    return _b64(b'{"alg":"%s","kid":"%s"}' % (alg.encode(), signer.kid.encode())) + f".{body}.{sig}"


async def test_es256_tokens_are_accepted_and_an_algorithm_must_match_its_key(keys):
    signer, server = keys
    ec_signer = TestSigner(algorithm="ES256")
    server.signers.append(ec_signer)
    v = verifier(server.url)
    assert (await v.verify(ec_signer.token())).user_id
    # The EC key's kid with a header claiming EdDSA (and the other way round) is refused.
    with pytest.raises(InvalidToken, match="does not match"):
        await v.verify(_claiming("EdDSA", ec_signer))
    with pytest.raises(InvalidToken, match="does not match"):
        await v.verify(_claiming("ES256", signer))


@pytest.mark.filterwarnings("ignore:The RSA key is 1024 bits")  # on purpose: such a key must verify nothing
async def test_rs256_tokens_are_accepted_and_forgeries_refused(keys):
    signer, server = keys
    rsa_signer, other = TestSigner(algorithm="RS256"), TestSigner(algorithm="RS256")
    short = TestSigner(algorithm="RS256", bits=1024)
    server.signers += [rsa_signer, short]
    v = verifier(server.url)
    user = uuid.uuid4()
    assert (await v.verify(rsa_signer.token(user))).user_id == user
    # Another RSA key's signature under our kid; a payload altered under the real signature.
    other.kid = rsa_signer.kid
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(other.token())
    head, _, sig = rsa_signer.token().split(".")
    body = rsa_signer.token(roles=[{"code": "platform_admin", "store_id": None}]).split(".")[1]
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(f"{head}.{body}.{sig}")
    # The RSA key's kid with a header claiming EdDSA, and an Ed25519 kid claiming RS256.
    with pytest.raises(InvalidToken, match="does not match"):
        await v.verify(_claiming("EdDSA", rsa_signer))
    with pytest.raises(InvalidToken, match="does not match"):
        await v.verify(_claiming("RS256", signer))
    # A published key shorter than 2048 bits verifies nothing, even its own good signatures.
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(short.token())


PROOF_KEY = "k" * 40


def _counting(v: JWKSVerifier, monkeypatch) -> list[int]:
    calls = [0]
    real = v._verify

    async def counting(t: str):
        calls[0] += 1
        return await real(t)

    monkeypatch.setattr(v, "_verify", counting)
    return calls


async def test_a_gateway_proof_skips_the_signature_but_never_the_claims(keys, monkeypatch):
    from dropslot_kit.auth import gateway_proof

    signer, server = keys
    v = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", proof_keys=["old" * 11, PROOF_KEY])
    calls = _counting(v, monkeypatch)
    uid = uuid.uuid4()
    token = signer.token(uid)
    assert (await v.verify(token, gateway_proof(PROOF_KEY, token))).user_id == uid  # any configured key
    assert calls[0] == 0 and server.hits == 0  # no signature check, not even a key fetch
    for bad in (signer.token(ttl=-60), signer.token(audience="other"), signer.token(typ="refresh"),
                signer.token(issuer="other"), signer.token(iat=int(time.time()) + 3600)):
        with pytest.raises(InvalidToken):
            await v.verify(bad, gateway_proof(PROOF_KEY, bad))


async def test_the_gateway_keeps_each_tokens_proof_and_forgets_the_oldest(keys):
    from dropslot_kit.auth import gateway_proof

    signer, server = keys
    v = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", proof_keys=[PROOF_KEY],
                     verified_max=2)
    tokens = [signer.token() for _ in range(3)]
    assert [v.proof(t) for t in tokens] == [gateway_proof(PROOF_KEY, t) for t in tokens]
    assert list(v._proofs) == tokens[1:]  # bounded like the verified tokens: the oldest went
    assert v.proof(tokens[2]) == gateway_proof(PROOF_KEY, tokens[2])  # a kept one is the same proof
    unkept = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", proof_keys=[PROOF_KEY],
                          verified_ttl=0)
    assert unkept.proof(tokens[0]) == gateway_proof(PROOF_KEY, tokens[0]) and not unkept._proofs
    assert JWKSVerifier(server.url, issuer="i", audience="a").proof(tokens[0]) is None


async def test_a_wrong_or_foreign_proof_means_a_full_check(keys, monkeypatch):
    from dropslot_kit.auth import gateway_proof

    signer, server = keys
    v = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", proof_keys=[PROOF_KEY])
    calls = _counting(v, monkeypatch)
    token = signer.token()
    with pytest.raises(InvalidToken):  # the proof of another token does not cover an altered one
        await v.verify(_alter(token), gateway_proof(PROOF_KEY, token))
    forged = TestSigner(kid=signer.kid).token()
    with pytest.raises(InvalidToken):  # a proof under a key we do not hold is no proof
        await v.verify(forged, gateway_proof("x" * 40, forged))
    assert (await v.verify(token, "not-a-proof")).user_id  # a good token with a bad proof: checked in full
    assert calls[0] == 3


async def test_without_keys_proofs_are_ignored_and_short_keys_are_refused(keys, monkeypatch):
    from dropslot_kit.auth import gateway_proof

    signer, server = keys
    v = verifier(server.url)
    calls = _counting(v, monkeypatch)
    token = signer.token()
    await v.verify(token, gateway_proof(PROOF_KEY, token))
    assert calls[0] == 1 and v.proof(token) is None
    with pytest.raises(ValueError, match="at least 32"):
        JWKSVerifier(server.url, issuer="i", audience="a", proof_keys=["change-me"])


async def test_a_remembered_header_still_needs_each_tokens_signature(keys):
    """The header segment of a verified token is remembered (its kid and alg); the next token
    with that header is still checked in full, and a header nobody verified is not kept."""
    signer, server = keys
    v = verifier(server.url)
    await v.verify(signer.token())
    head = signer.token().split(".")[0]
    assert list(v._headers) == [head]
    # Same header, other tokens: an altered payload and another key's signature are refused.
    with pytest.raises(InvalidToken):
        await v.verify(_alter(signer.token()))
    forged = TestSigner(kid=signer.kid).token()
    assert forged.split(".")[0] == head
    with pytest.raises(InvalidToken):
        await v.verify(forged)
    # A header whose token did not verify is never remembered.
    with pytest.raises(InvalidToken):
        await v.verify(_unsigned(signer, {"sub": "x"}))
    assert list(v._headers) == [head]
    assert (await v.verify(signer.token(uuid.UUID(int=7)))).user_id == uuid.UUID(int=7)


async def test_an_issued_token_remembered_from_identitys_answer_needs_no_signature_check(keys):
    signer, server = keys
    v = verifier(server.url)
    unpublished = TestSigner()  # its key is in no JWKS: only a remembered token can pass
    uid = uuid.uuid4()
    token = unpublished.token(uid)
    with pytest.raises(InvalidToken):
        await v.verify(token)
    assert v.remember_issued(token) is True
    assert (await v.verify(token)).user_id == uid
    # Claims are still judged: an expired, foreign, refresh or malformed token is not remembered.
    for bad in (unpublished.token(ttl=-60), unpublished.token(issuer="someone-else"),
                unpublished.token(typ="refresh"), "not-a-token", "a.b.c"):
        assert v.remember_issued(bad) is False
        with pytest.raises(InvalidToken):
            await v.verify(bad)


async def test_a_body_the_gateway_vouches_for_is_told_apart_from_a_token(keys, monkeypatch):
    """The gateway's proof for a request of its own (its body) and its proof for a token are
    never interchangeable, even for the same text; a rotated-out key still verifies."""
    from dropslot_kit.auth import body_proof, gateway_proof

    signer, server = keys
    old, new = "o" * 40, "n" * 40
    gateway = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", proof_keys=[old])
    service = JWKSVerifier(server.url, issuer="dropslot-identity", audience="dropslot", proof_keys=[new, old])
    body = '{"keys": []}'
    proof = gateway.vouch(body)
    assert proof == body_proof(old, body) and service.vouched(body, proof)
    assert not service.vouched(body + " ", proof) and not service.vouched(body, None)
    assert not service.vouched(body, gateway_proof(old, body))  # a token-style proof of the same text
    calls = _counting(service, monkeypatch)
    token = signer.token()
    await service.verify(token, body_proof(old, token))  # a body-style proof of a token: no proof
    assert calls[0] == 1
    assert verifier(server.url).vouch(body) is None and not verifier(server.url).vouched(body, proof)
