"""The console's HTTP side on the fake engine: the page and its assets with their security and
cache headers, the browser redirect from `/`, the settings switch, the catalogue, and the admin
usage endpoints the dashboard reads (`/admin/usage`, `/admin/requests`)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from seekserve.api.console import CONTENT_SECURITY_POLICY, ConsoleAssets, prefers_html
from seekserve.tenancy.store import default_url
from tests.api.conftest import MAAS_MODEL, MODEL, asgi_client, build_app
from tests.fakes import FakeEngine
from tests.remote.test_passthrough import chat, client_of, gateway
from tests.tenancy.conftest import store_settings

STATIC = "sk-console-static"
ADMIN = "sk-console-admin"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
REPO = Path(__file__).resolve().parents[2]
PRICING = {"input": "1", "cached_input": "0.1", "output": "2"}  # USD per 1M tokens


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def console_app(tmp_path: Path, **overrides: Any) -> FastAPI:
    overrides.setdefault("models", [{"id": MODEL, "aliases": [MAAS_MODEL], "pricing": PRICING,
                                     "thinking": {"default": "disabled"}},
                                    {"id": "other-model", "thinking": None}])
    return build_app(FakeEngine(), api_keys=[STATIC], admin_key=ADMIN, **overrides,
                     **store_settings(default_url(tmp_path / "data"), tmp_path))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(console_app(tmp_path)) as c:
        yield c


def asset_urls(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/console/assets/[^"]+)"', page)


# ----- the page, its assets and headers -----

async def test_the_page_carries_a_strict_policy_and_no_inline_script_or_style(
        client: httpx.AsyncClient) -> None:
    response = await client.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    for script in re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S):
        assert script.strip() == ""  # every script is a file (src=...)
    assert not re.search(r"\sstyle\s*=", page)
    assert not re.search(r"\son[a-z]+\s*=", page)
    assert "<style" not in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere


async def test_every_page_of_the_console_is_the_same_document(client: httpx.AsyncClient) -> None:
    index = (await client.get("/console")).text
    for page in ("playground", "keys", "usage", "engines"):
        response = await client.get(f"/console/{page}")
        assert response.status_code == 200
        assert response.text == index
    assert (await client.get("/console/nothing-here")).status_code == 404


async def test_assets_are_served_with_their_type_and_cached_for_good(
        client: httpx.AsyncClient) -> None:
    page = (await client.get("/console")).text
    urls = asset_urls(page)
    assert len(urls) == 5  # icon, two stylesheets, the preloaded library, the entry module
    types = {".css": "text/css; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
             ".svg": "image/svg+xml"}
    for url in urls:
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == types[Path(url).suffix], url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        again = await client.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""


async def test_every_module_import_resolves_to_a_served_file(client: httpx.AsyncClient) -> None:
    """What a browser would load, followed from the entry module without one."""
    page = (await client.get("/console")).text
    entry = next(url for url in asset_urls(page) if url.endswith("main.mjs"))
    seen: set[str] = set()
    todo = [entry]
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        response = await client.get(url)
        assert response.status_code == 200, url
        for spec in re.findall(r'(?:^|\n|;)\s*import\b[^"\']*["\']([^"\']+)["\']', response.text):
            assert spec.startswith("./") or spec.startswith("../"), (url, spec)  # no bare names
            todo.append(str(Path(url).parent / spec).replace("/./", "/"))
            todo[-1] = _normalise(todo[-1])
    assert any(url.endswith("vendor/preact/preact.mjs") for url in seen)
    assert any(url.endswith("vendor/uplot/uPlot.esm.js") for url in seen)
    assert any(url.endswith("app/playground.mjs") for url in seen)


def _normalise(url: str) -> str:
    parts: list[str] = []
    for part in url.split("/"):
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


async def test_unknown_or_stale_asset_urls_are_404(client: httpx.AsyncClient) -> None:
    page = (await client.get("/console")).text
    url = asset_urls(page)[0]
    build = url.split("/")[3]
    for bad in (url.replace(build, "0" * 12), f"/console/assets/{build}/nothing.js",
                f"/console/assets/{build}/../../app.py", f"/console/assets/{build}/%2e%2e/x",
                f"/console/assets/{build}/index.html"):
        response = await client.get(bad)
        assert response.status_code == 404, bad
        assert response.json()["error"]["code"] == "not_found"


def test_the_asset_set_is_named_by_its_contents() -> None:
    assets = ConsoleAssets.packaged()
    assert re.fullmatch(r"[0-9a-f]{12}", assets.build)
    assert assets.prefix.encode() in assets.index
    assert b"{{assets}}" not in assets.index
    for library in ("preact", "htm", "uplot"):
        assert f"vendor/{library}/LICENSE" in assets.files


def test_the_built_wheel_ships_every_console_file(tmp_path: Path) -> None:
    """`pip install .` installs what the editable checkout serves."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("seekserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name.removeprefix("seekserve/console/") for name in archive.namelist()
                   if name.startswith("seekserve/console/")}
    assert shipped == {*ConsoleAssets.packaged().files, "index.html"}


