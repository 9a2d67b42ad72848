"""Tenancy on the real model in real server processes: a managed key from the admin API used with
the openai SDK, its usage in the ledger (`GET /v1/usage`, `seekserve usage`, the rows
themselves), its rate limit, output moderation, revocation, metrics; then two replicas sharing
PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
import redis

from seekserve.engines.default_model import DEFAULT_MODEL, ensure_model
from seekserve.settings import default_data_dir
from tests.e2e.conftest import REPO, Server, start_server, stop_server

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
ADMIN = "sk-e2e-admin-key"
PRICING = {"input": "0.27", "cached_input": "0.07", "output": "1.10"}  # USD per 1M tokens
# Answered at length: every request here ends at its max_tokens.
QUESTION = [{"role": "user", "content": "Write a long poem about the sea."}]
# Answered "One, two, three, ...": the `strict` deployment flags "three" (or "3") in its output.
COUNTING = [{"role": "user", "content": "Count from one to five in English words, "
                                        "separated by commas."}]


@pytest.fixture(scope="module")
def model_path() -> Path:
    """The default model from the shared cache, so a server with its own data dir needs no
    download."""
    return ensure_model(DEFAULT_MODEL, default_data_dir() / "models", progress=False)


def tenancy_config(model_path: Path, **sections: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1"},
        "admin_key": ADMIN,
        "engines": {"embedded": {"model_path": str(model_path), "n_ctx": 2048,
                                 "max_running": 2}},
        "models": [{"id": MODEL, "engine": "embedded", "pricing": PRICING}],
        "deployments": [{"name": "default"},
                        {"name": "strict", "endpoint_path": "strict"}],
        "moderation": {"rules": {"words": ["forbidden phrase"]},
                       "deployments": {"strict": {"words": ["three", "3"]}}},
        "store": {"flush_interval_s": 0.1},
        **sections,
    }


def admin(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30,
                        headers={"Authorization": f"Bearer {ADMIN}"})


def create_key(server: Server, **limits: Any) -> dict[str, Any]:
    with admin(server) as http:
        response = http.post("/admin/keys", json={"name": "e2e", **limits})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def sdk(server: Server, key: str, path: str = "/v1") -> openai.OpenAI:
    client = openai.OpenAI(base_url=server.base_url + path, api_key=key, max_retries=0,
                           timeout=120)
    server.opened.append(client)  # closed by stop_server
    return client


def eventually(check: Any, within: float, every: float = 0.1) -> Any:
    """`check()` once it returns something truthy (its last value after `within` s)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tenancy-data")


@pytest.fixture(scope="module")
def server(model_path: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    """One server on a SQLite store in a data dir of its own, in-process rate limits."""
    srv = start_server(tenancy_config(model_path, ratelimit={"backend": "memory"}),
                       tmp_path_factory.mktemp("tenancy"),
                       env={"SEEKSERVE_DATA_DIR": str(data_dir)})
    yield srv
    stop_server(srv)


def sqlite_rows(data_dir: Path, key_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "seekserve.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(
            "SELECT * FROM usage WHERE key_id = ? ORDER BY created_at", (key_id,))]


