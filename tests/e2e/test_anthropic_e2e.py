"""The Anthropic Messages API on the real default model in a real server process, through the
official `anthropic` SDK (base_url `.../anthropic`, the key sent as x-api-key) and LangChain's
ChatAnthropic: plain, system, multi-turn, stop sequences, max_tokens, the SDK's stream helper,
tools (any / a named tool, inputs valid against the schema), a tool round trip, thinking
blocks passed back, count_tokens, claude-* names, cache isolation by metadata.user_id, the
ledger, and 401 / 429 / 529 through the SDK's own exception classes."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from seekserve.engines.default_model import DEFAULT_MODEL, ensure_model
from seekserve.settings import default_data_dir
from tests.e2e.conftest import API_KEY, Server, start_server, stop_server
from tests.e2e.test_tenancy_e2e import eventually
from tests.e2e.tools import (
    CITIES,
    TIME_DESCRIPTION,
    TIME_PARAMS,
    WEATHER_DESCRIPTION,
    WEATHER_PARAMS,
)

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
ADMIN = "sk-e2e-anthropic-admin"
WEATHER_SCHEMA = WEATHER_PARAMS
WEATHER = {"name": "get_weather", "description": WEATHER_DESCRIPTION,
           "input_schema": WEATHER_SCHEMA}
TIME = {"name": "get_time", "description": TIME_DESCRIPTION, "input_schema": TIME_PARAMS}
# This SDK version has no `temperature` parameter; the API still takes it.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
COUNTING = "Count from 1 to 10 in digits, separated by commas and spaces."


@pytest.fixture(scope="module")
def model_path() -> Path:
    return ensure_model(DEFAULT_MODEL, default_data_dir() / "models", progress=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Server]:
    """The default model with small thinking budgets, an admin key for managed keys, and a
    data dir of its own (its ledger is read back)."""
    data_dir = tmp_path_factory.mktemp("anthropic-data")
    config = {
        "admin_key": ADMIN,
        "engines": {"embedded": {"model_path": str(model_path), "n_ctx": 4096,
                                 "max_running": 8}},
        "models": [{"id": MODEL, "thinking": {"budgets": {"low": 12, "high": 40, "max": 80}}}],
        "store": {"flush_interval_s": 0.1},
    }
    srv = start_server(config, tmp_path_factory.mktemp("anthropic"),
                       env={"SEEKSERVE_DATA_DIR": str(data_dir)})
    srv.data_dir = data_dir  # type: ignore[attr-defined]
    yield srv
    stop_server(srv)


def create_key(server: Server, **limits: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.base_url}/admin/keys", json={"name": "anthropic", **limits},
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    return key


@pytest.fixture(scope="module")
def managed(server: Server) -> dict[str, Any]:
    return create_key(server)


def sdk(server: Server, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{server.base_url}/anthropic", api_key=key,
                               max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(server: Server, managed: dict[str, Any]) -> anthropic.Anthropic:
    """The SDK with a managed key, sent as x-api-key (the SDK's own header)."""
    return sdk(server, managed["key"])


def fresh_user() -> str:
    """A user id of its own: a request under it has no prefix-cache hits."""
    return "u-" + secrets.token_hex(6)


def ledger_row(server: Server, request_id: str) -> dict[str, Any] | None:
    path = server.data_dir / "seekserve.db"  # type: ignore[attr-defined]
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM usage WHERE request_id = ?", (request_id,)).fetchone()
    return dict(row) if row else None


def text_of(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def test_a_plain_message_with_a_system_prompt_is_in_the_ledger(
        server: Server, client: anthropic.Anthropic, managed: dict[str, Any]) -> None:
    user = fresh_user()
    message = client.messages.create(
        model=MODEL, max_tokens=24, **GREEDY, system="You answer in one short sentence.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        metadata={"user_id": user})
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == MODEL
    assert "Paris" in text_of(message)
    assert message.stop_reason in ("end_turn", "max_tokens")
    usage = message.usage
    assert usage.input_tokens > 10 and 0 < usage.output_tokens <= 24
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (0, 0)
    row = eventually(lambda: ledger_row(server, message.id), within=10)
    assert (row["route"], row["user_id"], row["key_id"], row["status"]) == (
        "/anthropic/v1/messages", user, managed["id"],
        "completed" if message.stop_reason == "end_turn" else "length")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage.input_tokens, usage.output_tokens)


def test_a_multi_turn_conversation_continues(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL, max_tokens=16, **GREEDY,
        messages=[{"role": "user", "content": "My name is Zorbulon. Say hi to me."}])
    second = client.messages.create(
        model=MODEL, max_tokens=16, **GREEDY,
        messages=[{"role": "user", "content": "My name is Zorbulon. Say hi to me."},
                  {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                  {"role": "user", "content": "What is my name? Answer with the name only."}])
    assert "Zorbulon" in text_of(second)
    prompt = second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0)
    assert prompt > first.usage.input_tokens + first.usage.output_tokens


def test_stop_sequences_and_max_tokens_set_the_stop_reason(client: anthropic.Anthropic) -> None:
    stopped = client.messages.create(model=MODEL, max_tokens=60, **GREEDY,
                                     stop_sequences=["5"],
                                     messages=[{"role": "user", "content": COUNTING}])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "5")
    assert text_of(stopped).rstrip(", ").endswith("4") and "5" not in text_of(stopped)
    cut = client.messages.create(model=MODEL, max_tokens=3,
                                 messages=[{"role": "user", "content": COUNTING}])
    assert (cut.stop_reason, cut.stop_sequence, cut.usage.output_tokens) == ("max_tokens", None, 3)


def test_the_sdk_stream_helper_builds_the_same_message(client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": MODEL, "max_tokens": 20, **GREEDY,
        "messages": [{"role": "user", "content": "List three primary colours."}]}
    whole = client.messages.create(**request, metadata={"user_id": fresh_user()})
    texts = []
    with client.messages.stream(**request, metadata={"user_id": fresh_user()}) as stream:
        for text in stream.text_stream:
            texts.append(text)
        built = stream.get_final_message()
    assert len(texts) > 3
    assert "".join(texts) == text_of(built)
    assert built.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})


