"""The Responses API on the real default model through the official openai SDK
(`client.responses.create` / `.stream`) and LangChain's ChatOpenAI(use_responses_api=True)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server, usage_row
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
BUDGETS = {"low": 6, "high": 16, "max": 24}
WEATHER = {"type": "function", "name": "get_weather", "strict": True,
           "description": WEATHER_DESCRIPTION, "parameters": WEATHER_PARAMS}
TIME = {"type": "function", "name": "get_time", "description": TIME_DESCRIPTION,
        "parameters": TIME_PARAMS}
# Every event type a streamed answer with reasoning and text sends, in the order they first
# appear (then `response.completed`, or `response.incomplete` at max_output_tokens).
REASONED_EVENTS = [
    "response.created", "response.in_progress",
    "response.output_item.added", "response.content_part.added",
    "response.reasoning_text.delta", "response.reasoning_text.done",
    "response.content_part.done", "response.output_item.done",
    "response.output_text.delta", "response.output_text.done",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model with small thinking budgets, thinking off unless asked for, and its
    own data directory (to read the ledger)."""
    config = {"models": [{"id": MODEL, "thinking": {"budgets": BUDGETS}}]}
    data_dir = tmp_path_factory.mktemp("responses-data")
    srv = start_server(config, tmp_path_factory.mktemp("responses"),
                       env={"SEEKSERVE_DATA_DIR": str(data_dir)})
    srv.data_dir = data_dir  # type: ignore[attr-defined]
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def in_parallel(fn: Any, items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:  # the engine batches 8 sequences
        return list(pool.map(fn, items))


def user() -> str:
    """A user of its own: nothing of the prefix cache is shared with other tests."""
    return "u" + secrets.token_hex(6)


def test_a_plain_string_input(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="What is the capital of France?",
                                       max_output_tokens=40, temperature=0)
    assert response.id.startswith("resp_") and response.status == "completed"
    assert "Paris" in response.output_text
    [message] = response.output
    assert message.type == "message" and message.content[0].type == "output_text"
    assert message.content[0].text == response.output_text
    usage = response.usage
    assert usage is not None and usage.input_tokens > 5 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_items_with_instructions_and_a_multi_turn_history(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, instructions="You are a terse assistant. Answer in one short sentence.",
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "My name is Ada. Remember it."}]}],
        max_output_tokens=30, temperature=0, user=user())
    assert first.status in ("completed", "incomplete") and first.output_text
    history: list[Any] = [{"role": "user", "content": "My name is Ada. Remember it."},
                          *[item.model_dump(exclude_none=True) for item in first.output],
                          {"role": "user", "content": "What is my name?"}]
    second = client.responses.create(model=MODEL, input=history, max_output_tokens=20,
                                     instructions="You are a terse assistant.", temperature=0)
    assert "Ada" in second.output_text
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_a_stream_sends_every_event_in_order_with_monotonic_numbers(
        client: openai.OpenAI) -> None:
    events = list(client.responses.create(
        model=MODEL, input="Name a fruit. Answer with one word.", max_output_tokens=60,
        stream=True, reasoning={"effort": "low"}, extra_body={"seed": 1}))
    kinds = [e.type for e in events]
    first_seen = list(dict.fromkeys(kinds))
    assert first_seen[:-1] == REASONED_EVENTS
    assert first_seen[-1] in ("response.completed", "response.incomplete")
    assert kinds.count(first_seen[-1]) == 1 and kinds[-1] == first_seen[-1]
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and message.type == "message"
    reasoned = "".join(e.delta for e in events  # type: ignore[union-attr]
                       if e.type == "response.reasoning_text.delta")
    assert reasoning.content and reasoning.content[0].text == reasoned
    text = "".join(e.delta for e in events  # type: ignore[union-attr]
                   if e.type == "response.output_text.delta")
    assert text == final.output_text and text.strip()


def test_the_sdks_accumulated_stream_equals_the_whole_response(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": MODEL, "input": "Name three colours.",
                              "max_output_tokens": 40, "temperature": 0,
                              "extra_body": {"seed": 7}}
    whole = client.responses.create(user=user(), **kwargs)
    with client.responses.stream(user=user(), **kwargs) as stream:
        streamed = stream.get_final_response()
    assert streamed.output_text == whole.output_text
    assert [i.type for i in streamed.output] == [i.type for i in whole.output]
    assert streamed.usage is not None and whole.usage is not None
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (
        whole.usage.input_tokens, whole.usage.output_tokens)
    assert streamed.status == whole.status


def test_required_function_calls_validate_against_the_schema_10_of_10(
        client: openai.OpenAI) -> None:
    def ask(city: str) -> list[Any]:
        response = client.responses.create(
            model=MODEL, tools=[WEATHER, TIME], max_output_tokens=60,  # type: ignore[list-item]
            tool_choice="required" if CITIES.index(city) % 2 else
            {"type": "function", "name": "get_weather"},
            input=f"What will the weather be in {city}?", parallel_tool_calls=False)
        assert response.status == "completed"
        calls = [i for i in response.output if i.type == "function_call"]
        assert len(calls) == 1
        return calls

    for calls in in_parallel(ask, CITIES[:10]):
        for call in calls:
            assert call.call_id.startswith("call_")
            schema = WEATHER_PARAMS if call.name == "get_weather" else TIME["parameters"]
            jsonschema.validate(json.loads(call.arguments), schema)


