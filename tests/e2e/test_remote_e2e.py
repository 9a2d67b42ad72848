"""Remote engines in real processes on loopback: llama-cpp-python's own server and a second
seekserve as upstreams of a seekserve gateway (through the openai SDK), then two upstream
replicas behind two gateway replicas sharing PostgreSQL and Redis: affinity, an upstream killed
mid-stream, limits across gateways and the ledger."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest

from tests.e2e import test_tenancy_e2e as tenancy
from tests.e2e.conftest import (
    API_KEY,
    REPO,
    Server,
    start_server,
    stop_server,
    wait_until_up,
)
from tests.e2e.test_tenancy_e2e import ADMIN, MODEL, PG, create_key, eventually, sdk
from tests.ports import free_port

pytestmark = pytest.mark.model

model_path = tenancy.model_path
pg_database = tenancy.pg_database
redis_prefix = tenancy.redis_prefix

QUESTION = [{"role": "user", "content": "Write a long poem about the sea."}]
NO_THINKING = {"thinking": {"type": "disabled"}}


@dataclass
class Upstream:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def chat_requests(self) -> int:
        """Chat requests this llama_cpp.server answered (its uvicorn access log)."""
        return self.log_path.read_text(errors="replace").count("POST /v1/chat/completions")


def start_llama_server(model: Path, workdir: Path, timeout: float = 180) -> Upstream:
    port = free_port()
    log_path = workdir / f"llama-server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             # Its default interrupts a running request when another arrives.
             "--interrupt_requests", "False"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    upstream = Upstream(f"http://127.0.0.1:{port}", process, log_path)
    wait_until_up(process, f"{upstream.url}/v1/models", log_path, timeout=timeout)
    return upstream


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gateway_config(upstream: str, urls: list[str], **sections: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1"},
        "engines": {"remote": {
            "kind": "remote", "upstream": upstream, "health_interval_s": 1,
            "replicas": [{"base_url": u, "model": "local", "api_key_env": "UPSTREAM_KEY"}
                         for u in urls]}},
        "models": [{"id": MODEL, "engine": "remote"}],
        "store": {"flush_interval_s": 0.1},
        **sections,
    }


def start_gateway(config: dict[str, Any], workdir: Path) -> Server:
    return start_server(config, workdir, env={"SEEKSERVE_DATA_DIR": str(workdir / "data"),
                                              "UPSTREAM_KEY": API_KEY})


@pytest.fixture(scope="module")
def llama_upstreams(model_path: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[list[Upstream]]:
    workdir = tmp_path_factory.mktemp("llama-servers")
    started: list[Upstream] = []
    try:
        for _ in range(2):
            started.append(start_llama_server(model_path, workdir))
        yield started
    finally:
        for upstream in started:
            stop_process(upstream.process)


# ----- (a) llama-cpp-python's server as a remote engine -----

def test_llama_cpp_python_server_through_a_gateway(llama_upstreams: list[Upstream],
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    upstream = llama_upstreams[0]
    gateway = start_gateway(gateway_config("llamacpp", [upstream.url]),
                            tmp_path_factory.mktemp("gateway-llama"))
    try:
        client = gateway.client()
        whole = client.chat.completions.create(model=MODEL, messages=QUESTION,  # type: ignore[arg-type]
                                               max_tokens=8, temperature=0)
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True}))
    finally:
        stop_server(gateway)
    direct = httpx.post(f"{upstream.url}/v1/chat/completions", timeout=120, json={
        "messages": QUESTION, "max_tokens": 1}).json()

    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    # A non-streamed answer carries the upstream's own counts.
    assert whole.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert whole.usage.completion_tokens == 8
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None
    # llama-cpp-python streams no usage: the prompt is estimated (ceil(32 characters / 3))
    # and each streamed piece counts as one token.
    assert usage.prompt_tokens == 11
    assert 1 <= usage.completion_tokens <= 8


# ----- (b) a second seekserve as the upstream -----

@pytest.fixture(scope="module")
def seekserve_upstream(model_path: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("upstream-seekserve")
    config = {"server": {"host": "127.0.0.1"},
              "engines": {"embedded": {"model_path": str(model_path), "n_ctx": 2048,
                                       "max_running": 2}},
              "models": [{"id": MODEL, "engine": "embedded"}]}
    srv = start_server(config, workdir, env={"SEEKSERVE_DATA_DIR": str(workdir / "data")})
    yield srv
    stop_server(srv)


GREEDY = {"model": MODEL, "messages": QUESTION, "max_tokens": 12, "temperature": 0,
          "thinking": {"type": "disabled"}}


def assert_greedy_answer_as_direct(gateway: Server, upstream: Server, user: str) -> None:
    """A greedy answer without thinking through the gateway is the upstream's own, token for
    token (on a cold cache each: different user_ids), with the same prompt count."""
    via = gateway.http().post("/v1/chat/completions", json={**GREEDY, "user_id": user})
    direct = upstream.http().post("/v1/chat/completions",
                                  json={**GREEDY, "user_id": f"direct-{uuid.uuid4().hex}"})
    assert via.status_code == 200, via.text
    assert direct.status_code == 200, direct.text
    ours, theirs = via.json()["choices"][0], direct.json()["choices"][0]
    assert ours["message"]["content"] == theirs["message"]["content"]
    assert not ours["message"].get("reasoning_content")
    assert (ours["finish_reason"], via.json()["usage"]["prompt_tokens"]) == (
        theirs["finish_reason"], direct.json()["usage"]["prompt_tokens"])


def test_a_seekserve_upstream_gets_thinking_and_answers_as_if_called_directly(
        seekserve_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = gateway_config("seekserve", [seekserve_upstream.base_url])
    config["engines"]["remote"]["replicas"][0]["model"] = MODEL
    gateway = start_gateway(config, tmp_path_factory.mktemp("gateway-seekserve"))
    body = GREEDY
    try:
        assert_greedy_answer_as_direct(gateway, seekserve_upstream, "via-gateway")
        # Thinking on (where temperature has no effect, so no text to compare): the reasoning
        # comes back apart, and so does its count.
        thought = gateway.http().post("/v1/chat/completions", json={
            **body, "thinking": {"type": "enabled"}, "user_id": "via-gateway"})
        assert thought.status_code == 200, thought.text
        assert thought.json()["choices"][0]["message"]["reasoning_content"]
        assert thought.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
        stream = gateway.client().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, extra_body=NO_THINKING)
        streamed = list(stream)[-1].usage
        assert streamed is not None and streamed.completion_tokens == 4
    finally:
        stop_server(gateway)
    # The upstream saw an isolation key derived from (our key, user_id), never the user_id.
    log = seekserve_upstream.log()
    assert '"user_id": "u-' in log or '"user_id":"u-' in log
    assert "via-gateway" not in log


def test_a_responses_upstream_serves_chat_and_responses(
        seekserve_upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`upstream: responses` speaks the stateless Responses API to the upstream (here a
    seekserve's /v1/responses): chat completions and the Responses route answer as the
    upstream does when called directly."""
    config = gateway_config("responses", [seekserve_upstream.v1])
    config["engines"]["remote"]["replicas"][0]["model"] = MODEL
    gateway = start_gateway(config, tmp_path_factory.mktemp("gateway-responses"))
    try:
        assert_greedy_answer_as_direct(gateway, seekserve_upstream, "via-r")
        # The Responses route on the gateway, through the openai SDK, as the upstream's own.
        ask = {"model": MODEL, "input": "Name three colours.", "max_output_tokens": 10,
               "temperature": 0, "reasoning": {"effort": "none"}}
        mine = gateway.client().responses.create(**ask, user="via-r")  # type: ignore[call-overload]
        own = seekserve_upstream.client().responses.create(**ask, user="direct-r2")  # type: ignore[call-overload]
        assert mine.output_text == own.output_text and mine.output_text
        assert (mine.status, mine.incomplete_details and mine.incomplete_details.reason) == (
            own.status, own.incomplete_details and own.incomplete_details.reason)
        assert mine.usage is not None and own.usage is not None
        assert mine.usage.input_tokens == own.usage.input_tokens
        # Reasoning streamed back from the upstream's reasoning items, with its count.
        stream = gateway.client().chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=24, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
            extra_body={"thinking": {"type": "enabled"}, "reasoning_effort": "high"})
        chunks = list(stream)
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                            for c in chunks if c.choices)
        assert reasoning.strip()
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == 24
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens > 0
        # A required tool call: the upstream decodes it under its grammar, it arrives whole
        # (one call: parallel_tool_calls goes up too; the small model repeats calls otherwise).
        called = gateway.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo?"}],
            max_tokens=60, tool_choice="required", parallel_tool_calls=False,
            extra_body=NO_THINKING,
            tools=[{"type": "function", "function": {
                "name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"], "additionalProperties": False}}}])
        [call] = called.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
        assert called.choices[0].finish_reason == "tool_calls"
    finally:
        stop_server(gateway)
    log = seekserve_upstream.log()
    assert log.count('"path": "/v1/responses"') >= 4
    assert "via-r" not in log