def _tool_call(client: anthropic.Anthropic, city: str) -> Any:
    """Half the cities with tool_choice any, half with the named tool."""
    named = CITIES.index(city) % 2 == 1
    # One call per answer: the 0.5B model otherwise repeats calls up to max_tokens.
    choice: Any = ({"type": "tool", "name": "get_weather"} if named else {"type": "any"}) | {
        "disable_parallel_tool_use": True}
    message = client.messages.create(
        model=MODEL, max_tokens=80, tools=[WEATHER, TIME], tool_choice=choice,  # type: ignore[list-item]
        messages=[{"role": "user", "content": f"What will the weather be in {city} for the "
                                              "next 3 days?"}])
    assert message.stop_reason == "tool_use"
    calls = [b for b in message.content if b.type == "tool_use"]
    assert calls
    assert len(calls) == 1
    if named:
        assert calls[0].name == "get_weather"
    return calls


def test_tool_use_inputs_validate_against_the_schema_10_of_10(
        client: anthropic.Anthropic) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda city: _tool_call(client, city), CITIES[:10]))
    assert len(results) == 10
    for calls in results:
        for call in calls:
            assert call.id.startswith("toolu_")
            schema = WEATHER_SCHEMA if call.name == "get_weather" else TIME["input_schema"]
            jsonschema.validate(call.input, schema)


def test_a_streamed_tool_use_adds_up_and_a_round_trip_answers(
        client: anthropic.Anthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Lima today?"}]
    with client.messages.stream(model=MODEL, max_tokens=80, tools=[WEATHER],  # type: ignore[list-item]
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=messages) as stream:
        pieces = [e.partial_json for e in stream if e.type == "input_json"]
        first = stream.get_final_message()
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert len(pieces) > 2 and json.loads("".join(pieces)) == call.input
    jsonschema.validate(call.input, WEATHER_SCHEMA)
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": '{"forecast": "sunny", "c": 24}'}]}]
    second = client.messages.create(model=MODEL, max_tokens=16, tools=[WEATHER],  # type: ignore[list-item]
                                    messages=messages)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.content
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) > \
        first.usage.input_tokens + 20


def test_thinking_blocks_are_signed_and_passed_back(client: anthropic.Anthropic) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 16}
    messages: list[Any] = [{"role": "user", "content": "What is 17 + 25?"}]
    first = client.messages.create(model=MODEL, max_tokens=40, thinking=thinking,
                                   messages=messages)
    block = first.content[0]
    assert block.type == "thinking" and block.thinking and len(block.signature) > 20
    assert any(b.type == "text" for b in first.content)
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": "And 17 + 26?"}]
    second = client.messages.create(model=MODEL, max_tokens=20, thinking=thinking,
                                    messages=messages)
    assert second.content[0].type == "thinking"
    tampered = {"type": "thinking", "thinking": block.thinking + " (edited)",
                "signature": block.signature}
    messages[1] = {"role": "assistant", "content": [tampered, *first.content[1:]]}
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        client.messages.create(model=MODEL, max_tokens=20, thinking=thinking, messages=messages)


