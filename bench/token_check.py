"""What checking an access token costs, per signing algorithm (`make bench-tokens`).

In a drop, every person's first request carries a token the gateway has not seen, so the gateway
checks one signature per person at the moment of the storm (later requests hit its cache of
verified tokens). This measures the kit's verifier (`dropslot_kit.auth.JWKSVerifier`, the code
the gateway and every service run) on N distinct tokens per algorithm, in this process, with its
CPU time (`time.process_time`): a first check (signature and claims), a remembered token, and the
service side of a gateway proof (claims only, no signature). Signing cost is shown too: identity
pays it once per sign-in or refresh.

    .venv/bin/python bench/token_check.py [--tokens 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable

from dropslot_kit.auth import JWKSVerifier, gateway_proof
from dropslot_kit.testkeys import JwksServer, TestSigner

PROOF_KEY = "p" * 40


def cpu_us_per_call(fn: Callable[[], object], n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


async def check_all(verifier: JWKSVerifier, tokens: list[str], proofs: list[str | None]) -> float:
    """CPU µs per verify over these tokens (the JWKS is fetched before the clock starts)."""
    await verifier.verify(tokens[0], proofs[0])
    t = time.process_time()
    for token, proof in zip(tokens, proofs, strict=True):
        await verifier.verify(token, proof)
    return (time.process_time() - t) / len(tokens) * 1e6


async def measure(algorithm: str, n: int, rounds: int) -> dict[str, float]:
    signer = TestSigner(algorithm=algorithm)
    server = JwksServer(signer)
    url = await server.start()
    try:
        t = time.process_time()
        tokens = [signer.token(uuid.uuid4()) for _ in range(n)]
        sign_us = (time.process_time() - t) / n * 1e6
        proofs = [gateway_proof(PROOF_KEY, tok) for tok in tokens]
        first, seen, proven = [], [], []
        for _ in range(rounds):
            # A fresh verifier per round: nothing remembered, every token a first check.
            v = JWKSVerifier(url, issuer="dropslot-identity", audience="dropslot", proof_keys=[PROOF_KEY])
            first.append(await check_all(v, tokens, [None] * n))
            seen.append(await check_all(v, tokens, [None] * n))
            v2 = JWKSVerifier(url, issuer="dropslot-identity", audience="dropslot", proof_keys=[PROOF_KEY])
            proven.append(await check_all(v2, tokens, proofs))
        return {"sign": sign_us, "first": statistics.median(first), "seen": statistics.median(seen),
                "proven": statistics.median(proven)}
    finally:
        await server.stop()


async def main_async(args: argparse.Namespace) -> None:
    print(f"token check, CPU µs per token (median of {args.rounds} rounds of {args.tokens} distinct tokens)")
    print(f"{'algorithm':<10} {'sign':>8} {'first check':>12} {'remembered':>11} {'with proof':>11}")
    for algorithm in ("RS256", "EdDSA"):
        r = await measure(algorithm, args.tokens, args.rounds)
        print(f"{algorithm:<10} {r['sign']:8.1f} {r['first']:12.1f} {r['seen']:11.1f} {r['proven']:11.1f}")
    print("first check: what the gateway pays on a person's first request; remembered: later requests "
          "within its cache; with proof: a service behind the gateway (claims only).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
