"""Capacity arithmetic of a slot: `capacity_reserved + capacity_waitlist <= capacity_total`.

`capacity_waitlist` counts seats held for open waitlist offers, so a freed seat offered to
the next in line is not sold to the public meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capacity:
    total: int
    reserved: int
    waitlist: int

    @property
    def taken(self) -> int:
        return self.reserved + self.waitlist

    @property
    def available(self) -> int:
        return max(0, self.total - self.taken)

    @property
    def sold_out(self) -> bool:
        return self.available == 0

    def grant(self, wanted: int) -> int:
        """Seats one transaction may take for `wanted` requests."""
        return max(0, min(wanted, self.available))

    def can_resize(self, new_total: int) -> bool:
        """Capacity may grow, and shrink only down to what is taken."""
        return new_total >= self.taken and new_total >= 0

    def offers_possible(self, waiting: int) -> int:
        """Seats to offer to the waitlist now: freed seats go to people in line first."""
        return max(0, min(waiting, self.available))

    def release(self, *, reserved: int = 0, waitlist: int = 0) -> Capacity:
        if reserved > self.reserved or waitlist > self.waitlist:
            raise ValueError("cannot release more seats than are taken")
        return Capacity(self.total, self.reserved - reserved, self.waitlist - waitlist)
