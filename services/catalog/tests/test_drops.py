"""Drops through the API: creation, validation, lifecycle (on time), changes refused after
publishing, and the events that carry them (read from the real broker)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dropslot_kit.testing import eventually

from .conftest import iso
from .test_stores import invalid, problem

RULE_DEFAULTS = {"max_per_user": 1, "hold_minutes": 10, "waitlist_enabled": True, "waitlist_offer_minutes": 15,
                 "cancel_until_minutes_before": 60, "refund_on_cancel": True, "require_verified_email": False}


def now() -> datetime:
    return datetime.now(UTC)


async def test_a_new_drop_is_a_draft_with_the_full_rule(api):
    owner, store, branch, product = await api.shop()
    drop = await api.drop(owner, store, product, reservation_rule={"max_per_user": 2})
    assert drop["status"] == "DRAFT" and drop["opens_at"] is None
    assert drop["reservation_rule"] == {**RULE_DEFAULTS, "max_per_user": 2, "opens_at": None}
    assert drop["product"]["id"] == product["id"] and drop["product"]["name"] == "Sneaker"
    assert drop["store"] == {"id": store["id"], "name": store["name"], "slug": store["slug"], "logo_url": None}
    assert [b["id"] for b in drop["branches"]] == [branch["id"]]
    assert (drop["price_cents"], drop["currency"], drop["requires_payment"]) == (12900, "EUR", True)


@pytest.mark.parametrize("patch, field", [
    ({"ends_at": "2020-01-01T00:00:00Z"}, "ends_at"),
    ({"starts_at": "yesterday"}, "starts_at"),
    ({"name": ""}, "name"),
    ({"product_id": "not-a-uuid"}, "product_id"),
    ({"product_id": str(uuid.uuid4())}, "product_id"),
    ({"reservation_rule": {"max_per_user": 0}}, "reservation_rule.max_per_user"),
    ({"reservation_rule": {"hold_minutes": -3}}, "reservation_rule.hold_minutes"),
    ({"reservation_rule": {"refund_on_cancel": "maybe"}}, "reservation_rule.refund_on_cancel"),
    ({"reservation_rule": {"max_per_users": 2}}, "reservation_rule.max_per_users"),
    ({"reservation_rule": {"opens_at": "2099-01-01T00:00:00Z"}}, "reservation_rule"),
])
async def test_drop_validation(api, patch, field):
    owner, store, _, product = await api.shop()
    body = {"product_id": product["id"], "name": "D", "starts_at": iso(now() + timedelta(hours=1)),
            "ends_at": iso(now() + timedelta(hours=2)), **patch}
    invalid(await api.http.post(f"/stores/{store['id']}/drops", json=body, headers=owner["headers"]), field)


async def test_a_drop_needs_a_product_of_its_own_store(api):
    owner, store, _, _ = await api.shop()
    other_owner, _, _, foreign = await api.shop()
    body = {"product_id": foreign["id"], "name": "D", "starts_at": iso(now() + timedelta(hours=1)),
            "ends_at": iso(now() + timedelta(hours=2))}
    invalid(await api.http.post(f"/stores/{store['id']}/drops", json=body, headers=owner["headers"]), "product_id")


async def test_a_draft_is_never_public(api):
    owner, store, _, product = await api.shop()
    drop = await api.drop(owner, store, product)
    problem(await api.http.get(f"/drops/{drop['id']}"), 404, "not-found")
    stranger = await api.user()
    problem(await api.http.get(f"/drops/{drop['id']}", headers=stranger["headers"]), 404, "not-found")
    r = await api.http.get("/drops", params={"store": store["id"], "status": "live,upcoming"})
    assert r.status_code == 200 and r.json()["items"] == []
    # Its own store sees it.
    r = await api.http.get(f"/drops/{drop['id']}", headers=owner["headers"])
    assert r.status_code == 200 and r.json()["status"] == "DRAFT"
    assert r.headers["cache-control"] == "private, no-store"
    r = await api.http.get(f"/stores/{store['id']}/drops", headers=owner["headers"])
    assert [d["id"] for d in r.json()["items"]] == [drop["id"]]


async def test_publish_without_opens_at_is_live_at_once_then_cancel(api, events):
    owner, store, _, product = await api.shop()
    drop = await api.drop(owner, store, product)
    published = await api.publish(owner, drop)
    assert published["status"] == "LIVE" and published["opens_at"] is not None
    assert published["reservation_rule"]["opens_at"] == published["opens_at"]
    problem(await api.http.post(f"/drops/{drop['id']}/publish", headers=owner["headers"]), 409, "invalid-transition")
    r = await api.http.get(f"/drops/{drop['id']}")
    assert r.status_code == 200 and r.json()["status"] == "LIVE"

    r = await api.http.post(f"/drops/{drop['id']}/cancel", json={"reason": "supplier let us down"},
                            headers=owner["headers"])
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    problem(await api.http.post(f"/drops/{drop['id']}/cancel", headers=owner["headers"]), 409, "invalid-transition")
    problem(await api.http.post(f"/drops/{drop['id']}/publish", headers=owner["headers"]), 409, "invalid-transition")
    r = await api.http.get("/drops", params={"store": store["id"]})
    assert r.json()["items"] == []  # neither live nor upcoming any more

    # The events, as booking/notifications/webhooks receive them.
    async def seen() -> bool:
        return all(events.of(t, drop__drop_id=drop["id"]) for t in
                   ("catalog.drop.created", "catalog.drop.published", "catalog.drop.live", "catalog.drop.cancelled"))

    await eventually(seen, timeout=20, what="drop events on the broker")
    pub = events.of("catalog.drop.published", drop__drop_id=drop["id"])[0]
    assert str(pub.store_id) == store["id"] and pub.tenant_key and pub.producer == "catalog"
    snap = pub.data["drop"]
    assert snap["status"] == "LIVE" and snap["tenant_key"] == pub.tenant_key
    # The full rule, defaults applied, opens_at filled in with the publish time.
    assert snap["reservation_rule"] == {**RULE_DEFAULTS, "opens_at": snap["opens_at"]}
    assert (snap["price_cents"], snap["currency"], snap["store_name"], snap["product_name"]) == (
        12900, "EUR", store["name"], "Sneaker")
    assert len(snap["branches"]) == 1 and snap["branches"][0]["lat"] == 52.52
    assert pub.before["status"] == "DRAFT" and pub.after["status"] == "LIVE"
    assert str(pub.actor.user_id) == owner["id"]
    cancelled = events.of("catalog.drop.cancelled", drop__drop_id=drop["id"])[0]
    assert cancelled.data["reason"] == "supplier let us down" and cancelled.before["status"] == "LIVE"


async def test_store_created_event_names_the_owner(api, events):
    owner = await api.user()
    store = await api.store(owner)

    async def seen():
        return events.of("catalog.store.created", store_id=store["id"])

    [env] = await eventually(seen, timeout=20, what="catalog.store.created")
    assert env.data["owner_user_id"] == owner["id"] and env.data["tenant_key"] == env.tenant_key
    assert str(env.store_id) == store["id"]


async def test_lifecycle_moves_on_time(api, events):
    owner, store, _, product = await api.shop()
    t0 = now()
    drop = await api.drop(owner, store, product, starts_at=iso(t0 + timedelta(seconds=3)),
                          ends_at=iso(t0 + timedelta(seconds=6)),
                          reservation_rule={"opens_at": iso(t0 + timedelta(seconds=2))})
    published = await api.publish(owner, drop)
    assert published["status"] == "SCHEDULED"
    r = await api.http.get("/drops", params={"store": store["slug"], "status": "upcoming"})
    assert [d["id"] for d in r.json()["items"]] == [drop["id"]]

    async def status_is(expected: str):
        r = await api.http.get(f"/drops/{drop['id']}")
        return r.json()["status"] == expected

    await eventually(lambda: status_is("LIVE"), timeout=20, what="LIVE at opens_at")
    assert now() >= t0 + timedelta(seconds=2)
    r = await api.http.get("/drops", params={"store": store["slug"], "status": "live"})
    assert [d["id"] for d in r.json()["items"]] == [drop["id"]]
    await eventually(lambda: status_is("ENDED"), timeout=20, what="ENDED at ends_at")
    assert now() >= t0 + timedelta(seconds=6)

    async def one_each():
        live = events.of("catalog.drop.live", drop__drop_id=drop["id"])
        ended = events.of("catalog.drop.ended", drop__drop_id=drop["id"])
        return live and ended and (live, ended)

    live, ended = await eventually(one_each, timeout=20, what="live and ended events")
    assert len(live) == 1 and len(ended) == 1  # one move each, whatever the number of schedulers
    assert live[0].data["drop"]["status"] == "LIVE" and ended[0].data["drop"]["status"] == "ENDED"
    assert live[0].actor.user_id is None  # the clock did it
    problem(await api.http.post(f"/drops/{drop['id']}/cancel", headers=owner["headers"]), 409, "invalid-transition")
    problem(await api.http.patch(f"/drops/{drop['id']}", json={"name": "again"}, headers=owner["headers"]),
            409, "drop-not-editable")


async def test_what_may_change_after_publishing(api, events):
    owner, store, _, product = await api.shop()
    t0 = now()
    drop = await api.drop(owner, store, product, starts_at=iso(t0 + timedelta(hours=1)),
                          ends_at=iso(t0 + timedelta(hours=3)))
    # A draft may change anything.
    r = await api.http.patch(f"/drops/{drop['id']}", json={
        "starts_at": iso(t0 + timedelta(hours=2)), "reservation_rule": {"refund_on_cancel": False}},
        headers=owner["headers"])
    assert r.status_code == 200, r.text
    assert r.json()["reservation_rule"]["refund_on_cancel"] is False and r.json()["reservation_rule"]["max_per_user"] == 1
    r = await api.http.patch(f"/drops/{drop['id']}", json={"reservation_rule": {"refund_on_cancel": True}},
                             headers=owner["headers"])
    await api.publish(owner, drop)  # LIVE now

    url = f"/stores/{store['id']}/drops/{drop['id']}"
    for patch, field in [
        ({"ends_at": iso(t0 + timedelta(hours=2, minutes=30))}, "ends_at"),
        ({"starts_at": iso(t0 + timedelta(hours=2, minutes=30))}, "starts_at"),
        ({"reservation_rule": {"refund_on_cancel": False}}, "reservation_rule.refund_on_cancel"),
        ({"reservation_rule": {"waitlist_enabled": False}}, "reservation_rule.waitlist_enabled"),
        ({"reservation_rule": {"cancel_until_minutes_before": 240}}, "reservation_rule.cancel_until_minutes_before"),
        ({"product_id": (await api.product(owner, store))["id"]}, "product_id"),
    ]:
        body = problem(await api.http.patch(url, json=patch, headers=owner["headers"]), 409, "drop-not-editable")
        assert [x["name"] for x in body["refused"]] == [field], body
    # The product's price is fixed while its drop is live.
    body = problem(await api.http.patch(f"/products/{product['id']}", json={"price_cents": 1},
                                        headers=owner["headers"]), 409, "drop-not-editable")
    assert body["refused"][0]["name"] == "price_cents"

    # Changes that hurt nobody are accepted, and announced.
    r = await api.http.patch(url, json={"name": "Launch (extended)", "ends_at": iso(t0 + timedelta(hours=4)),
                                        "reservation_rule": {"max_per_user": 3, "cancel_until_minutes_before": 30}},
                             headers=owner["headers"])
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["name"] == "Launch (extended)" and d["reservation_rule"]["max_per_user"] == 3
    assert datetime.fromisoformat(d["ends_at"].replace("Z", "+00:00")) == t0 + timedelta(hours=4)
    r = await api.http.patch(f"/products/{product['id']}", json={"name": "Sneaker Pro", "description": "new"},
                             headers=owner["headers"])
    assert r.status_code == 200

    async def updates():
        got = events.of("catalog.drop.updated", drop__drop_id=drop["id"])
        return any(e.data["changed"] == ["product"] for e in got) and got

    got = await eventually(updates, timeout=20, what="drop.updated events")
    changed = [sorted(e.data["changed"]) for e in got]
    assert ["ends_at", "name", "reservation_rule"] in changed and ["product"] in changed
    product_update = next(e for e in got if e.data["changed"] == ["product"])
    assert product_update.data["drop"]["product_name"] == "Sneaker Pro"
    assert product_update.before["product"]["name"] == "Sneaker"


async def test_a_scheduled_drops_price_may_change_and_booking_hears_it(api, events):
    owner, store, _, product = await api.shop()
    drop = await api.drop(owner, store, product, reservation_rule={"opens_at": iso(now() + timedelta(minutes=30))})
    assert (await api.publish(owner, drop))["status"] == "SCHEDULED"
    r = await api.http.patch(f"/stores/{store['id']}/products/{product['id']}", json={"price_cents": 9900},
                             headers=owner["headers"])
    assert r.status_code == 200, r.text

    async def repriced():
        return [e for e in events.of("catalog.drop.updated", drop__drop_id=drop["id"])
                if e.data["drop"]["price_cents"] == 9900]

    [env] = await eventually(repriced, timeout=20, what="drop.updated with the new price")
    assert env.data["drop"]["status"] == "SCHEDULED" and env.data["drop"]["currency"] == "EUR"
    assert (await api.http.get(f"/drops/{drop['id']}")).json()["price_cents"] == 9900
    # Moving opens_at of a SCHEDULED drop is fine (nobody holds a reservation yet).
    later = iso(now() + timedelta(minutes=45))
    r = await api.http.patch(f"/drops/{drop['id']}", json={"reservation_rule": {"opens_at": later}},
                             headers=owner["headers"])
    assert r.status_code == 200 and r.json()["status"] == "SCHEDULED", r.text
    assert r.json()["opens_at"][:19] == later[:19]


async def test_an_inactive_products_drop_cannot_be_published(api):
    owner, store, _, _ = await api.shop()
    product = await api.product(owner, store, is_active=False)
    drop = await api.drop(owner, store, product)
    problem(await api.http.post(f"/drops/{drop['id']}/publish", headers=owner["headers"]), 409, "product-inactive")


async def test_a_free_drop_needs_no_payment(api):
    owner, store, _, _ = await api.shop()
    product = await api.product(owner, store, price_cents=0)
    drop = await api.publish(owner, await api.drop(owner, store, product))
    assert drop["requires_payment"] is False and drop["price_cents"] == 0
