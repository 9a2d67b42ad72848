"""The admin API: behind the admin key (404 without one), plaintext shown once."""

from __future__ import annotations

from pathlib import Path

import httpx

from seekserve.tenancy.store import default_url
from tests.api.conftest import asgi_client, build_app
from tests.fakes import FakeEngine
from tests.tenancy.conftest import store_settings
from tests.tenancy.test_auth import ADMIN, bearer, client, create_key

__all__ = ["client"]  # the fixture, shared with test_auth


async def test_without_an_admin_key_the_admin_routes_do_not_exist(tmp_path: Path) -> None:
    app = build_app(FakeEngine(), api_keys=["sk-static"],
                    **store_settings(default_url(tmp_path / "data"), tmp_path))
    async with asgi_client(app) as c:
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"),
                             ("DELETE", "/admin/keys/key_x")):
            response = await c.request(method, path, headers=bearer("sk-static"),
                                       json={"name": "x"})
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"


async def test_the_admin_key_is_required(client: httpx.AsyncClient) -> None:
    managed = (await create_key(client))["key"]
    for headers in ({}, bearer("wrong"), bearer(managed)):
        response = await client.get("/admin/keys", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    refused = await client.post("/admin/keys", json={"name": "x"}, headers=bearer("wrong"))
    assert refused.status_code == 401


async def test_create_list_revoke(client: httpx.AsyncClient) -> None:
    created = await create_key(client, name="team-a", rpm=60, tpm=1000, max_concurrency=3,
                               max_user_concurrency=1, models=["deepseek-v4-pro"],
                               budget_tokens=5000, budget_usd="2.50", expires="2099-01-01")
    assert created["key"].startswith("sk-")
    assert created["prefix"] == created["key"][:10] + "…"
    assert (created["name"], created["rpm"], created["tpm"], created["max_concurrency"],
            created["max_user_concurrency"], created["models"], created["budget_tokens"],
            created["budget_usd"]) == ("team-a", 60, 1000, 3, 1, ["deepseek-v4-pro"], 5000,
                                       "2.50")
    assert created["expires_at"] == "2099-01-01T00:00:00+00:00"

    listing = await client.get("/admin/keys", headers=bearer(ADMIN))
    assert listing.status_code == 200
    [listed] = listing.json()["data"]
    assert "key" not in listed and "digest" not in listed
    assert created["key"] not in listing.text
    assert {k: v for k, v in created.items() if k != "key"} == listed

    by_prefix = await client.delete(f"/admin/keys/{created['prefix']}", headers=bearer(ADMIN))
    assert by_prefix.status_code == 200
    assert by_prefix.json()["id"] == created["id"]
    assert by_prefix.json()["revoked_at"] is not None
    unknown = await client.delete("/admin/keys/key_unknown", headers=bearer(ADMIN))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "key_not_found"


async def test_bad_key_requests_are_400_naming_the_field(client: httpx.AsyncClient) -> None:
    for body, param in (({"name": "x", "expires": "someday"}, "expires"),
                        ({"name": "x", "models": ["nope"]}, "models"),
                        ({"name": "x", "rpm": 0}, "rpm"),
                        ({"name": ""}, "name"),
                        ({"name": "x", "colour": "red"}, "colour")):
        response = await client.post("/admin/keys", json=body, headers=bearer(ADMIN))
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["param"] == param, response.text
