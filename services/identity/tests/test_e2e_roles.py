"""Roles, store ownership, suspension and the admin command, through the gateway."""

from __future__ import annotations

import uuid

import aio_pika
import httpx
import jwt
import pytest
from dropslot_contracts import Actor, Envelope
from dropslot_contracts.events.catalog import StoreCreated
from dropslot_kit.testing import create_store, sign_up, unique_email

ADMIN_PASSWORD = "admin horse battery staple 7"

pytestmark = pytest.mark.e2e


def problem_type(r) -> str:
    return r.json()["type"].rsplit("/", 1)[-1]


def roles_in(token: str) -> list[dict]:
    return jwt.decode(token, options={"verify_signature": False})["roles"]


async def refreshed(http, user: dict) -> dict:
    """Rotate the user's tokens (what a client does when its access token runs out)."""
    r = await http.post("/auth/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 200, r.text
    tokens = r.json()
    user.update(tokens, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    return user


async def test_admin_command_creates_a_verified_platform_admin_idempotently(http, admin, admin_cli):
    assert "created platform admin" in admin["cli_output"]
    assert {"code": "platform_admin", "store_id": None} in admin["roles"]
    assert admin["email_verified_at"] is not None
    assert {"code": "platform_admin", "store_id": None} in roles_in(admin["access_token"])
    again = await admin_cli("--email", admin["email"], "--password", ADMIN_PASSWORD)
    assert again.returncode == 0 and "already a platform admin" in again.stdout
    # Promoting an existing customer leaves their password alone.
    user = await sign_up(http, email=unique_email("promote"))
    done = await admin_cli("--email", user["email"], "--password", "ignored for existing users 1")
    assert done.returncode == 0 and "promoted" in done.stdout
    assert {"code": "platform_admin", "store_id": None} in roles_in((await refreshed(http, user))["access_token"])
    weak = await admin_cli("--email", unique_email("weakadmin"), "--password", "password")
    assert weak.returncode == 2 and "common" in weak.stderr


async def test_role_grant_rules(http, admin, tap):
    store_a, store_b = uuid.uuid4(), uuid.uuid4()
    owner = await sign_up(http, email=unique_email("owner"))
    staff = await sign_up(http, email=unique_email("staff"))
    customer = await sign_up(http, email=unique_email("cust"))

    # A platform admin may make anyone the owner of a store.
    r = await http.post(f"/users/{owner['id']}/roles", json={"code": "store_owner", "store_id": str(store_a)},
                        headers=admin["headers"])
    assert r.status_code == 201, r.text
    assert r.json() == {"user_id": owner["id"], "code": "store_owner", "store_id": str(store_a)}
    granted = await tap.wait_for("identity.role.granted", user_id=owner["id"], code="store_owner")
    assert granted["store_id"] == str(store_a) and granted["data"]["granted_by"] == admin["id"]
    assert granted["actor"]["user_id"] == admin["id"]

    # The owner (with a token minted before the grant: identity checks its own records) hires staff.
    r = await http.post(f"/users/{staff['id']}/roles", json={"code": "store_staff", "store_id": str(store_a)},
                        headers=owner["headers"])
    assert r.status_code == 201, r.text
    assert {"code": "store_staff", "store_id": str(store_a)} in roles_in((await refreshed(http, staff))["access_token"])

    # ...but not in another store, and not other roles.
    for body in ({"code": "store_staff", "store_id": str(store_b)},
                 {"code": "store_owner", "store_id": str(store_a)},
                 {"code": "platform_admin"}):
        r = await http.post(f"/users/{customer['id']}/roles", json=body, headers=owner["headers"])
        assert r.status_code == 403, (body, r.text)
    r = await http.delete(f"/users/{staff['id']}/roles/store_staff", params={"store_id": str(store_b)},
                          headers=owner["headers"])
    assert r.status_code == 403
    # Customers and staff grant nothing.
    for actor in (customer, staff):
        r = await http.post(f"/users/{customer['id']}/roles", json={"code": "store_staff", "store_id": str(store_a)},
                            headers=actor["headers"])
        assert r.status_code == 403
    # Malformed assignments and unknown users.
    r = await http.post(f"/users/{staff['id']}/roles", json={"code": "store_staff"}, headers=admin["headers"])
    assert r.status_code == 422 and r.json()["errors"][0]["name"] == "store_id"
    r = await http.post(f"/users/{staff['id']}/roles", json={"code": "emperor"}, headers=admin["headers"])
    assert r.status_code == 422
    r = await http.post(f"/users/{uuid.uuid4()}/roles", json={"code": "store_staff", "store_id": str(store_a)},
                        headers=owner["headers"])
    assert r.status_code == 404

    # The owner lets the staff member go; the next token no longer carries the role.
    r = await http.delete(f"/users/{staff['id']}/roles/store_staff", params={"store_id": str(store_a)},
                          headers=owner["headers"])
    assert r.status_code == 204
    revoked = await tap.wait_for("identity.role.revoked", user_id=staff["id"], code="store_staff")
    assert revoked["data"]["revoked_by"] == owner["id"]
    assert not any(r["code"] == "store_staff" for r in roles_in((await refreshed(http, staff))["access_token"]))


def store_created(owner_id: str) -> Envelope:
    store_id = uuid.uuid4()
    tenant = f"t-{store_id.hex[:8]}"
    return Envelope.wrap(
        StoreCreated(store_id=store_id, tenant_key=tenant, name="Corner Shop", slug=f"corner-{store_id.hex[:8]}",
                     owner_user_id=uuid.UUID(owner_id)),
        producer="catalog", store_id=store_id, tenant_key=tenant, actor=Actor(user_id=uuid.UUID(owner_id)),
    )


async def test_store_created_event_makes_the_creator_owner_without_signing_in_again(http, system, tap):
    """What catalog publishes when someone creates a store; identity grants store_owner."""
    owner = await sign_up(http, email=unique_email("creator"))
    helper = await sign_up(http, email=unique_email("helper"))
    first, second = store_created(owner["id"]), store_created(owner["id"])
    conn = await aio_pika.connect(system.settings.rabbit_url)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.get_exchange(f"{system.settings.broker_namespace}.events")
        # The first event is delivered twice (at-least-once): the inbox makes the repeat a no-op.
        for env in (first, first, second):
            await exchange.publish(aio_pika.Message(env.model_dump_json().encode(), message_id=str(env.id),
                                                    content_type="application/json"), routing_key=env.type)
    store_id = first.data["store_id"]
    granted = await tap.wait_for("identity.role.granted", user_id=owner["id"], code="store_owner", store_id=store_id)
    assert granted["store_id"] == str(store_id) and granted["tenant_key"] == first.tenant_key
    assert granted["actor"]["user_id"] == owner["id"]
    # The owner's old token has no store role, yet identity lets them hire staff at once.
    assert not any(r["code"] == "store_owner" for r in roles_in(owner["access_token"]))
    r = await http.post(f"/users/{helper['id']}/roles", json={"code": "store_staff", "store_id": str(store_id)},
                        headers=owner["headers"])
    assert r.status_code == 201, r.text
    owner_roles = roles_in((await refreshed(http, owner))["access_token"])
    assert {"code": "store_owner", "store_id": str(store_id)} in owner_roles
    # The queue is consumed in order: once the second store's grant is out, the repeat was handled.
    await tap.wait_for("identity.role.granted", user_id=owner["id"], code="store_owner",
                       store_id=second.data["store_id"])
    assert len(tap.find("identity.role.granted", user_id=owner["id"], store_id=store_id)) == 1


async def test_customer_cannot_create_a_product_in_someone_elses_store(http, tap):
    """Needs catalog's POST /stores; skipped only while that route does not exist at all."""
    owner = await sign_up(http, email=unique_email("shop"))
    probe = await http.post("/stores", json={"name": "probe", "slug": f"probe-{uuid.uuid4().hex[:8]}"},
                            headers=owner["headers"])
    if probe.status_code == 404:
        pytest.skip("catalog has no POST /stores route yet (404 for the route itself)")
    assert probe.status_code == 201, probe.text
    store = await create_store(http, owner)
    # Straight away (identity may not have heard of the store yet), the owner hires staff.
    helper = await sign_up(http, email=unique_email("clerk"))
    r = await http.post(f"/users/{helper['id']}/roles", json={"code": "store_staff", "store_id": store["id"]},
                        headers=owner["headers"])
    assert r.status_code == 201, r.text
    customer = await sign_up(http, email=unique_email("nosy"))
    # ...and a customer cannot hire anyone there.
    r = await http.post(f"/users/{customer['id']}/roles", json={"code": "store_staff", "store_id": store["id"]},
                        headers=customer["headers"])
    assert r.status_code == 403
    product = {"name": "Sneaker", "sku": f"sku-{uuid.uuid4().hex[:6]}", "description": "", "images": [],
               "price_cents": 1000, "currency": "EUR", "is_active": True}
    r = await http.post(f"/stores/{store['id']}/products", json=product, headers=customer["headers"])
    assert r.status_code in (403, 404), r.text
    # The creator owns it at once, and identity hears of it: the next token carries store_owner.
    r = await http.post(f"/stores/{store['id']}/products", json=product, headers=owner["headers"])
    assert r.status_code == 201, r.text
    await tap.wait_for("identity.role.granted", user_id=owner["id"], code="store_owner", store_id=store["id"])
    assert {"code": "store_owner", "store_id": store["id"]} in roles_in((await refreshed(http, owner))["access_token"])


async def test_suspension_blocks_sign_in_refresh_and_the_old_token(http, admin, tap, system):
    user = await sign_up(http, email=unique_email("suspend"))
    bystander = await sign_up(http, email=unique_email("bystander"))
    r = await http.post(f"/users/{user['id']}/suspend", json={"reason": "chargebacks"}, headers=bystander["headers"])
    assert r.status_code == 403
    r = await http.post(f"/users/{user['id']}/suspend", json={"reason": "chargebacks"}, headers=admin["headers"])
    assert r.status_code == 200 and r.json()["status"] == "suspended"

    r = await http.post("/auth/login", json={"email": user["email"], "password": user["password"]})
    assert r.status_code == 403 and problem_type(r) == "account-suspended"
    # A wrong password still says only "invalid credentials": the status is not revealed to guessers.
    r = await http.post("/auth/login", json={"email": user["email"], "password": "guessing wildly 11"})
    assert r.status_code == 401 and problem_type(r) == "invalid-credentials"
    r = await http.post("/auth/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 401
    r = await http.get("/users/me", headers=user["headers"])
    assert r.status_code == 401 and problem_type(r) == "invalid-token"
    async with httpx.AsyncClient(base_url=system.service_url("identity")) as direct:
        assert (await direct.get("/api/v1/users/me", headers=user["headers"])).status_code == 401

    changed = await tap.wait_for("identity.user.status_changed", user_id=user["id"], status="suspended")
    assert changed["data"]["previous_status"] == "active" and changed["data"]["email"] == user["email"]
    assert changed["data"]["reason"] == "chargebacks" and changed["actor"]["user_id"] == admin["id"]
    await tap.wait_for("identity.session.revoked", user_id=user["id"], reason="suspended")

    r = await http.post(f"/users/{user['id']}/reactivate", headers=admin["headers"])
    assert r.status_code == 200 and r.json()["status"] == "active"
    r = await http.post("/auth/login", json={"email": user["email"], "password": user["password"]})
    assert r.status_code == 200


async def test_deleted_account_frees_the_address(http, tap):
    user = await sign_up(http, email=unique_email("leaver"))
    r = await http.delete(f"/users/{user['id']}", headers=user["headers"])
    assert r.status_code == 204
    await tap.wait_for("identity.user.status_changed", user_id=user["id"], status="deleted")
    r = await http.post("/auth/login", json={"email": user["email"], "password": user["password"]})
    assert r.status_code == 401 and problem_type(r) == "invalid-credentials"
    again = await sign_up(http, email=user["email"])
    assert again["id"] != user["id"]


async def test_admin_lists_and_owner_looks_up_users(http, admin):
    user = await sign_up(http, email=unique_email("listed"))
    r = await http.get("/users", params={"email": user["email"]}, headers=admin["headers"])
    assert r.status_code == 200 and [u["id"] for u in r.json()["items"]] == [user["id"]]
    page = await http.get("/users", params={"limit": 2}, headers=admin["headers"])
    assert page.status_code == 200 and len(page.json()["items"]) == 2 and page.json()["next_cursor"]
    nxt = await http.get("/users", params={"limit": 2, "cursor": page.json()["next_cursor"]}, headers=admin["headers"])
    assert not {u["id"] for u in nxt.json()["items"]} & {u["id"] for u in page.json()["items"]}
    r = await http.get("/users", params={"email": user["email"]}, headers=user["headers"])
    assert r.status_code == 403
