"""Roles and who may grant them.

- `customer`: every account, given at sign-up.
- `store_owner`, `store_staff`: scoped to a store. The creator of a store becomes its owner
  when identity hears `catalog.store.created`.
- `platform_admin`: everything; created from the command line.

A platform admin may grant and revoke any role. A store owner may grant and revoke
`store_staff` for a store they own, and nothing else. Nobody else grants anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

CUSTOMER, STORE_STAFF, STORE_OWNER, PLATFORM_ADMIN = "customer", "store_staff", "store_owner", "platform_admin"
ROLE_NAMES = {
    CUSTOMER: "Customer",
    STORE_STAFF: "Store staff",
    STORE_OWNER: "Store owner",
    PLATFORM_ADMIN: "Platform admin",
}
STORE_SCOPED = frozenset({STORE_STAFF, STORE_OWNER})

Role = tuple[str, uuid.UUID | None]


def scope_problem(code: str, store_id: uuid.UUID | None) -> tuple[str, str] | None:
    """(field, reason) when the pair is not a valid role assignment."""
    if code not in ROLE_NAMES:
        return "code", f"unknown role; one of {', '.join(ROLE_NAMES)}"
    if code in STORE_SCOPED and store_id is None:
        return "store_id", f"{code} is scoped to a store: store_id is required"
    if code not in STORE_SCOPED and store_id is not None:
        return "store_id", f"{code} is not scoped to a store: leave store_id out"
    return None


def may_manage(actor_roles: Iterable[Role], code: str, store_id: uuid.UUID | None) -> bool:
    """May someone holding `actor_roles` grant or revoke (code, store_id)?"""
    roles = set(actor_roles)
    if any(c == PLATFORM_ADMIN for c, _ in roles):
        return True
    return code == STORE_STAFF and store_id is not None and (STORE_OWNER, store_id) in roles