def test_count_tokens_equals_the_messages_input_tokens(client: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": MODEL, "system": "You are a weather bot.", "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Weather in Oslo?"}]}
    counted = client.messages.count_tokens(**request)
    message = client.messages.create(**request, max_tokens=1,
                                     metadata={"user_id": fresh_user()})
    assert counted.input_tokens == message.usage.input_tokens > 50


def test_claude_names_are_served_by_the_configured_model(client: anthropic.Anthropic) -> None:
    for name in ("claude-opus-4-1", "claude-sonnet-4-5"):
        message = client.messages.create(model=name, max_tokens=2,
                                         messages=[{"role": "user", "content": "Hi"}])
        assert message.model == MODEL
    with pytest.raises(anthropic.BadRequestError, match="gpt-4o"):
        client.messages.create(model="gpt-4o", max_tokens=2,
                               messages=[{"role": "user", "content": "Hi"}])


def test_cache_hits_stay_within_one_key_and_user(server: Server, client: anthropic.Anthropic
                                                 ) -> None:
    system = "You are a terse assistant for the harbour office. " * 8
    owner = fresh_user()

    def ask(sdk_client: anthropic.Anthropic, user: str) -> Any:
        return sdk_client.messages.create(
            model=MODEL, max_tokens=1, system=system, metadata={"user_id": user},
            messages=[{"role": "user", "content": "When does the ferry leave?"}]).usage

    first = ask(client, owner)
    assert first.cache_read_input_tokens == 0
    again = ask(client, owner)
    assert again.cache_read_input_tokens > 0.9 * first.input_tokens
    assert again.input_tokens + again.cache_read_input_tokens == first.input_tokens
    assert ask(client, fresh_user()).cache_read_input_tokens == 0
    assert ask(sdk(server, API_KEY), owner).cache_read_input_tokens == 0


def test_a_bad_key_is_an_authentication_error(server: Server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdk(server, "sk-not-a-key").messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "Incorrect API key provided."}}


def test_over_the_rate_limit_is_a_rate_limit_error(server: Server) -> None:
    limited = sdk(server, create_key(server, rpm=1)["key"])
    limited.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.RateLimitError) as caught:
        limited.messages.create(model=MODEL, max_tokens=1,
                                messages=[{"role": "user", "content": "Hi"}])
    assert int(caught.value.response.headers["retry-after"]) > 0
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_an_overloaded_server_is_an_overloaded_error(
        tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> None:
    """One request in flight at most: a second one while the first streams is a 529."""
    config = {"server": {"max_in_flight": 1},
              "engines": {"embedded": {"model_path": str(model_path), "n_ctx": 1024}}}
    srv = start_server(config, tmp_path_factory.mktemp("anthropic-overload"),
                       env={"SEEKSERVE_DATA_DIR": str(tmp_path_factory.mktemp("overload"))})
    try:
        client = sdk(srv, API_KEY)
        with client.messages.stream(model=MODEL, max_tokens=200, messages=[
                {"role": "user", "content": "Write a long poem about the sea."}]) as holding:
            next(iter(holding))  # message_start: the first request holds the only place
            with pytest.raises(anthropic.OverloadedError) as caught:
                client.messages.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}])
        assert caught.value.status_code == 529
        assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    finally:
        stop_server(srv)


# ----- LangChain's ChatAnthropic -----


def test_langchain_chat_anthropic_answers_and_streams(server: Server,
                                                      managed: dict[str, Any]) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(model_name=MODEL, base_url=f"{server.base_url}/anthropic",  # type: ignore[call-arg]
                        api_key=managed["key"], max_tokens=20, temperature=0, max_retries=0,
                        timeout=120, stop=None)
    answer = llm.invoke("What is the capital of Italy? One word.")
    assert "Rome" in str(answer.content)
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("What is the capital of Italy? One word."))
    assert len(chunks) > 1
    assert "Rome" in "".join(str(c.content) if isinstance(c.content, str) else
                             "".join(p.get("text", "") for p in c.content
                                     if isinstance(p, dict)) for c in chunks)


def test_langchain_chat_anthropic_binds_tools(server: Server, managed: dict[str, Any]) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(model_name=MODEL, base_url=f"{server.base_url}/anthropic",  # type: ignore[call-arg]
                        api_key=managed["key"], max_tokens=100, max_retries=0, timeout=120,
                        stop=None)
    bound = llm.bind_tools([WEATHER], tool_choice="get_weather")
    message = bound.invoke("What is the weather in Oslo for 2 days?")
    [call] = message.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and call["id"].startswith("toolu_")
    jsonschema.validate(call["args"], WEATHER_SCHEMA)
