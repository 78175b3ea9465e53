"""Password hashing with argon2id, off the event loop (a hash costs tens of milliseconds)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..config import Settings


class Passwords:
    def __init__(self, settings: Settings):
        self.hasher = PasswordHasher(
            time_cost=settings.identity_argon2_time_cost,
            memory_cost=settings.identity_argon2_memory_kib,
            parallelism=settings.identity_argon2_parallelism,
            type=Type.ID,
        )
        # Verifying against this when the account does not exist keeps "unknown email" as slow
        # as "wrong password", so timing does not tell which addresses have accounts.
        self._dummy = self.hasher.hash("dropslot: no such account")
        # At most as many hashes at once as we have cores to spare; the rest queue instead of
        # all fighting for CPU (and each taking its 64 MiB) at the same time.
        self._slots = asyncio.Semaphore(2)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        async with self._slots:
            matched = await asyncio.to_thread(self._verify, stored_hash or self._dummy, password)
        return matched and stored_hash is not None

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return False
