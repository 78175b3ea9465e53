"""Identity settings: `DROPSLOT_IDENTITY_*` on top of the kit's `DROPSLOT_*`."""

from typing import Literal

from dropslot_kit.settings import KitSettings


class Settings(KitSettings):
    service: str = "identity"

    # --- tokens --------------------------------------------------------------------------------
    identity_access_ttl_seconds: int = 600
    identity_refresh_ttl_seconds: int = 30 * 24 * 3600
    identity_verification_ttl_seconds: int = 48 * 3600
    identity_reset_ttl_seconds: int = 3600
    # A refresh token presented again this soon after it was rotated (two tabs refreshing at once, a
    # retry after a lost response) gets a working sibling token instead of revoking the session as
    # stolen; later reuse still revokes it. 0 turns the grace off. See `IdentityService.refresh`.
    identity_refresh_reuse_grace_seconds: float = 30.0
    # A retired signing key stays in the JWKS for the access TTL plus this (verifier caches, clock skew).
    identity_key_grace_seconds: int = 300
    # The newest key is replaced by a fresh one when older than this; 0 turns automatic rotation off.
    identity_key_rotation_days: float = 30.0
    # A new key is published this long before it signs anything, so every verifier that meets its kid
    # can already fetch it (the kit's verifiers refetch the JWKS at most every 5 s).
    identity_key_publish_seconds: int = 20
    # How long a replica trusts its in-memory copy of the keys (a rotation elsewhere is seen within this).
    identity_key_cache_seconds: float = 15.0
    # When set, private keys are stored encrypted with it (PKCS#8, best available encryption).
    identity_key_passphrase: str | None = None
    # The algorithm of NEW signing keys (the first key, and each rotation): RS256 (RSA, 2048 bits)
    # or EdDSA (Ed25519). Tokens of either kind verify everywhere; RS256 verifies ~2.5x faster,
    # which the gateway pays on every first request of a person (keys.py).
    identity_signing_algorithm: Literal["RS256", "EdDSA"] = "RS256"

    # A store owner hiring staff for a store identity has not heard of yet (its creation event is in
    # flight) waits up to this long for it instead of getting 403.
    identity_new_store_wait_seconds: float = 3.0

    # --- passwords (argon2id; RFC 9106's second recommended parameter set by default) -----------
    identity_password_min_length: int = 8
    identity_password_max_length: int = 256
    identity_argon2_time_cost: int = 3
    identity_argon2_memory_kib: int = 65536
    identity_argon2_parallelism: int = 4

    # --- sign-in throttling (Redis) ---------------------------------------------------------------
    # Failures of one account from one address: the strict limit.
    identity_signin_pair_threshold: int = 5
    # Failures of one account from anywhere (a distributed guess); addresses the account signed in from
    # before are exempt, so an attacker elsewhere cannot lock the real user out.
    identity_signin_account_threshold: int = 20
    # Failures from one address across accounts (credential stuffing); accounts known at that address
    # are exempt, so people behind a shared address keep signing in.
    identity_signin_address_threshold: int = 30
    identity_signin_base_lock_seconds: int = 30
    identity_signin_max_lock_seconds: int = 900
    # Failures are forgotten this long after the last one: a lockout always decays.
    identity_signin_window_seconds: int = 1800
    identity_known_address_days: int = 90
    # Password-reset mails per account per hour (more requests still answer 202, silently).
    identity_reset_requests_per_hour: int = 5
    # Proxies in front of identity that append to X-Forwarded-For (the gateway: 1). The client address
    # is the entry that many places from the right; 0 trusts no header and uses the peer address.
    identity_trusted_proxy_hops: int = 1
