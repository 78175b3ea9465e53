"""Test-only signing keys and a JWKS server, for tests that need access tokens without identity."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_JWK_KINDS: dict[str, Any] = {"EdDSA": jwt.algorithms.OKPAlgorithm, "RS256": jwt.algorithms.RSAAlgorithm,
                              "ES256": jwt.algorithms.ECAlgorithm}


class TestSigner:
    """A signing key like identity's: Ed25519 (EdDSA) by default, RSA (RS256, `bits` long), or
    P-256 (ES256, which the kit's verifier also accepts)."""

    __test__ = False  # not a pytest class

    def __init__(self, kid: str | None = None, *, algorithm: str = "EdDSA", bits: int = 2048):
        self.kid = kid or uuid.uuid4().hex[:12]
        self.algorithm = algorithm
        self.key: Any
        if algorithm == "EdDSA":
            self.key = Ed25519PrivateKey.generate()
        elif algorithm == "RS256":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        elif algorithm == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported algorithm {algorithm!r}")

    def jwk(self) -> dict[str, Any]:
        kind = _JWK_KINDS[self.algorithm]
        data = json.loads(kind.to_jwk(self.key.public_key()))
        return {**data, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def token(self, sub: uuid.UUID | None = None, *, roles: list[dict[str, Any]] | None = None, ttl: int = 300,
              issuer: str = "dropslot-identity", audience: str = "dropslot", **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "sub": str(sub or uuid.uuid4()), "iss": issuer, "aud": audience, "iat": now, "exp": now + ttl,
            "typ": "access", "roles": roles if roles is not None else [{"code": "customer", "store_id": None}],
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm=self.algorithm, headers={"kid": self.kid})


class JwksServer:
    """Serves the JWKS of some signers on a free loopback port."""

    def __init__(self, *signers: TestSigner):
        self.signers = list(signers)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.hits = 0

    async def start(self) -> str:
        async def jwks(_: web.Request) -> web.Response:
            self.hits += 1
            return web.json_response({"keys": [s.jwk() for s in self.signers]})

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        self.runner = web.AppRunner(app, shutdown_timeout=2.0)  # a teardown never waits long
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
