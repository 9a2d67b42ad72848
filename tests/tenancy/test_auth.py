"""Managed keys over HTTP next to static keys; revocation and expiry on every replica within
seconds; the model allow-list; key strings full of SQL metacharacters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL
from starlette.requests import Request

from seekserve.protocol.errors import AuthenticationError, ServiceUnavailableError
from seekserve.settings import Settings, SettingsError
from seekserve.tenancy.auth import StaticKeyAuth, TenantAuth
from seekserve.tenancy.keys import KeyLimits, KeyStore
from seekserve.tenancy.store import Store, default_url
from tests.api.conftest import MAAS_MODEL, MODEL, asgi_client, build_app, chat_body
from tests.fakes import FakeEngine
from tests.tenancy.conftest import store_settings
from tests.tenancy.test_keys import SQL_METACHARACTERS

STATIC = "sk-static-key-for-tests"
ADMIN = "admin-key-for-tests"
TWO_MODELS: list[dict[str, Any]] = [
    {"id": MODEL, "aliases": [MAAS_MODEL]},
    {"id": "other-model"},
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app with a static key and an admin key, on a SQLite store in tmp_path."""
    app = build_app(FakeEngine(), api_keys=[STATIC], admin_key=ADMIN, models=TWO_MODELS,
                    **store_settings(default_url(tmp_path / "data"), tmp_path))
    async with asgi_client(app) as c:
        yield c


async def create_key(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/admin/keys", json={"name": "test", **fields},
                                 headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def request_with(key: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/",
                    "headers": [(b"authorization", f"Bearer {key}".encode())]})


