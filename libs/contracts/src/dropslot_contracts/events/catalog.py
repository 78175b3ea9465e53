from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from ..envelope import Event
from ..registry import register


class BranchSnapshot(BaseModel):
    id: uuid.UUID
    name: str
    address: str
    lat: float
    lng: float
    phone: str | None = None
    opening_hours: dict[str, Any] | None = None


class DropSnapshot(BaseModel):
    """All booking, notifications and webhooks need about a drop, so none calls catalog."""

    drop_id: uuid.UUID
    store_id: uuid.UUID
    tenant_key: str
    store_name: str | None = None
    product_id: uuid.UUID
    product_name: str | None = None
    name: str
    status: str
    starts_at: datetime
    ends_at: datetime
    opens_at: datetime | None = None
    reservation_rule: dict[str, Any]
    price_cents: int
    currency: str
    branches: list[BranchSnapshot] = []
    # Added (optional): the store's slug, when the drop was published, and whether a
    # reservation must be paid (the product's price is above zero).
    store_slug: str | None = None
    published_at: datetime | None = None
    requires_payment: bool | None = None


@register
class StoreCreated(Event):
    TYPE = "catalog.store.created"
    store_id: uuid.UUID
    tenant_key: str
    name: str
    slug: str
    owner_user_id: uuid.UUID
    logo_url: str | None = None


@register
class StoreUpdated(Event):
    TYPE = "catalog.store.updated"
    store_id: uuid.UUID
    tenant_key: str
    name: str
    slug: str
    logo_url: str | None = None


@register
class BranchCreated(Event):
    TYPE = "catalog.branch.created"
    store_id: uuid.UUID
    branch: BranchSnapshot


@register
class BranchUpdated(Event):
    TYPE = "catalog.branch.updated"
    store_id: uuid.UUID
    branch: BranchSnapshot


@register
class BranchDeleted(Event):
    TYPE = "catalog.branch.deleted"
    store_id: uuid.UUID
    branch_id: uuid.UUID


class ProductFields(Event):
    product_id: uuid.UUID
    store_id: uuid.UUID
    name: str
    sku: str
    price_cents: int
    currency: str
    is_active: bool
    description: str | None = None
    images: list[str] = []


@register
class ProductCreated(ProductFields):
    TYPE = "catalog.product.created"


@register
class ProductUpdated(ProductFields):
    TYPE = "catalog.product.updated"


class DropEvent(Event):
    drop: DropSnapshot


@register
class DropCreated(DropEvent):
    TYPE = "catalog.drop.created"


@register
class DropUpdated(DropEvent):
    TYPE = "catalog.drop.updated"
    # Which drop fields changed ("name", "starts_at", "ends_at", "reservation_rule",
    # "product" for a change of the product's name/price/currency, ...).
    changed: list[str] = []


@register
class DropPublished(DropEvent):
    TYPE = "catalog.drop.published"


@register
class DropLive(DropEvent):
    TYPE = "catalog.drop.live"


@register
class DropEnded(DropEvent):
    TYPE = "catalog.drop.ended"


@register
class DropCancelled(DropEvent):
    TYPE = "catalog.drop.cancelled"
    reason: str | None = None
