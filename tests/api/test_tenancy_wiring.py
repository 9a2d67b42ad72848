"""Tenancy on the chat path, on the scripted engine: one usage row per admitted request with the
status it ended in, limits and their headers, budgets, moderation of prompts and of output
(streamed too), and the token metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from seekserve.engines.base import (
    EngineFailure,
    EngineOverloaded,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    StartEvent,
    TokenEvent,
)
from seekserve.tenancy.money import format_amount
from seekserve.tenancy.schema import usage
from tests.api.conftest import (
    MAAS_MODEL,
    MODEL,
    REPLY,
    asgi_client,
    build_app,
    chat_body,
    live_server,
    sse_json,
)
from tests.fakes import FakeEngine

CHAT = "/v1/chat/completions"
MAAS_CHAT = "/v1/ai/maas-deepseek/chat/completions"
STATIC = "sk-static-key-for-wiring-tests"
ADMIN = "admin-key-for-wiring-tests"
# Long enough past the match for the guard (holding back what "forbidden phrase" needs) to
# flag it before the reply ends.
FLAGGED_REPLY = "The secret word is badword, and that is all I will ever say about it."
CACHED = 4        # prefix-cache hits the scripted engine reports
QUEUED_S = 0.25   # queue time it reports
# USD per million tokens; in nano-USD per token that is 1000 / 100 / 2000.
PRICING = {"input": "1", "cached_input": "0.1", "output": "2"}


class ScriptedEngine(FakeEngine):
    """The fake engine reporting what the real one does (a StartEvent with queue time and
    cache hits, the hits again at the end), optionally failing after `fail_after` tokens.

    `outcomes` says how each generation ended: `finished`, `closed` (its consumer stopped
    early) or `failed`."""

    def __init__(self, reply: str = REPLY, *, delay: float = 0.0,
                 fail_after: int | None = None) -> None:
        super().__init__(reply, delay=delay)
        self.fail_after = fail_after
        self.outcomes: list[str] = []

    async def generate(self, request: GenerationRequest
                       ) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        self.active += 1
        outcome = "closed"
        try:
            yield StartEvent(cached_tokens=CACHED, queued_s=QUEUED_S)
            tokens = self.tokenizer.encode(self.reply)
            for i, token in enumerate(tokens):
                if i == self.fail_after:
                    outcome = "failed"
                    raise EngineFailure("llama_decode returned -3")
                if i >= request.max_tokens:
                    outcome = "finished"
                    yield FinishEvent("length", len(request.prompt), i, CACHED, QUEUED_S)
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield TokenEvent(token)
            outcome = "finished"
            yield FinishEvent("eos", len(request.prompt), len(tokens) + 1, CACHED, QUEUED_S)
        finally:
            self.active -= 1
            self.outcomes.append(outcome)


class OverloadedEngine(FakeEngine):
    """Refuses every request at submission, as a full queue does."""

    def generate(self, request: GenerationRequest) -> Any:  # type: ignore[override]
        self.requests.append(request)
        raise EngineOverloaded("128 requests are queued", retry_after_s=2)


def settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A static key, an admin key, priced models, a moderation rule set, a store in tmp_path."""
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "api_keys": [STATIC],
        "admin_key": ADMIN,
        "models": [{"id": MODEL, "aliases": [MAAS_MODEL], "pricing": PRICING,
                    "thinking": {"default": "disabled"}}],
        "store": {"journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05},
        "moderation": {"rules": {"words": ["forbidden phrase", "badword"]}},
    }
    base.update(overrides)
    return base


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(client: httpx.AsyncClient, **limits: Any) -> dict[str, Any]:
    response = await client.post("/admin/keys", json={"name": "wiring", **limits},
                                 headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def usage_rows(app: FastAPI) -> dict[str, dict[str, Any]]:
    """Every usage row in the store (the journal copied first), by request id."""
    tenancy = app.state.services.tenancy
    await tenancy.ledger.flush()
    async with tenancy.store.read() as conn:
        rows = (await conn.execute(select(usage))).mappings().all()
    return {row["request_id"]: dict(row) for row in rows}


def cost_nanos(prompt: int, cached: int, completion: int) -> int:
    return (prompt - cached) * 1000 + cached * 100 + completion * 2000


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition `text` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def wait_until(predicate: Callable[[], Any], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(await predicate())


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def app(engine: ScriptedEngine, tmp_path: Path) -> FastAPI:
    return build_app(engine, **settings(tmp_path))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


# ----- one row per admitted request, with the status it ended in -----


async def test_a_completed_request_leaves_one_row_with_its_usage_timing_and_cost(
        app: FastAPI, client: httpx.AsyncClient) -> None:
    key = await create_key(client)
    response = await client.post(CHAT, json=chat_body(user_id="alice"),
                                 headers=bearer(key["key"]))
    assert response.status_code == 200, response.text
    body = response.json()
    rows = await usage_rows(app)
    assert list(rows) == [body["id"]]
    row = rows[body["id"]]
    prompt = body["usage"]["prompt_tokens"]
    completion = len(REPLY) + 1  # every byte, then end of sequence
    assert body["usage"]["completion_tokens"] == completion
    assert {k: row[k] for k in ("key_id", "user_id", "model", "deployment", "route", "status",
                                "prompt_tokens", "completion_tokens", "reasoning_tokens",
                                "cached_tokens", "cache_hit_tokens", "cache_miss_tokens",
                                "queue_s", "cost_nanos")} == {
        "key_id": key["id"], "user_id": "alice", "model": MODEL, "deployment": "deepseek",
        "route": CHAT, "status": "completed", "prompt_tokens": prompt,
        "completion_tokens": completion, "reasoning_tokens": 0, "cached_tokens": CACHED,
        "cache_hit_tokens": CACHED, "cache_miss_tokens": prompt - CACHED,
        "queue_s": QUEUED_S, "cost_nanos": cost_nanos(prompt, CACHED, completion)}
    assert 0 <= row["ttft_s"] <= row["total_s"] < 5


async def test_a_static_key_and_an_endpoint_route_are_recorded_too(
        app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.post(MAAS_CHAT, json=chat_body(model=MAAS_MODEL),
                                 headers=bearer(STATIC))
    assert response.status_code == 200, response.text
    row = (await usage_rows(app))[response.json()["id"]]
    assert (row["key_id"], row["model"], row["deployment"], row["route"], row["status"]) == (
        None, MODEL, "maas-deepseek", MAAS_CHAT, "completed")
    # Priced although the key has no budget.
    assert row["cost_nanos"] == cost_nanos(row["prompt_tokens"], CACHED, len(REPLY) + 1) > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_reached_is_recorded_as_length(
        app: FastAPI, client: httpx.AsyncClient, stream: bool) -> None:
    response = await client.post(CHAT, json=chat_body(max_tokens=5, stream=stream),
                                 headers=bearer(STATIC))
    assert response.status_code == 200
    rows = await usage_rows(app)
    [row] = rows.values()
    assert (row["status"], row["completion_tokens"]) == ("length", 5)


async def test_a_stop_string_is_a_completed_request_counting_the_tokens_made(
        app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(stop=["fake"]), headers=bearer(STATIC))
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Hello from the ", "stop")
    [row] = (await usage_rows(app)).values()
    assert (row["status"], row["completion_tokens"]) == ("completed", len("Hello from the fake"))


async def test_a_client_that_leaves_a_stream_leaves_a_cancelled_row_and_its_slot(
        tmp_path: Path) -> None:
    engine = ScriptedEngine("word " * 400, delay=0.02)  # 2000 tokens: 40 s unless stopped
    app = build_app(engine, **settings(tmp_path))
    async with live_server(app) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        key = await create_key(http, max_concurrency=1)
        async with http.stream("POST", CHAT, json=chat_body(stream=True, user_id="bob"),
                               headers=bearer(key["key"])) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 5:
                    break

        async def cancelled_row() -> dict[str, Any] | None:
            rows = await usage_rows(app)
            return next(iter(rows.values()), None)

        assert await wait_until(cancelled_row, within=3.0), "no usage row after a disconnect"
        row = await cancelled_row()
        assert row is not None
        assert (row["status"], row["key_id"], row["user_id"]) == ("cancelled", key["id"], "bob")
        # Charged for what was generated before the client left, no more.
        assert 4 <= row["completion_tokens"] < 2000
        assert row["cost_nanos"] == cost_nanos(row["prompt_tokens"], CACHED,
                                               row["completion_tokens"])
        assert engine.outcomes == ["closed"]
        # The concurrency slot came back: the key (max_concurrency 1) is served again.
        engine.reply = "ok"
        again = await http.post(CHAT, json=chat_body(), headers=bearer(key["key"]))
        assert again.status_code == 200, again.text


async def test_a_client_that_leaves_a_plain_request_leaves_a_cancelled_row(
        tmp_path: Path) -> None:
    engine = ScriptedEngine("word " * 400, delay=0.02)
    app = build_app(engine, **settings(tmp_path))
    async with live_server(app) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        request = asyncio.create_task(http.post(CHAT, json=chat_body(), headers=bearer(STATIC)))

        async def generating() -> bool:
            return engine.active == 1

        assert await wait_until(generating, within=3.0)
        await asyncio.sleep(0.1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

        async def rows() -> dict[str, dict[str, Any]]:
            return await usage_rows(app)

        assert await wait_until(rows, within=3.0)
        [row] = (await rows()).values()
        assert row["status"] == "cancelled"
        assert row["completion_tokens"] >= 1
        assert engine.outcomes == ["closed"]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_engine_failure_is_recorded_as_failed(tmp_path: Path, stream: bool) -> None:
    engine = ScriptedEngine(fail_after=3)
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app) as client:
        response = await client.post(CHAT, json=chat_body(stream=stream),
                                     headers=bearer(STATIC))
        if stream:
            assert response.status_code == 200
            assert sse_json(response.text)[-1]["error"]["code"] == "engine_error"
        else:
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "engine_error"
        [row] = (await usage_rows(app)).values()
    assert (row["status"], row["completion_tokens"], row["cached_tokens"]) == ("failed", 3,
                                                                                CACHED)


async def test_a_full_queue_after_admission_is_failed_and_gives_the_limits_back(
        tmp_path: Path) -> None:
    app = build_app(OverloadedEngine(), **settings(tmp_path))
    async with asgi_client(app) as client:
        key = await create_key(client, max_concurrency=1, rpm=10)
        for remaining in ("9", "8"):  # a held slot would turn the second into a 429
            response = await client.post(CHAT, json=chat_body(), headers=bearer(key["key"]))
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "server_overloaded"
            assert response.headers["retry-after"] == "2"
            assert response.headers["x-ratelimit-remaining-requests"] == remaining
        rows = await usage_rows(app)
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"], r["cost_nanos"])
            for r in rows.values()] == [("failed", 0, 0, 0)] * 2


# ----- limits -----


async def test_over_the_rpm_limit_is_429_with_retry_after_and_headers(
        app: FastAPI, client: httpx.AsyncClient) -> None:
    key = await create_key(client, rpm=2)
    for remaining in ("1", "0"):
        ok = await client.post(CHAT, json=chat_body(), headers=bearer(key["key"]))
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        assert ok.headers["x-ratelimit-remaining-requests"] == remaining
    refused = await client.post(CHAT, json=chat_body(), headers=bearer(key["key"]))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert len(await usage_rows(app)) == 2  # a refused request has no row
    metrics = (await client.get("/metrics")).text
    assert metric(metrics, "seekserve_ratelimit_rejections_total", reason="requests") == 1


async def test_static_keys_get_the_default_limits(engine: ScriptedEngine, tmp_path: Path
                                                  ) -> None:
    app = build_app(engine, **settings(tmp_path, ratelimit={"default_rpm": 1}))
    async with asgi_client(app) as client:
        assert (await client.post(CHAT, json=chat_body(), headers=bearer(STATIC))
                ).status_code == 200
        refused = await client.post(CHAT, json=chat_body(), headers=bearer(STATIC))
        assert refused.status_code == 429
        assert "retry-after" in refused.headers


async def test_a_streamed_answer_carries_the_ratelimit_headers(
        engine: ScriptedEngine, client: httpx.AsyncClient) -> None:
    key = await create_key(client, rpm=10, tpm=100_000)
    response = await client.post(CHAT, json=chat_body(stream=True, max_tokens=100),
                                 headers=bearer(key["key"]))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    prompt = len(engine.requests[-1].prompt)
    assert response.headers["x-ratelimit-limit-requests"] == "10"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    assert response.headers["x-ratelimit-limit-tokens"] == "100000"
    # Reserved at admission: the prompt plus max_tokens.
    assert response.headers["x-ratelimit-remaining-tokens"] == str(100_000 - prompt - 100)


async def test_tokens_per_minute_settle_to_what_was_used(client: httpx.AsyncClient) -> None:
    key = await create_key(client, tpm=10_000)
    first = await client.post(CHAT, json=chat_body(max_tokens=1000), headers=bearer(key["key"]))
    used = first.json()["usage"]["total_tokens"]
    prompt = first.json()["usage"]["prompt_tokens"]
    second = await client.post(CHAT, json=chat_body(max_tokens=1000), headers=bearer(key["key"]))
    # The first request's reservation (prompt + 1000) was settled to its real count.
    assert second.headers["x-ratelimit-remaining-tokens"] == str(
        10_000 - used - (prompt + 1000))


async def test_one_user_id_may_run_only_its_concurrency(tmp_path: Path) -> None:
    engine = ScriptedEngine(delay=0.02)  # about 0.6 s an answer
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app) as client:
        key = await create_key(client, max_user_concurrency=1)
        first = asyncio.create_task(client.post(CHAT, json=chat_body(user_id="u1"),
                                                headers=bearer(key["key"])))

        async def running() -> bool:
            return engine.active == 1

        assert await wait_until(running, within=2.0)
        same_user = await client.post(CHAT, json=chat_body(user_id="u1"),
                                      headers=bearer(key["key"]))
        other_user = await client.post(CHAT, json=chat_body(user_id="u2"),
                                       headers=bearer(key["key"]))
        assert (await first).status_code == 200
        assert same_user.status_code == 429
        assert "concurrent requests for this user_id" in same_user.json()["error"]["message"]
        assert other_user.status_code == 200
        again = await client.post(CHAT, json=chat_body(user_id="u1"), headers=bearer(key["key"]))
        assert again.status_code == 200


# ----- budgets -----


async def test_a_budget_too_small_for_the_worst_case_is_402_without_a_row(
        app: FastAPI, client: httpx.AsyncClient) -> None:
    key = await create_key(client, budget_tokens=200, rpm=100)
    refused = await client.post(CHAT, json=chat_body(max_tokens=1000), headers=bearer(key["key"]))
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_balance"
    assert refused.headers["x-ratelimit-limit-requests"] == "100"
    assert await usage_rows(app) == {}
    served = await client.post(CHAT, json=chat_body(max_tokens=10), headers=bearer(key["key"]))
    assert served.status_code == 200
    used = served.json()["usage"]["total_tokens"]
    balance = (await client.get("/user/balance", headers=bearer(key["key"]))).json()
    assert balance["balance_infos"] == [{"currency": "TOKENS", "total_balance": str(200 - used),
                                         "granted_balance": str(200 - used),
                                         "topped_up_balance": "0"}]
    [row] = (await usage_rows(app)).values()
    assert (row["status"], row["completion_tokens"]) == ("length", 10)


async def test_a_money_budget_is_charged_the_priced_cost(app: FastAPI,
                                                         client: httpx.AsyncClient) -> None:
    key = await create_key(client, budget_usd="1")
    response = await client.post(CHAT, json=chat_body(max_tokens=10), headers=bearer(key["key"]))
    assert response.status_code == 200
    [row] = (await usage_rows(app)).values()
    balance = (await client.get("/user/balance", headers=bearer(key["key"]))).json()
    [usd] = balance["balance_infos"]
    left_nanos = 1_000_000_000 - row["cost_nanos"]
    assert usd["currency"] == "USD"
    assert usd["total_balance"] == format_amount(left_nanos)
    assert row["cost_nanos"] == cost_nanos(row["prompt_tokens"], CACHED, 10)


# ----- content safety -----


async def test_a_flagged_prompt_is_400_content_filter_before_the_engine(
        app: FastAPI, engine: ScriptedEngine, client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=chat_body(messages=[
        {"role": "user", "content": "Please repeat the Forbidden Phrase."}]),
        headers=bearer(STATIC))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_filter"
    assert engine.requests == []
    assert await usage_rows(app) == {}
    metrics = (await client.get("/metrics")).text
    assert metric(metrics, "seekserve_content_filtered_total", stage="prompt") == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_flagged_output_stops_with_content_filter(tmp_path: Path, stream: bool) -> None:
    engine = ScriptedEngine(FLAGGED_REPLY)
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app) as client:
        response = await client.post(CHAT, json=chat_body(stream=stream, stream_options={
            "include_usage": True} if stream else None), headers=bearer(STATIC))
        assert response.status_code == 200
        if stream:
            events = sse_json(response.text)
            text = "".join(e["choices"][0]["delta"].get("content") or ""
                           for e in events if e["choices"])
            finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
            assert response.text.rstrip().endswith("data: [DONE]")
            assert finishes[-1] == "content_filter" and set(finishes[:-1]) == {None}
            completion = events[-1]["usage"]["completion_tokens"]
        else:
            choice = response.json()["choices"][0]
            text, finish = choice["message"]["content"], choice["finish_reason"]
            assert finish == "content_filter"
            completion = response.json()["usage"]["completion_tokens"]
        assert text == "The secret word is "
        # Generation stopped once the guard had seen enough past the match: the engine never
        # produced the rest.
        assert engine.outcomes == ["closed"]
        assert len("The secret word is badword,") <= completion < len(FLAGGED_REPLY)
        [row] = (await usage_rows(app)).values()
        assert (row["status"], row["completion_tokens"]) == ("filtered", completion)
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "seekserve_content_filtered_total", stage="output") == 1


