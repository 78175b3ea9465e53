"""Public browsing: filters, pagination, and the cache (Redis + ETag) that a change
invalidates at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as redis

from .conftest import iso
from .test_stores import invalid

BERLIN = (52.52, 13.405)
POTSDAM = (52.39, 13.065)  # ~27 km from Berlin
MUNICH = (48.137, 11.575)  # ~500 km


async def _city_shop(api, where, *, opens_in: timedelta | None = None, start_in: timedelta = timedelta(hours=1)):
    owner = await api.user()
    store = await api.store(owner)
    await api.branch(owner, store, lat=where[0], lng=where[1])
    product = await api.product(owner, store)
    t = datetime.now(UTC)
    rule = {"opens_at": iso(t + opens_in)} if opens_in else {}
    drop = await api.drop(owner, store, product, starts_at=iso(t + start_in), ends_at=iso(t + start_in + timedelta(hours=2)),
                          reservation_rule=rule)
    return owner, store, await api.publish(owner, drop)


async def _all_ids(api, **params) -> list[str]:
    ids, cursor = [], None
    for _ in range(200):
        r = await api.http.get("/drops", params={"limit": 100, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        ids += [d["id"] for d in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("too many pages")


async def test_filters_by_status_store_distance_and_time(api):
    _, berlin_store, berlin_live = await _city_shop(api, BERLIN)
    _, _, potsdam_soon = await _city_shop(api, POTSDAM, opens_in=timedelta(hours=1), start_in=timedelta(days=3))
    _, _, munich_live = await _city_shop(api, MUNICH)
    assert berlin_live["status"] == munich_live["status"] == "LIVE" and potsdam_soon["status"] == "SCHEDULED"

    near_berlin = {"near": f"{BERLIN[0]},{BERLIN[1]}", "radius_km": 10}
    ids = await _all_ids(api, **near_berlin)
    assert berlin_live["id"] in ids and munich_live["id"] not in ids and potsdam_soon["id"] not in ids
    ids = await _all_ids(api, near=f"{BERLIN[0]},{BERLIN[1]}", radius_km=40)
    assert berlin_live["id"] in ids and potsdam_soon["id"] in ids and munich_live["id"] not in ids
    r = await api.http.get("/drops", params={**near_berlin, "store": berlin_store["id"]})
    [item] = r.json()["items"]
    assert item["distance_km"] < 1 and item["store"]["slug"] == berlin_store["slug"]
    assert item["branches"][0]["lat"] == BERLIN[0] and item["product"]["name"] == "Sneaker"

    live = await _all_ids(api, status="live", near="50.5,12.5", radius_km=600)
    upcoming = await _all_ids(api, status="upcoming", near="50.5,12.5", radius_km=600)
    assert {berlin_live["id"], munich_live["id"]} <= set(live) and potsdam_soon["id"] not in live
    assert potsdam_soon["id"] in upcoming and berlin_live["id"] not in upcoming

    t = datetime.now(UTC)
    window = {"from": iso(t + timedelta(days=2)), "to": iso(t + timedelta(days=4)), "near": "50.5,12.5",
              "radius_km": 600}
    assert potsdam_soon["id"] in await _all_ids(api, **window)
    assert berlin_live["id"] not in await _all_ids(api, **window)
    assert [d for d in await _all_ids(api, store=berlin_store["slug"])] == [berlin_live["id"]]
    assert await _all_ids(api, store="no-such-store-slug") == []


async def test_pagination_walks_every_drop_once(api):
    owner, store, _, product = await api.shop()
    t = datetime.now(UTC)
    made = []
    for i in range(5):
        drop = await api.drop(owner, store, product, starts_at=iso(t + timedelta(hours=1 + i)),
                              ends_at=iso(t + timedelta(hours=10)))
        made.append((await api.publish(owner, drop))["id"])
    pages, cursor = [], None
    while True:
        r = await api.http.get("/drops", params={"store": store["id"], "limit": 2, **({"cursor": cursor} if cursor else {})})
        pages.append([d["id"] for d in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == [made[0:2], made[2:4], made[4:5]]  # in starts_at order


@pytest.mark.parametrize("params, field", [
    ({"status": "draft"}, "status"),
    ({"status": "live,bogus"}, "status"),
    ({"near": "52.5"}, "near"),
    ({"near": "95,13"}, "near"),
    ({"near": "52,13", "radius_km": "0"}, "radius_km"),
    ({"from": "not-a-time"}, "from"),
    ({"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"}, "to"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1000"}, "limit"),
    ({"cursor": "%%%"}, "cursor"),
])
async def test_public_query_validation(api, params, field):
    invalid(await api.http.get("/drops", params=params), field)


async def test_a_change_is_visible_on_the_next_read_and_etags_revalidate(api, catalog_settings):
    owner, store, _, product = await api.shop()
    drop = await api.publish(owner, await api.drop(owner, store, product))
    url, list_params = f"/drops/{drop['id']}", {"store": store["id"]}

    r1 = await api.http.get(url)
    etag = r1.headers["etag"]
    assert r1.status_code == 200 and r1.headers["cache-control"].startswith("public")
    r = await api.http.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag and r.content == b""
    lst = await api.http.get("/drops", params=list_params)
    assert lst.json()["items"][0]["product"]["name"] == "Sneaker"
    list_etag = lst.headers["etag"]

    # The answer is in Redis (this system's namespace), so the next read need not ask the database.
    client = redis.from_url(catalog_settings.redis_url)
    keys = [k async for k in client.scan_iter(f"{catalog_settings.broker_namespace}:catalog:public:*")]
    await client.aclose()
    assert any(b":drop:" in k for k in keys) and any(b":drops:" in k for k in keys)

    # A change of the product: the very next public read shows it, with a new ETag.
    r = await api.http.patch(f"/products/{product['id']}", json={"name": "Sneaker Gold"}, headers=owner["headers"])
    assert r.status_code == 200
    r2 = await api.http.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 200 and r2.json()["product"]["name"] == "Sneaker Gold" and r2.headers["etag"] != etag
    lst = await api.http.get("/drops", params=list_params, headers={"If-None-Match": list_etag})
    assert lst.status_code == 200 and lst.json()["items"][0]["product"]["name"] == "Sneaker Gold"

    # A branch change, and a cancellation, too.
    branch = await api.branch(owner, store, name=f"Second {uuid.uuid4().hex[:4]}", lat=52.0, lng=13.0)
    assert branch["id"] in [b["id"] for b in (await api.http.get(url)).json()["branches"]]
    await api.http.post(f"/drops/{drop['id']}/cancel", headers=owner["headers"])
    assert (await api.http.get(url)).json()["status"] == "CANCELLED"
    assert (await api.http.get("/drops", params=list_params)).json()["items"] == []
    # A store rename.
    await api.http.patch(f"/stores/{store['id']}", json={"name": "Renamed Store"}, headers=owner["headers"])
    assert (await api.http.get(url)).json()["store"]["name"] == "Renamed Store"
    assert (await api.http.get(f"/stores/{store['id']}")).json()["name"] == "Renamed Store"
