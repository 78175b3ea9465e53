"""Request bodies, validated at the edge: a body that fails here changes nothing (422 with
the offending field). Unknown keys are ignored (bodies may gain fields), except inside
`reservation_rule`, where a misspelled setting must not pass silently."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from dropslot_contracts import StrictReservationRule
from dropslot_contracts.rules import as_utc
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)

from ..domain.currency import normalize_currency
from ..domain.hours import OpeningHours

_URL = TypeAdapter(HttpUrl)
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
PHONE_RE = re.compile(r"^\+?[0-9 ()./-]{3,32}$")
SKU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


def _url(v: str) -> str:
    """An http(s) URL, kept exactly as given (pydantic's HttpUrl would rewrite it)."""
    v = v.strip()
    _URL.validate_python(v)
    if len(v) > 2048:
        raise ValueError("URL is too long")
    return v


def _slug(v: str) -> str:
    v = v.strip().lower()
    if not SLUG_RE.match(v):
        raise ValueError("slug must be 3-63 characters: lowercase letters, digits and '-', "
                         "starting and ending with a letter or digit")
    return v


def _text(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("must not be blank")
    return v


def _phone(v: str) -> str:
    v = v.strip()
    if not PHONE_RE.match(v) or sum(c.isdigit() for c in v) < 3:
        raise ValueError("phone must be digits, optionally with +, spaces, dashes, dots or parentheses")
    return v


def _sku(v: str) -> str:
    v = v.strip()
    if not SKU_RE.match(v):
        raise ValueError("sku must be 1-64 characters: letters, digits and . _ / -, starting with a letter or digit")
    return v


def _whole(v: Any) -> Any:
    # 9.99 is a price in major units by mistake; minor units are whole numbers.
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError("price_cents must be a whole number of minor units")
    return v


Url = Annotated[str, AfterValidator(_url)]
Slug = Annotated[str, AfterValidator(_slug)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_text)]
Phone = Annotated[str, AfterValidator(_phone)]
Sku = Annotated[str, AfterValidator(_sku)]
Currency = Annotated[str, AfterValidator(normalize_currency)]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
UtcTime = Annotated[datetime, AfterValidator(as_utc)]
PriceCents = Annotated[int, BeforeValidator(_whole), Field(ge=0, le=10_000_000_000)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def given(self) -> dict[str, Any]:
        """The fields the client sent (PATCH semantics), as plain values."""
        return {k: getattr(self, k) for k in self.model_fields_set}


class StoreCreate(Body):
    name: Name
    slug: Slug
    logo_url: Url | None = None


class StoreUpdate(Body):
    name: Name | None = None
    slug: Slug | None = None
    logo_url: Url | None = None

    @field_validator("name", "slug")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("cannot be null")
        return v


class BranchCreate(Body):
    name: Name
    address: Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_text)]
    lat: Latitude
    lng: Longitude
    phone: Phone | None = None
    opening_hours: OpeningHours = Field(default_factory=OpeningHours)


class BranchUpdate(Body):
    name: Name | None = None
    address: Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_text)] | None = None
    lat: Latitude | None = None
    lng: Longitude | None = None
    phone: Phone | None = None
    opening_hours: OpeningHours | None = None

    @field_validator("name", "address", "lat", "lng", "opening_hours")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("cannot be null")
        return v


ImageList = Annotated[list[Url], Field(max_length=20)]


class ProductCreate(Body):
    name: Name
    sku: Sku
    description: Annotated[str, Field(max_length=10_000)] | None = None
    images: ImageList = Field(default_factory=list)
    price_cents: PriceCents
    currency: Currency
    is_active: bool = True


class ProductUpdate(Body):
    name: Name | None = None
    sku: Sku | None = None
    description: Annotated[str, Field(max_length=10_000)] | None = None
    images: ImageList | None = None
    price_cents: PriceCents | None = None
    currency: Currency | None = None
    is_active: bool | None = None

    @field_validator("name", "sku", "images", "price_cents", "currency", "is_active")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("cannot be null")
        return v


class DropCreate(Body):
    product_id: uuid.UUID
    name: Name
    starts_at: UtcTime
    ends_at: UtcTime
    reservation_rule: StrictReservationRule = Field(default_factory=StrictReservationRule)

    @field_validator("ends_at")
    @classmethod
    def _after_start(cls, v: datetime, info: ValidationInfo) -> datetime:
        starts = info.data.get("starts_at")
        if starts is not None and v <= starts:
            raise ValueError("ends_at must be after starts_at")
        return v

    @field_validator("reservation_rule", mode="before")
    @classmethod
    def _null_is_default(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("reservation_rule")
    @classmethod
    def _opens_before_end(cls, v: StrictReservationRule, info: ValidationInfo) -> StrictReservationRule:
        ends = info.data.get("ends_at")
        if ends is not None and v.opens_at is not None and v.opens_at >= ends:
            raise ValueError("reservation_rule.opens_at must be before ends_at")
        return v


class DropUpdate(Body):
    """Fields to change. `reservation_rule` is merged into the current rule: keys not
    given keep their value (its `model_fields_set` says which were given)."""

    product_id: uuid.UUID | None = None
    name: Name | None = None
    starts_at: UtcTime | None = None
    ends_at: UtcTime | None = None
    reservation_rule: StrictReservationRule | None = None

    @field_validator("product_id", "name", "starts_at", "ends_at", "reservation_rule")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("cannot be null")
        return v


class CancelBody(Body):
    reason: Annotated[str, Field(max_length=500)] | None = None
