"""Sign-in throttling arithmetic: exponential-ish lockouts that always decay.

A counter counts failures; once it reaches the threshold each further failure locks the
key for `base * 2^(failures - threshold)` seconds, capped. Requests during a lock are
refused without a password check and without counting, so the lock grows only with
guesses actually tried. The counter is forgotten a window after the last failure, so no
lockout is permanent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LockRule:
    threshold: int
    base_seconds: int
    max_seconds: int

    def lock_seconds(self, failures: int) -> int:
        """How long to lock after the `failures`-th failure in the window (0: no lock)."""
        if failures < self.threshold:
            return 0
        exponent = min(failures - self.threshold, 30)
        return int(min(self.max_seconds, self.base_seconds * (2**exponent)))