# ----- the redirect from / and the settings switch -----

@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "text/html", "application/xhtml+xml"])
async def test_a_browser_at_the_root_is_sent_to_the_console(client: httpx.AsyncClient,
                                                             accept: str) -> None:
    response = await client.get("/", headers={"Accept": accept})
    assert response.status_code == 307
    assert response.headers["location"] == "/console"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json",
                                    "application/json, text/html;q=0.5", "text/html;q=0"])
async def test_api_clients_at_the_root_get_what_they_always_got(client: httpx.AsyncClient,
                                                                accept: str | None) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    response = await client.get("/", headers=headers)
    assert response.status_code == 404
    assert response.json() == {"error": {"message": "No such route.",
                                         "type": "invalid_request_error", "param": None,
                                         "code": "not_found"}}


def test_prefers_html_reads_quality_values() -> None:
    assert prefers_html(BROWSER_ACCEPT)
    assert prefers_html("application/json;q=0.5, text/html")
    assert not prefers_html("")
    assert not prefers_html("*/*")
    assert not prefers_html("text/html;q=0.4, application/json")
    assert not prefers_html("text/html;q=bogus")


async def test_the_console_can_be_turned_off(tmp_path: Path) -> None:
    app = console_app(tmp_path, console={"enabled": False})
    async with asgi_client(app) as c:
        for path in ("/console", "/console/keys", "/console/api/catalog"):
            response = await c.get(path, headers={"Accept": BROWSER_ACCEPT, **bearer(STATIC)})
            assert response.status_code == 404, path
        assert (await c.get("/", headers={"Accept": BROWSER_ACCEPT})).status_code == 404
        assert (await c.get("/v1/models", headers=bearer(STATIC))).status_code == 200


def test_the_switch_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from seekserve.settings import Settings

    assert Settings.load(None).console.enabled is True
    monkeypatch.setenv("SEEKSERVE_CONSOLE__ENABLED", "false")
    assert Settings.load(None).console.enabled is False


# ----- the catalogue -----

async def test_the_catalogue_needs_a_key_and_lists_what_the_playground_offers(
        client: httpx.AsyncClient) -> None:
    refused = await client.get("/console/api/catalog")
    assert refused.status_code == 401
    assert (await client.get("/console/api/catalog", headers=bearer("sk-wrong"))).status_code == 401
    by_key = await client.get("/console/api/catalog", headers=bearer(STATIC))
    by_admin = await client.get("/console/api/catalog", headers=bearer(ADMIN))
    assert by_key.status_code == by_admin.status_code == 200
    assert by_key.json() == by_admin.json()
    assert by_key.headers["cache-control"] == "no-store"
    body = by_key.json()
    assert body["models"] == [
        {"id": MODEL, "aliases": [MAAS_MODEL], "thinking": True, "engine": "embedded"},
        {"id": "other-model", "aliases": [], "thinking": False, "engine": "embedded"}]
    assert body["deployments"] == [
        {"name": "deepseek", "dialect": "openai", "path": "/v1/chat/completions",
         "endpoint_path": None, "hosts": [], "models": None},
        {"name": "maas-deepseek", "dialect": "maas",
         "path": "/v1/ai/maas-deepseek/chat/completions", "endpoint_path": "maas-deepseek",
         "hosts": [], "models": None},
        {"name": "backend", "dialect": "output_text", "path": "/v1/chat/completions",
         "endpoint_path": None, "hosts": ["backend", "backend:8000"], "models": None}]
    assert body["anthropic"] is False
    assert body["admin"] is True


# ----- the admin usage endpoints -----