async def test_managed_and_static_keys_both_work(client: httpx.AsyncClient) -> None:
    key = (await create_key(client))["key"]
    for k in (key, STATIC):
        # Thinking off: the fake engine's reply is then the answer text.
        response = await client.post("/v1/chat/completions", headers=bearer(k),
                                     json=chat_body(thinking={"type": "disabled"}))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "Hello from the fake engine."
    wrong = await client.post("/v1/chat/completions", json=chat_body(),
                              headers=bearer(key[:-1] + ("A" if key[-1] != "A" else "B")))
    assert wrong.status_code == 401
    assert wrong.json() == {"error": {"message": "Incorrect API key provided.",
                                      "type": "authentication_error", "param": None,
                                      "code": "invalid_api_key"}}
    missing = await client.get("/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"


async def test_a_revoked_key_is_refused_at_once_by_the_replica_that_revoked_it(
        client: httpx.AsyncClient) -> None:
    created = await create_key(client)
    assert (await client.get("/v1/models", headers=bearer(created["key"]))).status_code == 200
    revoked = await client.delete(f"/admin/keys/{created['id']}", headers=bearer(ADMIN))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = await client.get("/v1/models", headers=bearer(created["key"]))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "This API key has been revoked or has expired."


async def test_revocation_reaches_a_replica_holding_the_key_in_cache(store: Store) -> None:
    """Two authenticators over one store, as two replicas: the other one trusts its cache for
    at most `key_cache_s`, then refuses."""
    now = [1000.0]
    keys = KeyStore(store)
    replicas = [TenantAuth(StaticKeyAuth([]), KeyStore(store), require_key=True, cache_s=2.0,
                           clock=lambda: now[0]) for _ in range(2)]
    created = await keys.create("shared")
    for auth in replicas:
        assert (await auth.authenticate(request_with(created.plaintext))).key_id == created.key.id
    await keys.revoke(created.key.id)  # through a third party: the CLI, another replica
    now[0] += 1.9
    for auth in replicas:  # still inside the cache window: served from cache
        assert (await auth.authenticate(request_with(created.plaintext))).key_id == created.key.id
    now[0] += 0.2
    for auth in replicas:
        with pytest.raises(AuthenticationError, match="revoked or has expired"):
            await auth.authenticate(request_with(created.plaintext))


async def test_revocation_is_seen_within_five_seconds_in_real_time(tmp_path: Path,
                                                                   store_url: URL) -> None:
    settings = Settings.load(None, **store_settings(store_url, tmp_path))
    stores = [Store(store_url) for _ in range(2)]
    try:
        await stores[0].migrate()
        replicas = [TenantAuth(StaticKeyAuth([]), KeyStore(s), require_key=True,
                               cache_s=settings.store.key_cache_s) for s in stores]
        created = await KeyStore(stores[0]).create("realtime")
        for auth in replicas:
            await auth.authenticate(request_with(created.plaintext))
        await KeyStore(stores[0]).revoke(created.key.id)
        started = time.monotonic()
        refused_after: list[float] = []
        for auth in replicas:
            while True:
                try:
                    await auth.authenticate(request_with(created.plaintext))
                except AuthenticationError:
                    refused_after.append(time.monotonic() - started)
                    break
                assert time.monotonic() - started < 5.0, "a revoked key still works after 5 s"
                await asyncio.sleep(0.05)
        assert max(refused_after) < 5.0
    finally:
        for s in stores:
            await s.aclose()


async def test_an_expired_key_is_refused_even_while_cached(store: Store) -> None:
    auth = TenantAuth(StaticKeyAuth([]), KeyStore(store), require_key=True, cache_s=4.0)
    soon = await KeyStore(store).create("soon", expires_at=datetime.now(UTC) + timedelta(
        seconds=0.6))
    past = await KeyStore(store).create("past", expires_at=datetime.now(UTC) - timedelta(days=1))
    assert (await auth.authenticate(request_with(soon.plaintext))).name == "soon"
    with pytest.raises(AuthenticationError, match="expired"):
        await auth.authenticate(request_with(past.plaintext))
    await asyncio.sleep(0.7)
    with pytest.raises(AuthenticationError, match="expired"):
        await auth.authenticate(request_with(soon.plaintext))


async def test_the_caller_carries_the_key_and_its_limits(store: Store) -> None:
    limits = KeyLimits(rpm=7, tpm=700, max_concurrency=2, max_user_concurrency=1,
                       models=frozenset({MODEL}), budget_tokens=99)
    created = await KeyStore(store).create("limited", limits)
    auth = TenantAuth(StaticKeyAuth([]), KeyStore(store), require_key=True, cache_s=1.0)
    request = request_with(created.plaintext)
    caller = await auth.authenticate(request)
    assert (caller.key_id, caller.name, caller.limits) == (created.key.id, "limited", limits)
    assert caller.key_digest.hex() == created.key.digest
    assert request.state.caller is caller


async def test_a_model_outside_the_allow_list_is_403(client: httpx.AsyncClient) -> None:
    other_only = (await create_key(client, models=["other-model"]))["key"]
    response = await client.post("/v1/chat/completions", json=chat_body(),
                                 headers=bearer(other_only))
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "permission_error", "model_not_allowed", "model")
    assert "may not use the model `deepseek-v4-pro`" in error["message"]
    assert "other-model" in error["message"]
    ok = await client.post("/v1/chat/completions", json=chat_body(model="other-model"),
                           headers=bearer(other_only))
    assert ok.status_code == 200, ok.text
    # An alias in the allow-list admits the model under any of its names.
    by_alias = (await create_key(client, models=[MAAS_MODEL]))["key"]
    for name in (MODEL, MAAS_MODEL):
        response = await client.post("/v1/chat/completions", json=chat_body(model=name),
                                     headers=bearer(by_alias))
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("key", [*SQL_METACHARACTERS,
                                 "sk-' OR 1=1 --" + "'" * 32,  # shaped like a managed key
                                 "sk-" + "x' OR digest LIKE '%" + "-" * 23])
async def test_key_strings_full_of_sql_metacharacters_are_refused(
        client: httpx.AsyncClient, key: str) -> None:
    real = await create_key(client)
    response = await client.get("/v1/models", headers=bearer(key))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert (await client.get("/v1/models", headers=bearer(real["key"]))).status_code == 200
    listed = (await client.get("/admin/keys", headers=bearer(ADMIN))).json()["data"]
    assert [k["revoked_at"] for k in listed] == [None]


def open_app(tmp_path: Path, **store: Any) -> Any:
    """No static key, no admin key: keys are required only by what the store holds."""
    return build_app(FakeEngine(), api_keys=[], admin_key=None,
                     **store_settings(default_url(tmp_path / "data"), tmp_path, **store))