async def test_the_maas_shape_reports_content_filter_natively(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(FLAGGED_REPLY), **settings(tmp_path))
    async with asgi_client(app) as client:
        response = await client.post(MAAS_CHAT, json=chat_body(model=MAAS_MODEL),
                                     headers=bearer(STATIC))
    choice = response.json()["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("content_filter",
                                                                         "content_filter")


# ----- metrics -----


async def test_metrics_count_the_tokens_and_time_the_tokens(app: FastAPI,
                                                            client: httpx.AsyncClient) -> None:
    bodies = []
    for stream in (False, True):
        response = await client.post(CHAT, json=chat_body(
            stream=stream, stream_options={"include_usage": True} if stream else None),
            headers=bearer(STATIC))
        bodies.append(response.json() if not stream else sse_json(response.text)[-1])
    metrics = (await client.get("/metrics")).text
    prompt = sum(b["usage"]["prompt_tokens"] for b in bodies)
    completion = sum(b["usage"]["completion_tokens"] for b in bodies)
    assert metric(metrics, "seekserve_prompt_tokens_total", model=MODEL) == prompt
    assert metric(metrics, "seekserve_completion_tokens_total", model=MODEL) == completion
    assert metric(metrics, "seekserve_cached_prompt_tokens_total", model=MODEL) == 2 * CACHED
    assert metric(metrics, "seekserve_time_to_first_token_seconds_count", model=MODEL) == 2
    # One gap between each two consecutive tokens of a request (the reply's bytes).
    assert metric(metrics, "seekserve_inter_token_latency_seconds_count", model=MODEL) == \
        2 * (len(REPLY) - 1)
    assert metric(metrics, "seekserve_requests_total", route=CHAT, model=MODEL,
                  status="200") == 2
    assert metric(metrics, "seekserve_prompt_cache_hit_ratio", model=MODEL) == \
        pytest.approx(2 * CACHED / prompt)