def test_a_managed_key_is_limited_accounted_and_revoked(server: Server, data_dir: Path) -> None:
    key = create_key(server, rpm=3, budget_usd="1")
    client = sdk(server, key["key"])

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, max_tokens=4, temperature=0,  # type: ignore[arg-type]
        extra_body={"user_id": "e2e-user"})
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    first = raw.parse()
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(stream)
    streamed_usage = chunks[-1].usage
    assert streamed_usage is not None
    with pytest.raises(openai.BadRequestError) as filtered:
        client.chat.completions.create(
            model=MODEL, max_tokens=4,
            messages=[{"role": "user", "content": "Repeat the forbidden phrase."}])
    assert filtered.value.code == "content_filter"
    third = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4,
                                           temperature=0)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"

    # The ledger: one row per admitted request (not the filtered prompt nor the 429).
    answers = [first.usage, streamed_usage, third.usage]
    prompt = sum(u.prompt_tokens for u in answers if u is not None)
    completion = sum(u.completion_tokens for u in answers if u is not None)

    def reported() -> dict[str, Any] | None:
        response = httpx.get(f"{server.v1}/usage", timeout=10,
                             headers={"Authorization": f"Bearer {key['key']}"})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        return data[0] if data and data[0]["requests"] == 3 else None

    day = eventually(reported, within=5)
    assert day is not None, "the three requests did not reach GET /v1/usage"
    assert (day["model"], day["prompt_tokens"], day["completion_tokens"]) == (
        MODEL, prompt, completion)
    assert float(day["cost"]) > 0

    rows = sqlite_rows(data_dir, key["id"])
    assert [r["request_id"] for r in rows] == [first.id, chunks[0].id, third.id]
    assert {r["status"] for r in rows} == {"length"}
    for row in rows:
        assert (row["model"], row["deployment"], row["route"]) == (
            MODEL, "default", "/v1/chat/completions")
        assert row["completion_tokens"] == 4
        assert row["cache_hit_tokens"] + row["cache_miss_tokens"] == row["prompt_tokens"]
        assert row["queue_s"] is not None and row["queue_s"] >= 0
        assert 0 < row["ttft_s"] <= row["total_s"]
        assert row["cost_nanos"] > 0
    assert rows[0]["user_id"] == "e2e-user"

    # The CLI reads the same store through the same data dir.
    cli = subprocess.run(
        [sys.executable, "-m", "seekserve", "usage", "--key", key["id"], "--by", "model"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env=dict(os.environ, SEEKSERVE_DATA_DIR=str(data_dir)))
    assert cli.returncode == 0, cli.stderr
    header, line = cli.stdout.splitlines()
    assert header.split()[:4] == ["model", "requests", "prompt_tokens", "completion_tokens"]
    assert line.split()[:4] == [MODEL, "3", str(prompt), str(completion)]

    # Revoked: refused within 5 s.
    with admin(server) as http:
        assert http.delete(f"/admin/keys/{key['id']}").status_code == 200
    revoked_at = time.monotonic()

    def refused() -> bool:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        return False

    assert eventually(refused, within=5), "a revoked key was still accepted after 5 s"
    assert time.monotonic() - revoked_at < 5


def test_keys_made_with_the_cli_are_required_on_any_address(
        model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`seekserve keys create`, then a server with no static or admin key bound to 0.0.0.0:
    it starts (a managed key is a key), says which keys it requires, and refuses calls
    without that key in the OpenAI shape."""
    data = tmp_path_factory.mktemp("cli-keys")
    env = dict(os.environ, SEEKSERVE_DATA_DIR=str(data))
    env.pop("SEEKSERVE_API_KEYS", None)
    cli = subprocess.run([sys.executable, "-m", "seekserve", "keys", "create", "--name", "ops"],
                         capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert cli.returncode == 0, cli.stderr
    key = cli.stdout.splitlines()[1]
    config = tenancy_config(model_path, server={"host": "0.0.0.0"})
    del config["admin_key"]
    srv = start_server(config, tmp_path_factory.mktemp("cli-keys-server"), api_key="",
                       env={"SEEKSERVE_DATA_DIR": str(data)})
    try:
        assert "keys required: 1 managed key in the store" in srv.log()
        for wrong in ("no-key", "sk-" + "x" * 43):
            with pytest.raises(openai.AuthenticationError) as refused:
                sdk(srv, wrong).chat.completions.create(
                    model=MODEL, messages=QUESTION, max_tokens=2)
            assert refused.value.status_code == 401
        missing = httpx.post(srv.base_url + "/v1/chat/completions", timeout=30,
                             json={"model": MODEL, "messages": QUESTION, "max_tokens": 2})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "missing_api_key"
        answer = sdk(srv, key).chat.completions.create(model=MODEL, messages=QUESTION,
                                                      max_tokens=2)
        assert answer.usage is not None and answer.usage.completion_tokens == 2
    finally:
        stop_server(srv)


def test_flagged_output_stops_with_content_filter(server: Server, data_dir: Path) -> None:
    key = create_key(server)
    stream = sdk(server, key["key"], "/v1/ai/strict").chat.completions.create(
        model=MODEL, messages=COUNTING, max_tokens=32, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "content_filter", text
    assert text.strip() and "three" not in text.lower() and "3" not in text, text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens < 32

    def row() -> list[dict[str, Any]]:
        return sqlite_rows(data_dir, key["id"])

    [recorded] = eventually(row, within=5)
    assert (recorded["status"], recorded["deployment"], recorded["completion_tokens"]) == (
        "filtered", "strict", usage.completion_tokens)


def test_metrics_count_the_tokens_served(server: Server) -> None:
    key = create_key(server)
    before = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    answer = sdk(server, key["key"]).chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=3, temperature=0)  # type: ignore[arg-type]
    assert answer.usage is not None
    after = httpx.get(f"{server.base_url}/metrics", timeout=10).text

    def value(text: str, name: str) -> float:
        prefix = f'{name}{{model="{MODEL}"}} '
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0][len(prefix):]) if lines else 0.0

    assert value(after, "seekserve_completion_tokens_total") - value(
        before, "seekserve_completion_tokens_total") == answer.usage.completion_tokens
    assert value(after, "seekserve_prompt_tokens_total") - value(
        before, "seekserve_prompt_tokens_total") == answer.usage.prompt_tokens
    assert value(after, "seekserve_time_to_first_token_seconds_count") == value(
        before, "seekserve_time_to_first_token_seconds_count") + 1


# ----- two replicas sharing PostgreSQL and Redis -----

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    name = "seekserve_e2e_" + secrets.token_hex(6)

    async def admin_execute(sql: str) -> None:
        conn = await asyncpg.connect(database="test", timeout=5, **PG)  # type: ignore[arg-type]
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin_execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    yield name
    asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable: {exc}")
    prefix = f"seekserve:e2e:{secrets.token_hex(4)}:"
    yield prefix
    for name in client.scan_iter(match=prefix + "*"):
        client.delete(name)
    client.close()


@pytest.fixture(scope="module")
def replicas(model_path: Path, pg_database: str, redis_prefix: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    servers: list[Server] = []
    try:
        for name in ("replica-a", "replica-b"):
            workdir = tmp_path_factory.mktemp(name)
            config = tenancy_config(
                model_path,
                store={"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}",
                       "journal_dir": str(workdir / "journal"), "flush_interval_s": 0.1},
                ratelimit={"backend": "redis", "redis_prefix": redis_prefix})
            servers.append(start_server(config, workdir,
                                        env={"SEEKSERVE_DATA_DIR": str(workdir / "data")}))
        yield servers
    finally:
        for srv in servers:
            stop_server(srv)


def test_replicas_share_a_keys_rpm_and_the_ledger(replicas: list[Server],
                                                  pg_database: str) -> None:
    a, b = replicas
    key = create_key(a, rpm=4)
    ids = []
    for server in (a, b, a, b):
        answer = sdk(server, key["key"]).chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=2, temperature=0)  # type: ignore[arg-type]
        ids.append(answer.id)
    for server in (a, b):  # the fifth request in the window, on either replica
        with pytest.raises(openai.RateLimitError):
            sdk(server, key["key"]).chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=2)  # type: ignore[arg-type]

    async def stored() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(database=pg_database, timeout=5, **PG)  # type: ignore[arg-type]
        try:
            rows = await conn.fetch("SELECT request_id, status FROM usage WHERE key_id = $1",
                                    key["id"])
        finally:
            await conn.close()
        return sorted((r["request_id"], r["status"]) for r in rows)

    def all_four() -> list[tuple[str, str]] | None:
        rows = asyncio.run(stored())
        return rows if len(rows) == 4 else None

    assert eventually(all_four, within=5) == sorted((i, "length") for i in ids)
