"""The owner of store A can neither read nor change anything private of store B: every
such call is 404, as if it did not exist, and B's data is unchanged afterwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .conftest import iso
from .test_stores import problem


async def test_owner_of_a_gets_404_for_everything_of_b(api):
    owner_b, store_b, branch_b, product_b = await api.shop()
    draft_b = await api.drop(owner_b, store_b, product_b)
    live_b = await api.publish(owner_b, await api.drop(owner_b, store_b, await api.product(owner_b, store_b)))
    owner_a = await api.user()
    await api.store(owner_a)  # A owns a store of its own: being an owner somewhere grants nothing here
    h = owner_a["headers"]
    s, b, p, d = store_b["id"], branch_b["id"], product_b["id"], draft_b["id"]
    later, latest = iso(datetime.now(UTC) + timedelta(hours=2)), iso(datetime.now(UTC) + timedelta(hours=3))
    calls = [
        ("PATCH", f"/stores/{s}", {"name": "hijacked"}),
        ("POST", f"/stores/{s}/branches", {"name": "x", "address": "y", "lat": 1, "lng": 1}),
        ("GET", f"/stores/{s}/branches", None),
        ("GET", f"/stores/{s}/branches/{b}", None),
        ("PATCH", f"/stores/{s}/branches/{b}", {"name": "hijacked"}),
        ("DELETE", f"/stores/{s}/branches/{b}", None),
        ("POST", f"/stores/{s}/products", {"name": "x", "sku": "X-1", "price_cents": 1, "currency": "EUR"}),
        ("GET", f"/stores/{s}/products", None),
        ("GET", f"/stores/{s}/products/{p}", None),
        ("PATCH", f"/stores/{s}/products/{p}", {"name": "hijacked"}),
        ("GET", f"/products/{p}", None),
        ("PATCH", f"/products/{p}", {"price_cents": 1}),
        ("POST", f"/stores/{s}/drops", {"product_id": p, "name": "x", "starts_at": later, "ends_at": latest}),
        ("GET", f"/stores/{s}/drops", None),
        ("GET", f"/stores/{s}/drops/{d}", None),
        ("PATCH", f"/stores/{s}/drops/{d}", {"name": "hijacked"}),
        ("GET", f"/drops/{d}", None),
        ("PATCH", f"/drops/{d}", {"name": "hijacked"}),
        ("POST", f"/drops/{d}/publish", None),
        ("POST", f"/drops/{d}/cancel", None),
        ("PATCH", f"/drops/{live_b['id']}", {"name": "hijacked"}),
        ("POST", f"/drops/{live_b['id']}/cancel", None),
        ("GET", f"/stores/{s}/drops/{live_b['id']}", None),
    ]
    for method, url, body in calls:
        r = await api.http.request(method, url, json=body, headers=h)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
        problem(r, 404, "not-found")

    # Nothing of B changed.
    hb = owner_b["headers"]
    assert (await api.http.get(f"/stores/{s}")).json()["name"] == store_b["name"]
    assert (await api.http.get(f"/stores/{s}/branches/{b}", headers=hb)).json()["name"] == branch_b["name"]
    assert (await api.http.get(f"/products/{p}", headers=hb)).json()["price_cents"] == product_b["price_cents"]
    draft = (await api.http.get(f"/drops/{d}", headers=hb)).json()
    assert (draft["status"], draft["name"]) == ("DRAFT", draft_b["name"])
    live = (await api.http.get(f"/drops/{live_b['id']}")).json()
    assert (live["status"], live["name"]) == ("LIVE", live_b["name"])
    assert len((await api.http.get(f"/stores/{s}/products", headers=hb)).json()["items"]) == 2


async def test_what_b_published_is_public_to_a(api):
    """Published drops are public: A reads B's live drop like anyone else (and only that)."""
    owner_b, store_b, _, product_b = await api.shop()
    live_b = await api.publish(owner_b, await api.drop(owner_b, store_b, product_b))
    owner_a = await api.user()
    r = await api.http.get(f"/drops/{live_b['id']}", headers=owner_a["headers"])
    assert r.status_code == 200 and r.json()["product"]["id"] == product_b["id"]