# ----- (c) two upstream replicas, two gateway replicas, PostgreSQL and Redis -----

@pytest.fixture(scope="module")
def gateways(llama_upstreams: list[Upstream], pg_database: str, redis_prefix: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    servers: list[Server] = []
    try:
        for name in ("gateway-a", "gateway-b"):
            workdir = tmp_path_factory.mktemp(name)
            config = gateway_config(
                "llamacpp", [u.url for u in llama_upstreams], admin_key=ADMIN,
                store={"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}",
                       "journal_dir": str(workdir / "journal"), "flush_interval_s": 0.1},
                ratelimit={"backend": "redis", "redis_prefix": redis_prefix})
            servers.append(start_gateway(config, workdir))
        yield servers
    finally:
        for srv in servers:
            stop_server(srv)


def pg_rows(database: str, key_id: str) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database=database, timeout=5, **PG)  # type: ignore[arg-type]
        try:
            rows = await conn.fetch("SELECT * FROM usage WHERE key_id = $1", key_id)
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    return asyncio.run(fetch())


def test_affinity_failover_limits_and_ledger_across_gateways(
        gateways: list[Server], llama_upstreams: list[Upstream], pg_database: str) -> None:
    a, b = gateways
    key = create_key(a, rpm=6)
    alice = {"user_id": "alice"}

    def ask(gateway: Server, user: dict[str, str]) -> openai.types.chat.ChatCompletion:
        return sdk(gateway, key["key"]).chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, temperature=0,  # type: ignore[arg-type]
            extra_body=user)

    before = [u.chat_requests() for u in llama_upstreams]
    ids = [ask(g, alice).id for g in (a, a, b)]
    served = [u.chat_requests() - n for u, n in zip(llama_upstreams, before, strict=True)]
    assert sorted(served) == [0, 3], f"alice was spread over the upstreams: {served}"
    home = llama_upstreams[served.index(3)]
    other = llama_upstreams[served.index(0)]

    # Her replica dies in the middle of her stream: she gets an in-band error.
    stream = sdk(b, key["key"]).chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, stream=True,  # type: ignore[arg-type]
        extra_body=alice)
    pieces = iter(stream)
    first = next(pieces)
    while not (first.choices and first.choices[0].delta.content):
        first = next(pieces)
    ids.append(first.id)
    home.process.send_signal(signal.SIGKILL)
    home.process.wait()
    with pytest.raises(openai.APIError) as cut:
        for _ in pieces:
            pass
    assert "upstream" in str(cut.value)

    # Her next request goes to the other replica, through either gateway.
    served_before = other.chat_requests()
    ids.append(ask(a, alice).id)
    ids.append(ask(b, {"user_id": "bob"}).id)
    assert other.chat_requests() - served_before == 2
    # rpm 6 held across both gateways (through Redis): the seventh is refused.
    with pytest.raises(openai.RateLimitError):
        ask(a, {"user_id": "carol"})

    def all_rows() -> list[dict[str, Any]] | None:
        rows = pg_rows(pg_database, key["id"])
        return rows if len(rows) == 6 else None

    rows = eventually(all_rows, within=10)
    assert rows is not None, "not every admitted request has its ledger row"
    by_id = {r["request_id"]: r for r in rows}
    assert set(by_id) == set(ids)
    assert by_id[ids[3]]["status"] == "failed"
    assert {by_id[i]["status"] for i in ids if i != ids[3]} <= {"length", "completed"}
    assert {by_id[i]["user_id"] for i in ids[:5]} == {"alice"}
    assert all(by_id[i]["completion_tokens"] == 4 for i in ids if i != ids[3])
