"""Which identity/catalog events the memberships consumer spends a transaction on."""

from __future__ import annotations

import uuid

from dropslot_contracts import Envelope
from dropslot_kit.broker import EventConsumers
from dropslot_kit.memberships import consume_memberships


def _env(event_type: str, **data: object) -> Envelope:
    return Envelope(type=event_type, producer="identity", data={k: str(v) for k, v in data.items()})


def test_only_stores_and_store_roles_reach_the_handler() -> None:
    consumers = EventConsumers("booking")
    consume_memberships(consumers)
    [consumer] = consumers.consumers
    assert consumer.wants is not None
    store, user = uuid.uuid4(), uuid.uuid4()
    wanted = [
        _env("catalog.store.created", store_id=store, owner_user_id=user),
        _env("identity.role.granted", store_id=store, user_id=user, code="store_staff"),
        _env("identity.role.revoked", store_id=store, user_id=user, code="store_owner"),
    ]
    ignored = [
        _env("identity.role.granted", user_id=user, code="customer"),  # every sign-up
        _env("identity.role.granted", user_id=user, code="platform_admin"),
        _env("identity.role.granted", user_id=user, code="store_staff"),  # no store: nothing to keep
    ]
    assert [consumer.wants(e.type, e.data) for e in wanted] == [True] * 3
    assert [consumer.wants(e.type, e.data) for e in ignored] == [False] * 3
