"""The remote engine inside the real app, against scripted upstreams served by uvicorn on
loopback: relaying and gathering, retries only before the first byte, error mapping, ejection,
client disconnects, /ready and the ledger row."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from seekserve.app import create_app
from seekserve.chat.passthrough import PassthroughChat
from seekserve.engines.remote.router import Replica, rendezvous_order
from seekserve.settings import Settings
from seekserve.tenancy.identity import Caller, RequestIdentity
from seekserve.tenancy.schema import usage
from tests.api.conftest import asgi_client, live_server, sse_json
from tests.ports import free_port
from tests.remote.fake_upstream import FakeUpstream, serving

MODEL = "deepseek-v4-pro"
KEY = "sk-remote-tests"
SECRET = "sk-upstream-secret-value"


def gateway(urls: list[str], data_dir: Path, **engine: Any) -> FastAPI:
    settings = Settings.load(
        None, data_dir=data_dir, api_keys=[KEY],
        engines={"up": {"kind": "remote", "upstream": "vllm",
                        "replicas": [{"base_url": u, "model": "up-model"} for u in urls],
                        "health_interval_s": 0, "backoff_base_s": 0.01,
                        "backoff_max_s": 0.02, **engine}},
        models=[{"id": MODEL, "engine": "up"}])
    return create_app(settings, {})


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], **fields}


def remote(app: FastAPI) -> PassthroughChat:
    engine: PassthroughChat = app.state.services.backends["up"]
    return engine


def user_preferring(replicas: list[Replica], name: str) -> str:
    """A user_id whose first choice is the replica at `name`."""
    caller = Caller(hashlib.sha256(KEY.encode()).digest())
    for i in range(1000):
        affinity = RequestIdentity.of(caller, f"user-{i}", cache_secret=b"").affinity
        if rendezvous_order(affinity, replicas)[0].name == name:
            return f"user-{i}"
    raise AssertionError("no such user")


@pytest.fixture
def data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="seekserve-remote-"))


@asynccontextmanager
async def upstreams(*scripts: list[str | int]) -> AsyncIterator[list[FakeUpstream]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serving(FakeUpstream(list(s)))) for s in scripts]


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


async def test_streamed_and_gathered_answers_carry_the_upstream_usage(data_dir: Path) -> None:
    async with upstreams([]) as [up], client_of(gateway([up.url], data_dir)) as client:
        streamed = await client.post("/v1/chat/completions", json=chat(
            stream=True, stream_options={"include_usage": True}, user_id="alice",
            max_tokens=5, thinking={"type": "disabled"}))
        whole = await client.post("/v1/chat/completions", json=chat(max_tokens=5))
    assert streamed.status_code == 200, streamed.text
    events = sse_json(streamed.text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e["choices"])
    assert text == "Hello"
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
    assert events[-1]["usage"]["prompt_tokens"] == 11
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 8}
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["choices"][0]["message"]["content"] == "Hello"
    assert answer["model"] == MODEL
    assert (answer["usage"]["completion_tokens"], answer["usage"]["prompt_cache_hit_tokens"]) \
        == (2, 8)
    sent = up.bodies[0]
    assert sent["model"] == "up-model" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True} and sent["max_tokens"] == 5
    assert sent["chat_template_kwargs"] == {"thinking": False, "enable_thinking": False}
    assert sent["user"].startswith("u-") and "alice" not in json.dumps(sent)
    # A non-streamed client is still served from an upstream stream (usage included).
    assert up.bodies[1]["stream"] is True


async def test_a_failing_first_choice_is_retried_on_the_next_replica(data_dir: Path) -> None:
    async with upstreams([503], []) as [bad, good]:
        app = gateway([bad.url, good.url], data_dir)
        async with client_of(app) as client:
            user = user_preferring(remote(app).replicas, bad.url)
            response = await client.post("/v1/chat/completions",
                                         json=chat(user_id=user, stream=True))
    assert response.status_code == 200
    assert "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in sse_json(response.text) if e["choices"]) == "Hello"
    assert (len(bad.bodies), len(good.bodies)) == (1, 1)


async def test_a_dead_replica_is_a_connect_error_that_moves_on(data_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with upstreams([]) as [good]:
        app = gateway([dead, good.url], data_dir)
        async with client_of(app) as client:
            user = user_preferring(remote(app).replicas, dead)
            response = await client.post("/v1/chat/completions", json=chat(user_id=user))
            assert response.status_code == 200, response.text
            assert remote(app).state().upstream_failures_total == 1


async def test_no_retry_once_the_upstream_has_started_answering(data_dir: Path) -> None:
    async with upstreams(["drop"], ["drop"]) as ups:
        async with client_of(gateway([u.url for u in ups], data_dir)) as client:
            response = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert response.status_code == 200
    events = sse_json(response.text)
    assert events[-1]["error"]["code"] == "upstream_error"
    assert "Hel" in [e["choices"][0]["delta"].get("content") for e in events if "choices" in e]
    assert "[DONE]" not in response.text
    assert sum(len(u.bodies) for u in ups) == 1


@pytest.mark.parametrize(("status", "ours", "code"), [
    (429, 429, "upstream_rate_limited"),
    (401, 502, "upstream_auth_error"),
    (400, 400, "upstream_bad_request"),
    (500, 502, "upstream_error"),
])
async def test_upstream_errors_map_to_ours(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           status: int, ours: int, code: str) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", SECRET)
    async with upstreams([status]) as [up]:
        async with client_of(gateway([up.url], data_dir, retries=0,
                                     replicas=[{"base_url": up.url, "model": "m",
                                                "api_key_env": "UPSTREAM_KEY"}])) as client:
            response = await client.post("/v1/chat/completions", json=chat())
    assert up.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert response.status_code == ours, response.text
    assert response.json()["error"]["code"] == code
    assert SECRET not in response.text
    if status == 429:
        assert response.headers["retry-after"] == "7"
    if status == 400:
        assert "scripted 400" in response.json()["error"]["message"]


async def test_an_upstream_that_does_not_answer_in_time_is_a_504(data_dir: Path) -> None:
    async with upstreams(["hang"]) as [up]:
        async with client_of(gateway([up.url], data_dir, retries=0,
                                     read_timeout_s=0.3)) as client:
            response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


async def test_ejected_replicas_answer_503_until_their_cooldown_ends(data_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    app = gateway([dead], data_dir, retries=0, breaker_failures=1, breaker_cooldown_s=0.5)
    async with client_of(app) as client:
        first = await client.post("/v1/chat/completions", json=chat())
        second = await client.post("/v1/chat/completions", json=chat())
        ready = await client.get("/ready")
        await asyncio.sleep(0.6)
        third = await client.post("/v1/chat/completions", json=chat())  # the half-open trial
    assert (first.status_code, first.json()["error"]["code"]) == (502, "upstream_error")
    assert (second.status_code, second.json()["error"]["code"]) == (503, "upstream_unavailable")
    assert second.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert ready.json()["engines"]["up"]["replicas_serving"] == 0
    assert third.status_code == 502


async def test_ready_follows_the_active_health_checks(data_dir: Path) -> None:
    async with upstreams([]) as [up]:
        up.healthy = False
        app = gateway([up.url], data_dir, health_interval_s=0.05)
        async with client_of(app) as client:
            assert (await client.get("/ready")).status_code == 503
            refused = await client.post("/v1/chat/completions", json=chat())
            assert refused.json()["error"]["code"] == "upstream_unavailable"
            up.healthy = True
            for _ in range(100):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            ready = await client.get("/ready")
            assert ready.status_code == 200
            assert ready.json()["engines"]["up"]["replicas_serving"] == 1
            assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_a_client_that_leaves_cancels_the_upstream_request(data_dir: Path) -> None:
    async with upstreams(["slow"]) as [up]:
        app = gateway([up.url], data_dir)
        async with live_server(app) as base, httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {KEY}"}) as client:
            async with client.stream("POST", "/v1/chat/completions",
                                     json=chat(stream=True)) as response:
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data: ") and '"."' in line:
                        break
            await asyncio.wait_for(up.cancelled.wait(), timeout=5)
            for _ in range(100):
                if remote(app).state().running == 0:
                    break
                await asyncio.sleep(0.02)
            assert remote(app).state().running == 0


async def test_every_request_has_its_ledger_row_with_the_upstream_usage(data_dir: Path
                                                                       ) -> None:
    async with upstreams([], ["drop"]) as [ok, dropping]:
        app = gateway([ok.url, dropping.url], data_dir, retries=0)
        replicas = remote(app).replicas
        async with client_of(app) as client:
            good = await client.post("/v1/chat/completions", json=chat(
                user_id=user_preferring(replicas, ok.url), max_tokens=9))
            cut = await client.post("/v1/chat/completions", json=chat(
                user_id=user_preferring(replicas, dropping.url), stream=True))
            rows = await usage_rows(app)
    assert good.status_code == 200 and cut.status_code == 200
    assert sse_json(cut.text)[-1]["error"]["code"] == "upstream_error"
    completed = rows[good.json()["id"]]
    assert (completed["status"], completed["prompt_tokens"], completed["completion_tokens"],
            completed["cached_tokens"]) == ("completed", 11, 2, 8)
    assert completed["user_id"] is not None and completed["ttft_s"] is not None
    [failed] = [r for r in rows.values() if r["request_id"] != good.json()["id"]]
    # Cut short: the estimated prompt (ceil(10 characters / 3)) and the pieces relayed.
    assert (failed["status"], failed["prompt_tokens"], failed["completion_tokens"]) == (
        "failed", 4, 2)


async def usage_rows(app: FastAPI) -> dict[str, dict[str, Any]]:
    """Every usage row in the store (the journal copied first), by request id."""
    tenancy = app.state.services.tenancy
    await tenancy.ledger.flush()
    async with tenancy.store.read() as conn:
        rows = (await conn.execute(select(usage))).mappings().all()
    return {row["request_id"]: dict(row) for row in rows}


async def test_replicas_at_their_in_flight_limit_answer_a_fast_503_overloaded(data_dir: Path
                                                                              ) -> None:
    async with upstreams(["slow"]) as [up]:
        app = gateway([up.url], data_dir, max_in_flight=1)
        async with live_server(app) as base, httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
            async with client.stream("POST", "/v1/chat/completions",
                                     json=chat(stream=True)) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and '"."' in line:
                        break
                refused = await client.post("/v1/chat/completions", json=chat())
                assert remote(app).state().running == 1
            error = refused.json()["error"]
            assert (refused.status_code, error["code"]) == (503, "server_overloaded")
            assert refused.headers["retry-after"] == "1"
            assert "max_in_flight" in error["message"]
            assert len(up.bodies) == 1  # the refused request never went upstream