@pytest.mark.parametrize("effort", [None, "low"])
def test_a_function_call_output_round_trip(client: openai.OpenAI, effort: str | None) -> None:
    extra: dict[str, Any] = {"reasoning": {"effort": effort}} if effort else {}
    question = {"role": "user", "content": "What is the weather in Lima today?"}
    first = client.responses.create(model=MODEL, tools=[WEATHER],  # type: ignore[list-item]
                                    tool_choice="required", input=[question],
                                    parallel_tool_calls=False,
                                    max_output_tokens=60, **extra)
    kinds = [i.type for i in first.output]
    assert kinds == (["reasoning", "function_call"] if effort else ["function_call"])
    call = first.output[-1]
    assert call.type == "function_call"
    history: list[Any] = [question, *[i.model_dump(exclude_none=True) for i in first.output],
                          {"type": "function_call_output", "call_id": call.call_id,
                           "output": json.dumps({"forecast": "sunny", "celsius": 24})}]
    second = client.responses.create(model=MODEL, tools=[WEATHER],  # type: ignore[list-item]
                                     input=history, max_output_tokens=24, **extra)
    assert second.status in ("completed", "incomplete")
    assert second.output_text or any(i.type == "function_call" for i in second.output)
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + 20
    if effort:  # the reasoning went back signed; changed, it is refused
        history[1]["encrypted_content"] = history[1]["encrypted_content"][:-3] + "abc"
        with pytest.raises(openai.BadRequestError, match="reasoning") as caught:
            client.responses.create(model=MODEL, input=history, max_output_tokens=10,
                                    tools=[WEATHER], **extra)  # type: ignore[list-item]
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "input[1].encrypted_content"


def test_text_format_json_schema_strict_answers_match_the_schema(
        client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "legs": {"type": "integer", "minimum": 0},
        "sounds": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["name", "legs", "sounds"], "additionalProperties": False}

    def ask(animal: str) -> str:
        response = client.responses.create(
            model=MODEL, input=f"Describe {animal}.", max_output_tokens=80,
            text={"format": {"type": "json_schema", "name": "animal", "schema": schema,
                             "strict": True}})
        assert response.status == "completed", response.output_text
        return response.output_text

    for text in in_parallel(ask, ["a duck", "a spider", "a snake"]):
        jsonschema.validate(json.loads(text), schema)


def test_reasoning_effort_gives_a_reasoning_item_within_its_budget(
        client: openai.OpenAI) -> None:
    def reasoning_tokens(effort: str) -> int:
        response = client.responses.create(
            model=MODEL, max_output_tokens=2 * BUDGETS["high"] + 4, reasoning={"effort": effort},
            input="Explain in great detail, step by step, how a compiler works.")
        assert response.output[0].type == "reasoning"
        assert response.output[0].content and response.output[0].content[0].text.strip()
        assert response.output[0].encrypted_content
        assert response.usage is not None
        return response.usage.output_tokens_details.reasoning_tokens

    close = 5  # tokens of the forced "\n</think>\n\n"
    low, high = reasoning_tokens("low"), reasoning_tokens("high")
    assert 0 < low <= BUDGETS["low"] + close
    assert low < high <= BUDGETS["high"] + close


def test_a_small_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Write a long poem about the sea.",
                                       max_output_tokens=8)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 8
    with client.responses.stream(model=MODEL, input="Write a long poem about the sea.",
                                 max_output_tokens=8) as stream:
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.incomplete"


@pytest.mark.parametrize("field", ["user", "safety_identifier", "user_id"])
def test_the_end_user_is_the_ledger_rows_user_id(server: Server, client: openai.OpenAI,
                                                  field: str) -> None:
    who = user()
    extra = {"extra_body": {"user_id": who}} if field == "user_id" else {field: who}
    response = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=5,
                                       **extra)  # type: ignore[arg-type]
    row = eventually(lambda: usage_row(server.data_dir, who), within=10)  # type: ignore[attr-defined]
    assert row is not None
    assert (row["request_id"], row["route"], row["status"]) == (
        response.id, "/v1/responses", "length" if response.status == "incomplete"
        else "completed")
    assert response.usage is not None
    assert row["prompt_tokens"] == response.usage.input_tokens


def test_cached_tokens_for_a_repeated_prefix_of_the_same_user_only(
        client: openai.OpenAI) -> None:
    instructions = "You are a helpful assistant. " + " ".join(
        f"Rule {n}: be kind to the number {n}." for n in range(40))
    alice, bob = user(), user()

    def cached(who: str) -> int:
        response = client.responses.create(model=MODEL, instructions=instructions,
                                           input="Say hi.", max_output_tokens=3, user=who)
        assert response.usage is not None
        return response.usage.input_tokens_details.cached_tokens

    assert cached(alice) == 0
    assert cached(alice) > 200
    assert cached(bob) == 0


def test_langchain_chat_openai_on_the_responses_api(server: Server) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=server.v1, api_key=server.api_key,  # type: ignore[arg-type]
                     use_responses_api=True, max_tokens=30, temperature=0, max_retries=0)
    answer = llm.invoke("What is the capital of France? One word.")
    assert isinstance(answer, AIMessage) and "Paris" in answer.text
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 5

    streamed = "".join(chunk.text for chunk in llm.stream("Name a colour. One word."))
    assert streamed.strip()

    @tool
    def get_weather(city: str) -> str:
        """Get the weather in a city."""
        return f"Sunny in {city}"

    called = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Oslo?")
    [call] = called.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
