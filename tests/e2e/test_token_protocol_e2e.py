"""The token protocol in real processes: a seekserve gateway with no model of its own runs the
chat layer (template, thinking budget, tool and JSON grammars, stop strings, logprobs) and has a
second seekserve generate from token ids over its vLLM-compatible /v1/completions. Checked
through the openai SDK against what the upstream's own embedded chat answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import API_KEY, Server, start_server, stop_server, usage_row
from tests.e2e.test_tenancy_e2e import eventually
from tests.e2e.test_tenancy_e2e import model_path as model_path  # the fixture
from tests.e2e.test_thinking_tools_json import CITIES, WEATHER, WEATHER_PARAMS

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
OFF = {"thinking": {"type": "disabled"}}
BUDGETS = {"low": 12, "high": 40, "max": 80}


@dataclass
class Pair:
    upstream: Server
    gateway: Server
    gateway_data: Path

    def completions_posts(self) -> int:
        return self.upstream.log().count('"path": "/v1/completions"')


@pytest.fixture(scope="module")
def pair(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    up_dir = tmp_path_factory.mktemp("token-upstream")
    upstream = start_server(
        {"server": {"host": "127.0.0.1"},
         "engines": {"embedded": {"model_path": str(model_path), "n_ctx": 4096,
                                  "max_running": 4, "prefix_cache_entries": 0}},
         "models": [{"id": MODEL, "engine": "embedded", "thinking": {"budgets": BUDGETS}}]},
        up_dir, env={"SEEKSERVE_DATA_DIR": str(up_dir / "data")})
    gw_dir = tmp_path_factory.mktemp("token-gateway")
    try:
        gateway = start_server(
            {"server": {"host": "127.0.0.1"},
             "engines": {"remote": {
                 "kind": "remote", "upstream": "seekserve", "protocol": "tokens",
                 "tokenizer": str(model_path), "max_sequence_tokens": 4096,
                 "health_interval_s": 1,
                 "replicas": [{"base_url": upstream.base_url, "model": MODEL,
                               "api_key_env": "UPSTREAM_KEY"}]}},
             "models": [{"id": MODEL, "engine": "remote", "thinking": {"budgets": BUDGETS}}],
             "store": {"flush_interval_s": 0.1}},
            gw_dir, thinking=None,
            env={"SEEKSERVE_DATA_DIR": str(gw_dir / "data"), "UPSTREAM_KEY": API_KEY})
    except BaseException:
        stop_server(upstream)
        raise
    yield Pair(upstream, gateway, gw_dir / "data")
    stop_server(gateway)
    stop_server(upstream)


def ask(client: openai.OpenAI, content: str, **fields: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **fields)


def test_greedy_answers_are_the_embedded_engines_token_for_token(pair: Pair) -> None:
    via, direct = pair.gateway.client(), pair.upstream.client()
    for question in ("Name three colours.", "What is the capital of Peru?",
                     "Write one line of Python that prints hello."):
        fields = {"max_tokens": 24, "temperature": 0, "logprobs": True, "extra_body": OFF}
        a, b = ask(via, question, **fields), ask(direct, question, **fields)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.choices[0].finish_reason == b.choices[0].finish_reason
        assert a.usage.prompt_tokens == b.usage.prompt_tokens  # rendered here, counted here
        assert a.usage.completion_tokens == b.usage.completion_tokens
        tokens = [t.token for t in a.choices[0].logprobs.content]
        assert "".join(tokens) == a.choices[0].message.content
        assert [t.token for t in b.choices[0].logprobs.content] == tokens


def test_thinking_by_default_is_budgeted_across_segments(pair: Pair) -> None:
    before = pair.completions_posts()
    response = ask(pair.gateway.client(), "What is 12 + 30? Think it through.",
                   max_tokens=200, seed=5, extra_body={"thinking": {
                       "type": "enabled", "reasoning_effort": "high"}})
    message = response.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert isinstance(reasoning, str) and reasoning.strip()
    assert message.content and message.content.strip() and "</think>" not in message.content
    details = response.usage.completion_tokens_details
    assert 0 < details.reasoning_tokens <= BUDGETS["high"] + 6  # the close tag's tokens
    # A thinking segment (ended by its budget or its close tag), then an answer segment.
    # (The access log line is written as each request ends.)
    assert eventually(lambda: pair.completions_posts() - before >= 2, within=5)


def test_required_tool_calls_follow_their_schema(pair: Pair) -> None:
    client = pair.gateway.client()
    for i, city in enumerate(CITIES[:4]):
        # Unconstrained in number, the small model repeats its call up to the parallel cap.
        response = ask(client, f"What will the weather be in {city} this week?",
                       tools=[WEATHER], tool_choice="required", max_tokens=200,
                       parallel_tool_calls=i % 2 == 0, extra_body=OFF)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert calls and calls[0].function.name == "get_weather"
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMS)


def test_a_streamed_tool_call_adds_up_and_json_mode_parses(pair: Pair) -> None:
    client = pair.gateway.client()
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Oslo for 3 days?"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=80, stream=True, stream_options={"include_usage": True}, extra_body=OFF))
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].id and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMS)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    for topic in ("a cat", "a city", "a book"):
        response = ask(client, f"Describe {topic} as a JSON object.", max_tokens=200,
                       response_format={"type": "json_object"}, extra_body=OFF)
        assert isinstance(json.loads(response.choices[0].message.content), dict)
        assert response.choices[0].finish_reason == "stop"


def test_stop_strings_are_ours_with_matched_stop(pair: Pair) -> None:
    response = pair.gateway.http().post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Count from 1 to 10, with "
                                      "commas."}],
        "max_tokens": 60, "temperature": 0, "stop": ["5"], **OFF})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == "5"
    assert "5" not in choice["message"]["content"] and "4" in choice["message"]["content"]


def test_a_client_leaving_a_stream_stops_the_upstream_and_leaves_a_row(pair: Pair) -> None:
    body = {"model": MODEL, "stream": True, "max_tokens": 600, "user_id": "leaver",
            "messages": [{"role": "user", "content": "Write a long poem about the sea."}],
            **OFF}
    with pair.gateway.http() as http, http.stream("POST", "/v1/chat/completions",
                                                  json=body) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                seen += 1
                if seen == 5:
                    break
        assert seen == 5
    with pair.upstream.http() as http:
        freed = eventually(lambda: http.get("/ready").json()["engines"]["embedded"][
            "running"] == 0, within=3)
    assert freed, "the upstream kept generating after the gateway's client left"

    usage = eventually(lambda: usage_row(pair.gateway_data, "leaver"), within=10)
    assert usage is not None and usage["status"] == "cancelled"
    assert usage["completion_tokens"] >= 3
