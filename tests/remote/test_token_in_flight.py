"""The per-replica in-flight bound (`max_in_flight` of a remote engine) on the token protocol:
with every replica at its limit, one more request is a fast 503 server_overloaded with
Retry-After, in the caller's protocol, and never reaches an upstream. (The chat protocol's
is in test_passthrough.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from seekserve.app import create_app, default_model_path
from seekserve.engines.base import EngineOverloaded, GenerationRequest, SamplingParams
from seekserve.engines.remote.tokens import RemoteTokenEngine
from seekserve.settings import RemoteEngineSettings, Settings, default_data_dir
from tests.api.conftest import live_server
from tests.remote.fake_upstream import FakeUpstream, serving

KEY = "sk-token-in-flight"
MODEL = "tok-model"


def engine_settings(urls: list[str], max_in_flight: int) -> dict[str, Any]:
    return {"kind": "remote", "upstream": "vllm", "protocol": "tokens",
            "max_in_flight": max_in_flight, "health_interval_s": 0, "retries": 0,
            "replicas": [{"base_url": u, "model": "up-model"} for u in urls]}


def token_engine(urls: list[str], max_in_flight: int) -> RemoteTokenEngine:
    settings = RemoteEngineSettings.model_validate(engine_settings(urls, max_in_flight))
    return RemoteTokenEngine("up", settings, default_model_path(default_data_dir(),
                                                                progress=False))


def gateway(urls: list[str], data_dir: Path, max_in_flight: int) -> FastAPI:
    settings = Settings.load(None, data_dir=data_dir, api_keys=[KEY],
                             engines={"up": engine_settings(urls, max_in_flight)},
                             models=[{"id": MODEL, "engine": "up",
                                      "thinking": {"default": "disabled"}}])
    # Built here: loading the vocabulary is not part of the server's start.
    return create_app(settings, {"up": token_engine(urls, max_in_flight)})


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 150, **fields}


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.01)


async def test_every_replica_at_its_limit_is_a_fast_503(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        ups = [await stack.enter_async_context(serving(FakeUpstream(["hold"])))
               for _ in range(2)]
        app = gateway([u.url for u in ups], tmp_path / "data", max_in_flight=1)
        base = await stack.enter_async_context(live_server(app))
        client = await stack.enter_async_context(httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60))
        engine = app.state.services.engines["up"]
        # Two requests the upstreams hold: whichever replica each prefers, both end up busy.
        held = [asyncio.create_task(client.post("/v1/chat/completions",
                                                json=chat(user_id=user)))
                for user in ("alice", "bob")]
        await until(lambda: [r.in_flight for r in engine.pool.replicas] == [1, 1])

        refused = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("server_overloaded", "server_error")
        assert "max_in_flight" in error["message"]
        assert refused.headers["retry-after"] == "1"
        completion = await client.post("/v1/completions", json={
            "model": MODEL, "prompt": "Hello", "max_tokens": 5})
        assert completion.status_code == 503
        assert completion.json()["error"]["code"] == "server_overloaded"
        assert sum(len(u.bodies) for u in ups) == 2  # the refused ones reached no upstream

        for up in ups:
            up.release.set()
        answers = await asyncio.gather(*held)
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.json()["choices"][0]["message"]["content"] for a in answers] == ["Hello"] * 2
        await until(lambda: engine.pool.in_flight == 0)
        again = await client.post("/v1/chat/completions", json=chat())
        assert again.status_code == 200, again.text


def test_the_engine_refuses_before_anything_is_sent() -> None:
    engine = token_engine(["http://up-a:8000", "http://up-b:8000"], 2)
    request = GenerationRequest("r1", [1, 2, 3], 5, SamplingParams(temperature=0.0))
    a, b = engine.pool.replicas
    a.in_flight = b.in_flight = 2
    with pytest.raises(EngineOverloaded) as refused:
        engine.generate(request)
    assert refused.value.retry_after_s == 1
    assert "limit of 2 requests in flight" in str(refused.value)
    b.in_flight = 1
    engine.generate(request)  # one replica has room: accepted (nothing sent until read)
    b.in_flight = 2
    b.healthy = False  # an unhealthy replica is not waited for: the serving one is full
    with pytest.raises(EngineOverloaded):
        engine.generate(request)

