"""Stores, branches and products through the API (direct, and through the gateway: e2e)."""

from __future__ import annotations

import uuid

import pytest

PROBLEM = "https://dropslot.dev/problems/"


def problem(r, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["type"] == PROBLEM + slug, body
    return body


def invalid(r, field: str) -> dict:
    body = problem(r, 422, "validation-error")
    names = [e["name"] for e in body["errors"]]
    assert any(n == field or n.startswith(field + ".") or n == "query." + field for n in names), (field, names)
    return body


# --- stores -------------------------------------------------------------------------------------
async def test_create_store_then_everyone_can_read_it(api):
    owner = await api.user()
    slug = f"shop-{uuid.uuid4().hex[:8]}"
    r = await api.http.post("/stores", json={"name": "  Shop  ", "slug": slug,
                                             "logo_url": "https://cdn.example.com/logo.png"},
                            headers=owner["headers"])
    assert r.status_code == 201, r.text
    store = r.json()
    assert store["slug"] == slug and store["name"] == "Shop" and store["logo_url"] == "https://cdn.example.com/logo.png"
    for ref in (store["id"], slug):
        r = await api.http.get(f"/stores/{ref}")  # no token: public
        assert r.status_code == 200 and r.json()["id"] == store["id"]
    # The public list pages through every store; ours is on one of the pages.
    seen, cursor = set(), None
    for _ in range(100):
        r = await api.http.get("/stores", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200
        page = r.json()
        seen |= {s["id"] for s in page["items"]}
        cursor = page["next_cursor"]
        if store["id"] in seen or cursor is None:
            break
    assert store["id"] in seen


async def test_slug_taken(api):
    owner, other = await api.user(), await api.user()
    store = await api.store(owner)
    r = await api.http.post("/stores", json={"name": "Copy", "slug": store["slug"]}, headers=other["headers"])
    problem(r, 409, "slug-taken")
    second = await api.store(owner)
    r = await api.http.patch(f"/stores/{second['id']}", json={"slug": store["slug"].upper()}, headers=owner["headers"])
    problem(r, 409, "slug-taken")


@pytest.mark.parametrize("body, field", [
    ({"slug": "valid-slug-1"}, "name"),
    ({"name": "x", "slug": "Not a slug!"}, "slug"),
    ({"name": "x", "slug": "ab"}, "slug"),
    ({"name": "x"}, "slug"),
    ({"name": "x", "slug": "fine-slug-2", "logo_url": "not a url"}, "logo_url"),
    ({"name": "   ", "slug": "fine-slug-3"}, "name"),
])
async def test_store_validation(api, body, field):
    owner = await api.user()
    invalid(await api.http.post("/stores", json=body, headers=owner["headers"]), field)


async def test_creating_a_store_needs_a_user(api):
    r = await api.http.post("/stores", json={"name": "x", "slug": f"anon-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 401


async def test_only_the_owner_changes_a_store(api):
    owner, stranger = await api.user(), await api.user()
    store = await api.store(owner)
    r = await api.http.patch(f"/stores/{store['id']}", json={"name": "Renamed"}, headers=stranger["headers"])
    problem(r, 404, "not-found")
    r = await api.http.patch(f"/stores/{store['id']}", json={"name": "Renamed", "logo_url": None},
                             headers=owner["headers"])
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    assert (await api.http.get(f"/stores/{store['id']}")).json()["name"] == "Renamed"
    invalid(await api.http.patch(f"/stores/{store['id']}", json={"name": None}, headers=owner["headers"]), "name")


# --- branches -----------------------------------------------------------------------------------
async def test_branch_lifecycle(api):
    owner = await api.user()
    store = await api.store(owner)
    base = f"/stores/{store['id']}/branches"
    r = await api.http.post(base, json={
        "name": "Mitte", "address": "Unter den Linden 1, Berlin", "lat": 52.517, "lng": 13.389,
        "phone": "+49 30 000000",
        "opening_hours": {"weekly": {"mon": [{"open": "10:00", "close": "19:00"}]},
                          "exceptions": [{"date": "2026-12-25", "closed": True}]}}, headers=owner["headers"])
    assert r.status_code == 201, r.text
    branch = r.json()
    assert branch["lat"] == 52.517 and branch["opening_hours"]["weekly"]["mon"] == [{"open": "10:00", "close": "19:00"}]
    assert branch["opening_hours"]["exceptions"][0]["closed"] is True

    r = await api.http.get(base, headers=owner["headers"])
    assert r.status_code == 200 and [b["id"] for b in r.json()["items"]] == [branch["id"]]
    r = await api.http.patch(f"{base}/{branch['id']}", json={"name": "Mitte 2", "opening_hours": {"sun": ["12:00-16:00"]}},
                             headers=owner["headers"])
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Mitte 2" and r.json()["opening_hours"]["weekly"] == {
        "sun": [{"open": "12:00", "close": "16:00"}]}
    assert (await api.http.get(f"{base}/{branch['id']}", headers=owner["headers"])).json()["name"] == "Mitte 2"
    r = await api.http.delete(f"{base}/{branch['id']}", headers=owner["headers"])
    assert r.status_code == 204
    problem(await api.http.get(f"{base}/{branch['id']}", headers=owner["headers"]), 404, "not-found")
    problem(await api.http.delete(f"{base}/{branch['id']}", headers=owner["headers"]), 404, "not-found")


@pytest.mark.parametrize("patch, field", [
    ({"lat": 90.5}, "lat"),
    ({"lat": -91}, "lat"),
    ({"lng": 180.1}, "lng"),
    ({"lng": -200}, "lng"),
    ({"address": ""}, "address"),
    ({"phone": "call me"}, "phone"),
    ({"opening_hours": {"mon": [["18:00", "09:00"]]}}, "opening_hours"),
    ({"opening_hours": {"mon": [["09:00", "12:00"], ["11:00", "13:00"]]}}, "opening_hours"),
    ({"opening_hours": {"funday": [["09:00", "12:00"]]}}, "opening_hours"),
    ({"opening_hours": {"mon": [["9am", "5pm"]]}}, "opening_hours"),
])
async def test_branch_validation(api, patch, field):
    owner = await api.user()
    store = await api.store(owner)
    body = {"name": "B", "address": "Somewhere 1", "lat": 1.0, "lng": 2.0, **patch}
    invalid(await api.http.post(f"/stores/{store['id']}/branches", json=body, headers=owner["headers"]), field)
    branch = await api.branch(owner, store)
    invalid(await api.http.patch(f"/stores/{store['id']}/branches/{branch['id']}", json=patch,
                                 headers=owner["headers"]), field)


# --- products -----------------------------------------------------------------------------------
async def test_products_sku_unique_per_store_and_paginated(api):
    owner = await api.user()
    store, other_store = await api.store(owner), await api.store(owner)
    first = await api.product(owner, store, sku="TEE-1", currency="usd", images=[])
    assert first["currency"] == "USD" and first["is_active"] is True and first["images"] == []
    problem(await api.http.post(f"/stores/{store['id']}/products", json={
        "name": "Dup", "sku": "TEE-1", "price_cents": 1, "currency": "EUR"}, headers=owner["headers"]), 409, "sku-taken")
    await api.product(owner, other_store, sku="TEE-1")  # another store may use the same SKU
    second = await api.product(owner, store, sku="TEE-2", price_cents=0)
    third = await api.product(owner, store, sku="TEE-3", is_active=False)
    r = await api.http.patch(f"/stores/{store['id']}/products/{third['id']}", json={"sku": "TEE-1"},
                             headers=owner["headers"])
    problem(r, 409, "sku-taken")

    ids, cursor = [], None
    while True:
        r = await api.http.get(f"/stores/{store['id']}/products",
                               params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=owner["headers"])
        assert r.status_code == 200, r.text
        ids += [p["id"] for p in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert ids == [first["id"], second["id"], third["id"]]
    r = await api.http.get(f"/stores/{store['id']}/products", params={"is_active": "false"}, headers=owner["headers"])
    assert [p["id"] for p in r.json()["items"]] == [third["id"]]
    invalid(await api.http.get(f"/stores/{store['id']}/products", params={"cursor": "garbage"},
                               headers=owner["headers"]), "cursor")


async def test_product_changes(api):
    owner, store, _, product = await api.shop()
    r = await api.http.patch(f"/stores/{store['id']}/products/{product['id']}",
                             json={"name": "Sneaker II", "price_cents": 15000, "images": []}, headers=owner["headers"])
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["price_cents"], r.json()["images"]) == ("Sneaker II", 15000, [])
    r = await api.http.get(f"/products/{product['id']}", headers=owner["headers"])
    assert r.status_code == 200 and r.json()["name"] == "Sneaker II"
    r = await api.http.patch(f"/products/{product['id']}", json={"is_active": False}, headers=owner["headers"])
    assert r.status_code == 200 and r.json()["is_active"] is False


@pytest.mark.parametrize("patch, field", [
    ({"price_cents": -1}, "price_cents"),
    ({"price_cents": 9.99}, "price_cents"),
    ({"price_cents": "lots"}, "price_cents"),
    ({"currency": "XXX"}, "currency"),
    ({"currency": "dollars"}, "currency"),
    ({"images": ["not-a-url"]}, "images"),
    ({"images": "https://img.example.com/a.png"}, "images"),
    ({"sku": ""}, "sku"),
    ({"name": ""}, "name"),
])
async def test_product_validation(api, patch, field):
    owner = await api.user()
    store = await api.store(owner)
    body = {"name": "P", "sku": f"S-{uuid.uuid4().hex[:6]}", "price_cents": 100, "currency": "EUR", **patch}
    invalid(await api.http.post(f"/stores/{store['id']}/products", json=body, headers=owner["headers"]), field)
    product = await api.product(owner, store)
    invalid(await api.http.patch(f"/stores/{store['id']}/products/{product['id']}", json=patch,
                                 headers=owner["headers"]), field)