async def _some_traffic(client: httpx.AsyncClient, app: FastAPI) -> dict[str, Any]:
    """Two requests with a managed key, one with the static key on another model."""
    created = await client.post("/admin/keys", json={"name": "team-a"}, headers=bearer(ADMIN))
    key = created.json()
    for i in range(2):
        response = await client.post("/v1/chat/completions", headers=bearer(key["key"]), json={
            "model": MODEL, "max_tokens": 5 + i, "user_id": f"user-{i}",
            "messages": [{"role": "user", "content": "Hello there"}]})
        assert response.status_code == 200, response.text
    response = await client.post("/v1/chat/completions", headers=bearer(STATIC), json={
        "model": "other-model", "max_tokens": 4, "user_id": "static-user",
        "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.text
    await app.state.services.tenancy.ledger.flush()
    return key


async def test_admin_usage_groups_and_filters_the_ledger(tmp_path: Path) -> None:
    app = console_app(tmp_path)
    async with asgi_client(app) as client:
        key = await _some_traffic(client, app)
        admin = bearer(ADMIN)
        today = datetime.now(UTC).date()

        by_key = (await client.get("/admin/usage", params={"group_by": "key"},
                                   headers=admin)).json()
        assert by_key["group_by"] == ["key"]
        rows = {row["key"]: row for row in by_key["data"]}
        assert set(rows) == {key["id"], None}
        assert rows[key["id"]]["requests"] == 2
        assert rows[key["id"]]["completion_tokens"] == 5 + 6
        assert rows[None]["requests"] == 1
        assert rows[None]["completion_tokens"] == 4

        by_day_model = (await client.get("/admin/usage", params=[
            ("group_by", "day"), ("group_by", "model")], headers=admin)).json()["data"]
        assert [(r["day"], r["model"], r["requests"]) for r in by_day_model] == [
            (today.isoformat(), MODEL, 2), (today.isoformat(), "other-model", 1)]
        priced = next(r for r in by_day_model if r["model"] == MODEL)
        unpriced = next(r for r in by_day_model if r["model"] == "other-model")
        assert float(priced["cost"]) == pytest.approx(
            (priced["prompt_tokens"] * 1 + priced["completion_tokens"] * 2) / 1e6)
        assert float(unpriced["cost"]) == 0

        only_key = (await client.get("/admin/usage", params={"key": key["id"]},
                                     headers=admin)).json()["data"]
        assert [(r["day"], r["requests"]) for r in only_key] == [(today.isoformat(), 2)]
        only_model = (await client.get("/admin/usage", params={"model": "other-model",
                                                               "group_by": "key"},
                                       headers=admin)).json()["data"]
        assert [(r["key"], r["requests"]) for r in only_model] == [(None, 1)]
        tomorrow = (today + timedelta(days=1)).isoformat()
        later = await client.get("/admin/usage", params={"start": tomorrow}, headers=admin)
        assert later.json()["data"] == []


async def test_admin_requests_lists_the_latest_rows_first(tmp_path: Path) -> None:
    app = console_app(tmp_path)
    async with asgi_client(app) as client:
        key = await _some_traffic(client, app)
        listed = await client.get("/admin/requests", params={"limit": 2}, headers=bearer(ADMIN))
        assert listed.status_code == 200
        rows = listed.json()["data"]
        assert [r["user_id"] for r in rows] == ["static-user", "user-1"]
        first = rows[1]
        assert (first["key_id"], first["model"], first["status"], first["route"],
                first["completion_tokens"]) == (key["id"], MODEL, "length",
                                                "/v1/chat/completions", 6)
        assert first["prompt_tokens"] > 0 and first["ttft_s"] is not None
        assert first["total_s"] >= first["ttft_s"]
        assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
        assert set(first) >= {"request_id", "cached_tokens", "reasoning_tokens", "queue_s",
                              "cost", "currency", "deployment"}
        mine = await client.get("/admin/requests", params={"key": key["id"]},
                                headers=bearer(ADMIN))
        assert [r["user_id"] for r in mine.json()["data"]] == ["user-1", "user-0"]
        other = await client.get("/admin/requests", params={"model": "other-model"},
                                 headers=bearer(ADMIN))
        assert [r["user_id"] for r in other.json()["data"]] == ["static-user"]


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/admin/usage", {"group_by": "week"}, "group_by.0"),
    ("/admin/usage", {"start": "2026-02-01", "end": "2026-01-01"}, "end"),
    ("/admin/usage", {"start": "yesterday"}, "start"),
    ("/admin/requests", {"limit": 0}, "limit"),
    ("/admin/requests", {"limit": 501}, "limit"),
    ("/admin/requests", {"start": "2026-02-01", "end": "2026-01-01"}, "end"),
])
async def test_bad_admin_queries_are_400s_naming_the_parameter(
        client: httpx.AsyncClient, path: str, params: dict[str, Any], param: str) -> None:
    response = await client.get(path, params=params, headers=bearer(ADMIN))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_the_admin_usage_endpoints_need_the_admin_key(tmp_path: Path) -> None:
    async with asgi_client(console_app(tmp_path)) as client:
        for path in ("/admin/usage", "/admin/requests"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers=bearer(STATIC))).status_code == 401
            assert (await client.get(path, headers=bearer(ADMIN))).status_code == 200
    app = build_app(FakeEngine(), api_keys=[STATIC],
                    **store_settings(default_url(tmp_path / "other"), tmp_path))
    async with asgi_client(app) as client:
        for path in ("/admin/usage", "/admin/requests"):
            assert (await client.get(path, headers=bearer(STATIC))).status_code == 404


async def test_a_key_still_sees_only_its_own_usage(tmp_path: Path) -> None:
    app = console_app(tmp_path)
    async with asgi_client(app) as client:
        key = await _some_traffic(client, app)
        own = (await client.get("/v1/usage", headers=bearer(key["key"]))).json()["data"]
        assert [(r["model"], r["requests"]) for r in own] == [(MODEL, 2)]
        assert date.fromisoformat(own[0]["day"]) == datetime.now(UTC).date()


# ----- engine state for the engines page -----

async def test_ready_shows_each_replicas_breaker(tmp_path: Path) -> None:
    from tests.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    app = gateway([dead], tmp_path, retries=0, breaker_failures=1, breaker_cooldown_s=60)
    async with client_of(app) as client:
        await client.post("/v1/chat/completions", json=chat())
        ready = (await client.get("/ready")).json()
    assert ready["engines"]["up"]["replica_states"] == [
        {"index": 0, "healthy": True, "breaker": "open", "in_flight": 0, "failures_total": 1}]