async def test_a_managed_key_in_the_store_makes_keys_required_at_start(tmp_path: Path) -> None:
    """As after `seekserve keys create` and a restart: no key, a wrong key and a revoked key
    are refused in the OpenAI error shape; the managed key works."""
    store = Store(default_url(tmp_path / "data"))
    await store.migrate()
    created = await KeyStore(store).create("cli")
    revoked = await KeyStore(store).create("old")
    await KeyStore(store).revoke(revoked.key.id)
    await store.aclose()
    app = open_app(tmp_path)
    async with asgi_client(app) as client:
        missing = await client.post("/v1/chat/completions", json=chat_body())
        assert missing.status_code == 401
        assert missing.json()["error"] == {
            "message": "Missing API key: send it as `Authorization: Bearer <key>` (or as "
                       "`x-api-key: <key>`, as Anthropic's clients do).",
            "type": "authentication_error", "param": None, "code": "missing_api_key"}
        for wrong in ("anything", "sk-" + "x" * 43, revoked.plaintext):
            refused = await client.get("/v1/models", headers=bearer(wrong))
            assert refused.status_code == 401, wrong
            assert refused.json()["error"]["type"] == "authentication_error"
        assert (await client.post("/v1/completions", json={
            "model": MODEL, "prompt": "x", "max_tokens": 2})).status_code == 401
        assert (await client.get("/v1/models", headers=bearer(created.plaintext))
                ).status_code == 200
        ok = await client.post("/v1/chat/completions", json=chat_body(),
                               headers=bearer(created.plaintext))
        assert ok.status_code == 200, ok.text


async def test_a_key_created_while_serving_closes_the_open_server(tmp_path: Path) -> None:
    """Created by another process (the CLI): this replica reads the store again once its
    `key_cache_s` has passed (0 here, so at the next request); revoking every key does not
    open it again."""
    app = open_app(tmp_path, key_cache_s=0)
    async with asgi_client(app) as client:
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.get("/v1/models", headers=bearer("anything"))).status_code == 200
        other_process = Store(default_url(tmp_path / "data"))
        created = await KeyStore(other_process).create("cli")
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/v1/models", headers=bearer("anything"))).status_code == 401
        assert (await client.get("/v1/models", headers=bearer(created.plaintext))
                ).status_code == 200
        await KeyStore(other_process).revoke(created.key.id)
        await other_process.aclose()
        app.state.services.auth.forget(created.key)
        assert (await client.get("/v1/models", headers=bearer(created.plaintext))
                ).status_code == 401
        assert (await client.get("/v1/models")).status_code == 401


async def test_the_store_is_read_again_only_after_the_cache_window(store: Store) -> None:
    now = [1000.0]
    keys = KeyStore(store)
    auth = TenantAuth(StaticKeyAuth([]), keys, require_key=False, cache_s=2.0,
                      clock=lambda: now[0])
    await auth.read_managed_keys()
    anonymous = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    assert (await auth.authenticate(anonymous)).key_id is None
    await keys.create("new")
    now[0] += 1.9
    assert (await auth.authenticate(anonymous)).key_id is None  # not read again yet
    now[0] += 0.2
    with pytest.raises(AuthenticationError, match="Missing API key"):
        await auth.authenticate(anonymous)
    assert auth.enabled


async def test_an_unreachable_store_refuses_an_anonymous_call_it_cannot_vouch_for(
        store: Store) -> None:
    class DownKeyStore(KeyStore):
        async def count(self) -> int:
            raise ConnectionRefusedError(111, "Connection refused")

    auth = TenantAuth(StaticKeyAuth([]), DownKeyStore(store), require_key=False, cache_s=2.0)
    anonymous = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    with pytest.raises(ServiceUnavailableError) as info:
        await auth.authenticate(anonymous)
    assert info.value.code == "key_store_unavailable"


def test_the_key_cache_cannot_outlive_the_revocation_promise(tmp_path: Path) -> None:
    assert Settings.load(None, data_dir=tmp_path).store.key_cache_s <= 5
    with pytest.raises(SettingsError, match="key_cache_s"):
        Settings.load(None, data_dir=tmp_path, store={"key_cache_s": 6})


async def test_an_unreachable_key_store_is_a_503_not_a_500(store: Store) -> None:
    """Past its cache window a replica cannot vouch for a key while the store is down: it says
    so (503 with Retry-After) instead of failing with a 500 or serving a stale key."""
    now = [1000.0]
    keys = KeyStore(store)
    created = await keys.create("outage")

    class DownKeyStore(KeyStore):
        async def by_digest(self, digest: str) -> Any:
            raise ConnectionRefusedError(111, "Connection refused")

    auth = TenantAuth(StaticKeyAuth([]), DownKeyStore(store), require_key=True, cache_s=2.0,
                      clock=lambda: now[0])
    with pytest.raises(ServiceUnavailableError) as info:
        await auth.authenticate(request_with(created.plaintext))
    assert info.value.status_code == 503
    assert info.value.code == "key_store_unavailable"
    assert info.value.headers["Retry-After"] == "5"
