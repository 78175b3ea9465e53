"""Request dependencies: the booking runtime and the caller.

`Caller` is the kit's bearer-token check; the kit's verifier remembers verified tokens until
they expire, so a storm pays the EdDSA verification once per token per replica, not per request.
"""

from __future__ import annotations

from typing import Annotated

from dropslot_kit.auth import CurrentUser
from fastapi import Depends, Request

from ..service.runtime import Booking


def booking(request: Request) -> Booking:
    bk: Booking = request.app.state.rt.extras["booking"]
    return bk


Caller = CurrentUser
BookingDep = Annotated[Booking, Depends(booking)]


def limit_param(limit: int | None) -> int:
    return max(1, min(limit or 50, 200))


