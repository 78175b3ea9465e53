"""A branch's opening hours: per weekday a list of open/close times, plus exceptions by date.

Canonical form (what is stored and returned):

    {"timezone": "Europe/Berlin" | null,
     "weekly": {"mon": [{"open": "09:00", "close": "18:00"}], ...},   # a missing day is closed
     "exceptions": [{"date": "2026-12-24", "closed": false, "intervals": [...]},
                    {"date": "2026-12-25", "closed": true, "intervals": []}]}

Clients may also send the weekdays at the top level (`{"mon": [...]}`), full day names,
intervals as `["09:00", "18:00"]` or `"09:00-18:00"`, and exceptions as a mapping
`{"2026-12-25": "closed" | [] | [intervals]}`; all are normalized to the form above.
Times are local wall-clock `HH:MM`; `close` may be `24:00`; an interval never crosses
midnight (write a late night as two intervals, one on each day); intervals of one day
must not overlap.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = {"monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu", "friday": "fri",
         "saturday": "sat", "sunday": "sun", "tues": "tue", "thur": "thu", "thurs": "thu"}
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
MAX_INTERVALS_PER_DAY = 12
MAX_EXCEPTIONS = 366


def _day_key(key: Any) -> Any:
    if not isinstance(key, str):
        return key
    k = key.strip().lower()
    return _FULL.get(k, k)


def _minutes(t: str) -> int:
    h, m = t.split(":")
    return int(h) * 60 + int(m)


class Interval(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    open: str
    close: str

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, v: Any) -> Any:
        if isinstance(v, list | tuple) and len(v) == 2:
            return {"open": v[0], "close": v[1]}
        if isinstance(v, str) and "-" in v:
            a, _, b = v.partition("-")
            return {"open": a.strip(), "close": b.strip()}
        if isinstance(v, dict):
            # Common spellings of the same thing.
            v = dict(v)
            for alias, name in (("from", "open"), ("start", "open"), ("opens", "open"),
                                ("to", "close"), ("end", "close"), ("closes", "close")):
                if alias in v and name not in v:
                    v[name] = v.pop(alias)
        return v

    @field_validator("open", "close")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        v = v.strip()
        if len(v) == 4 and v[1] == ":":  # 9:00 -> 09:00
            v = "0" + v
        if not _TIME.match(v):
            raise ValueError("time must be HH:MM (00:00 to 24:00)")
        return v

    @model_validator(mode="after")
    def _order(self) -> Interval:
        if _minutes(self.close) <= _minutes(self.open):
            raise ValueError("close must be after open (write an interval past midnight as two)")
        return self


def _check_day(intervals: list[Interval]) -> list[Interval]:
    ordered = sorted(intervals, key=lambda i: _minutes(i.open))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if _minutes(b.open) < _minutes(a.close):
            raise ValueError(f"intervals {a.open}-{a.close} and {b.open}-{b.close} overlap")
    return ordered


class DayException(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    date: dt.date
    closed: bool = False
    intervals: list[Interval] = Field(default_factory=list, max_length=MAX_INTERVALS_PER_DAY)
    note: str | None = Field(default=None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, v: Any) -> Any:
        if isinstance(v, dict):
            v = dict(v)
            if "hours" in v and "intervals" not in v:
                v["intervals"] = v.pop("hours")
            if not v.get("intervals") and "closed" not in v:
                v["closed"] = True  # a date with no hours is a closed day
        return v

    @field_validator("intervals")
    @classmethod
    def _no_overlap(cls, v: list[Interval]) -> list[Interval]:
        return _check_day(v)

    @model_validator(mode="after")
    def _consistent(self) -> DayException:
        if self.closed and self.intervals:
            raise ValueError("a closed day has no intervals")
        if not self.closed and not self.intervals:
            raise ValueError("an open exception day needs intervals")
        return self


class OpeningHours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str | None = None
    weekly: dict[Weekday, list[Interval]] = Field(default_factory=dict)
    exceptions: list[DayException] = Field(default_factory=list, max_length=MAX_EXCEPTIONS)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        v = dict(v)
        weekly = v.get("weekly")
        weekly = {_day_key(k): d for k, d in weekly.items()} if isinstance(weekly, dict) else weekly
        # Weekdays given at the top level belong to `weekly`.
        for key in list(v):
            day = _day_key(key)
            if isinstance(day, str) and day in WEEKDAYS:
                if not isinstance(weekly, dict):
                    weekly = {}
                weekly[day] = v.pop(key)
        if weekly is not None:
            v["weekly"] = weekly
        exc = v.get("exceptions")
        if isinstance(exc, dict):
            v["exceptions"] = [
                {"date": d, "closed": True} if h in ("closed", None, [])
                else {"date": d, "intervals": h} if isinstance(h, list)
                else {"date": d, **h} if isinstance(h, dict) else {"date": d, "intervals": h}
                for d, h in exc.items()
            ]
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone") from None
        return v

    @field_validator("weekly")
    @classmethod
    def _days(cls, v: dict[str, list[Interval]]) -> dict[str, list[Interval]]:
        out = {}
        for day in WEEKDAYS:  # stable order, for stable JSON (and ETags)
            if day in v:
                if len(v[day]) > MAX_INTERVALS_PER_DAY:
                    raise ValueError(f"{day}: at most {MAX_INTERVALS_PER_DAY} intervals")
                try:
                    out[day] = _check_day(v[day])
                except ValueError as exc:
                    raise ValueError(f"{day}: {exc}") from None
        return out

    @field_validator("exceptions")
    @classmethod
    def _unique_dates(cls, v: list[DayException]) -> list[DayException]:
        seen: set[dt.date] = set()
        for e in v:
            if e.date in seen:
                raise ValueError(f"{e.date.isoformat()} is listed twice")
            seen.add(e.date)
        return sorted(v, key=lambda e: e.date)

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def intervals_on(self, day: dt.date) -> list[Interval]:
        """The hours that apply on a date (an exception wins over the weekly pattern)."""
        for e in self.exceptions:
            if e.date == day:
                return list(e.intervals)
        weekday: Any = WEEKDAYS[day.weekday()]
        return list(self.weekly.get(weekday) or [])
