"""The monthly partition calendar: names, bounds, what to create ahead, what retention drops.

Months are UTC calendar months. A partition `audit_logs_y2026m11` holds rows with
`created_at` in [2026-11-01, 2026-12-01). Retention of N months keeps the current month and
the N whole months before it; every partition ending on or before that is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

PARENT = "audit_logs"
_NAME_RE = re.compile(rf"^{PARENT}_y(\d{{4}})m(\d{{2}})$")


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, when: datetime) -> Month:
        when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        return cls(when.year, when.month)

    def plus(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.plus(1).start

    @property
    def partition(self) -> str:
        return f"{PARENT}_y{self.year:04d}m{self.month:02d}"

    @classmethod
    def from_partition(cls, name: str) -> Month | None:
        m = _NAME_RE.match(name)
        if not m:
            return None
        year, month = int(m.group(1)), int(m.group(2))
        return cls(year, month) if 1 <= month <= 12 else None


def months_to_create(now: datetime, ahead: int) -> list[Month]:
    """The current month and `ahead` months after it."""
    current = Month.of(now)
    return [current.plus(i) for i in range(max(ahead, 0) + 1)]


def partitions_to_drop(existing: list[str], now: datetime, retention_months: int) -> list[str]:
    """Partitions entirely older than the retention window, oldest first (0 = keep forever)."""
    if retention_months <= 0:
        return []
    oldest_kept = Month.of(now).plus(-retention_months)
    old = [(m, name) for name in existing if (m := Month.from_partition(name)) is not None and m < oldest_kept]
    return [name for _, name in sorted(old)]
