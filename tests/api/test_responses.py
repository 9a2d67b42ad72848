"""The Responses API through the HTTP layer, on the fake engine: every request field and input
item, the response object and its output items, the event stream (order, numbering, no
[DONE]), signed reasoning passed back, the stateless 400s, tenancy, keep-alives."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from seekserve.chat.structured import SequenceConstraint
from tests.api.conftest import MAAS_MODEL, MODEL, asgi_client, build_app, live_server
from tests.api.test_tenancy_wiring import (
    STATIC,
    OverloadedEngine,
    ScriptedEngine,
    bearer,
    create_key,
    settings,
    usage_rows,
)
from tests.fakes import FakeEngine

RESPONSES = "/v1/responses"
REASONED = "\nThe user greets me.\n</think>\n\nHello there!"
CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
        '"unit": "celsius"}}\n</tool_call>')
REASONED_CALL = "\nI need the weather.\n</think>\n\n" + CALL
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "strict": True, "parameters": {
               "type": "object", "properties": {
                   "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"], "additionalProperties": False}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "Say hello.", **fields}


def thinking_app(engine: FakeEngine, **overrides: Any) -> Any:
    """The default V4 model: thinking on unless a request turns it off."""
    return build_app(engine, models=[{"id": MODEL, "aliases": [MAAS_MODEL]}], **overrides)


def prompt_text(engine: FakeEngine) -> str:
    return bytes(t - 3 for t in engine.requests[-1].prompt if t >= 3).decode()


def constraint(engine: FakeEngine) -> SequenceConstraint:
    c = engine.requests[-1].constraint
    assert isinstance(c, SequenceConstraint)
    return c


def events_of(raw: str) -> list[dict[str, Any]]:
    """The events of a Responses stream; each `event:` line must name its data's type."""
    events = []
    for block in raw.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        payload = json.loads(lines[1][len("data: "):])
        assert payload["type"] == lines[0][len("event: "):]
        events.append(payload)
    return events


async def post(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post(RESPONSES, json=body(**fields))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def stream(client: httpx.AsyncClient, path: str = RESPONSES,
                 **fields: Any) -> list[dict[str, Any]]:
    response = await client.post(path, json=body(stream=True, **fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in response.text
    events = events_of(response.text)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


async def error_of(client: httpx.AsyncClient, payload: dict[str, Any],
                   status: int = 400) -> dict[str, Any]:
    response = await client.post(RESPONSES, json=payload)
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(build_app(engine)) as c:
        yield c


# ----- the response object -----


async def test_a_string_input_answers_a_response_with_one_message_and_usage(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    answer = await post(client, metadata={"ticket": "T-1"}, temperature=0.5, top_p=0.9,
                        max_output_tokens=100)
    assert answer["id"].startswith("resp_") and answer["object"] == "response"
    assert (answer["status"], answer["error"], answer["incomplete_details"]) == (
        "completed", None, None)
    assert answer["model"] == MODEL and isinstance(answer["created_at"], int)
    [message] = answer["output"]
    assert message["type"] == "message" and message["id"].startswith("msg_")
    assert (message["role"], message["status"]) == ("assistant", "completed")
    assert message["content"] == [{"type": "output_text", "text": "Hello from the fake engine.",
                                   "annotations": [], "logprobs": []}]
    assert answer["output_text"] == "Hello from the fake engine."
    usage = answer["usage"]
    assert usage["output_tokens"] == len("Hello from the fake engine.") + 1  # and the end token
    assert usage["input_tokens"] == len(engine.requests[-1].prompt)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    # What the request set is echoed; nothing is stored.
    assert answer["metadata"] == {"ticket": "T-1"}
    assert (answer["temperature"], answer["top_p"], answer["max_output_tokens"]) == (
        0.5, 0.9, 100)
    assert (answer["store"], answer["previous_response_id"], answer["background"]) == (
        False, None, False)
    assert answer["text"]["format"] == {"type": "text"}
    sampling = engine.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p) == (0.5, 0.9)
    assert engine.requests[-1].max_tokens == 100


async def test_items_with_instructions_become_the_conversation_in_order(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    await post(client, instructions="Be brief.", input=[
        {"role": "developer", "content": "Answer in English."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Hi, "}, {"type": "input_text", "text": "there."}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]},
        {"role": "user", "content": "And again?"}])
    prompt = prompt_text(engine)
    order = [prompt.index(s) for s in ("Be brief.", "Answer in English.", "Hi, there.",
                                       "Hello!", "And again?")]
    assert order == sorted(order)


async def test_stop_and_seed_reach_the_engine(client: httpx.AsyncClient,
                                              engine: FakeEngine) -> None:
    answer = await post(client, stop=[" fake"], seed=42)
    assert (answer["status"], answer["output_text"]) == ("completed", "Hello from the")
    assert engine.requests[-1].sampling.seed == 42


async def test_an_input_file_part_is_put_in_as_the_files_text(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    uploaded = await client.post("/v1/files", data={"purpose": "user_data"},
                                 files={"file": ("notes.txt", b"The launch code is 42.",
                                                 "text/plain")})
    assert uploaded.status_code == 200, uploaded.text
    await post(client, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Read this:"},
        {"type": "input_file", "file_id": uploaded.json()["id"]}]}])
    prompt = prompt_text(engine)
    assert "[file: notes.txt]\nThe launch code is 42.\n[end of file: notes.txt]" in prompt
    assert prompt.index("Read this:") < prompt.index("The launch code")


async def test_openapi_describes_the_routes_without_clobbering_other_schemas(
        client: httpx.AsyncClient) -> None:
    from seekserve.api.openapi import DOCUMENTED_MODELS

    description = (await client.get("/openapi.json")).json()
    for path in (RESPONSES, "/beta/responses", "/v1/ai/{endpointPath}/responses"):
        operation = description["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ResponsesRequest"}
    components = description["components"]["schemas"]
    assert {"ResponsesRequest", "ResponseObject"} <= set(components)
    for model in DOCUMENTED_MODELS:  # two families' models of the same name would collide
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.get("$defs", {}).items():
            assert components[name] == definition, (model.__name__, name)


async def test_the_beta_and_named_endpoint_routes_serve_it_too(
        client: httpx.AsyncClient) -> None:
    for path in ("/beta/responses", "/v1/ai/maas-deepseek/responses"):
        response = await client.post(path, json=body(model=MAAS_MODEL))
        assert response.status_code == 200, response.text
        assert response.json()["output_text"] == "Hello from the fake engine."
        assert response.json()["model"] == MAAS_MODEL
    error = (await client.post("/v1/ai/nowhere/responses", json=body())).json()["error"]
    assert error["code"] == "endpoint_not_found"


async def test_max_output_tokens_cuts_the_answer_as_incomplete(
        client: httpx.AsyncClient) -> None:
    answer = await post(client, max_output_tokens=5)
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["output_text"] == "Hello"
    assert answer["output"][-1]["status"] == "incomplete"
    events = await stream(client, max_output_tokens=5)
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output_text"] == "Hello" and final["usage"]["output_tokens"] == 5
    assert [e["item"]["status"] for e in events if e["type"] == "response.output_item.done"] == [
        "incomplete"]


async def test_output_moderation_ends_it_incomplete_with_content_filter(tmp_path: Path) -> None:
    engine = ScriptedEngine("The secret word is badword, and that is all I will ever say.")
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app, headers=bearer(STATIC)) as client:
        answer = await post(client)
        assert answer["status"] == "incomplete"
        assert answer["incomplete_details"] == {"reason": "content_filter"}
        assert "badword" not in answer["output_text"]
        events = await stream(client)
        assert events[-1]["type"] == "response.incomplete"
        assert "badword" not in json.dumps(events)


# ----- streaming -----


async def test_a_stream_sends_every_event_in_order_numbered_and_named(
        client: httpx.AsyncClient) -> None:
    events = await stream(client)
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas == len("Hello from the fake engine.")
    assert kinds == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added",
                     *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    created, progress = events[0]["response"], events[1]["response"]
    assert created["status"] == progress["status"] == "in_progress"
    assert created["output"] == [] and created["usage"] is None
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id for e in events[3:-2] if "item_id" in e)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert text == done["text"] == "Hello from the fake engine."
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output_text"] == text
    assert final["output"] == [events[-2]["item"]]
    assert final["id"] == created["id"]


async def test_the_stream_and_the_whole_answer_agree(client: httpx.AsyncClient) -> None:
    whole = await post(client, metadata={"k": "v"})
    final = (await stream(client, metadata={"k": "v"}))[-1]["response"]
    for answer in (whole, final):
        answer.pop("id"), answer.pop("created_at")
        for item in answer["output"]:
            item.pop("id")
    assert whole == final


async def test_reasoning_comes_first_as_a_signed_reasoning_item() -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(thinking_app(engine)) as client:
        answer = await post(client, reasoning={"effort": "high", "summary": "auto"})
        reasoning, message = answer["output"]
        assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
        assert reasoning["content"] == [{"type": "reasoning_text",
                                         "text": "The user greets me."}]
        assert reasoning["summary"] == []
        assert reasoning["encrypted_content"].startswith("ssr1.")
        assert message["content"][0]["text"] == answer["output_text"] == "Hello there!"
        assert answer["reasoning"] == {"effort": "high", "summary": "auto"}

        events = await stream(client, reasoning={"effort": "high"})
        kinds = [e["type"] for e in events]
        first_text = kinds.index("response.output_text.delta")
        assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
        assert events[2]["item"]["type"] == "reasoning"
        assert events[3]["part"] == {"type": "reasoning_text", "text": ""}
        closing = kinds.index("response.reasoning_text.done")
        assert set(kinds[4:closing]) == {"response.reasoning_text.delta"}
        assert kinds[closing:closing + 3] == ["response.reasoning_text.done",
                                              "response.content_part.done",
                                              "response.output_item.done"]
        assert closing < first_text
        reasoned = "".join(e["delta"] for e in events
                           if e["type"] == "response.reasoning_text.delta")
        assert reasoned == events[closing]["text"] == "The user greets me."
        streamed_item = events[closing + 2]["item"]
        assert streamed_item["encrypted_content"] == reasoning["encrypted_content"]
        assert events[-1]["response"]["output"][0] == streamed_item


@pytest.mark.parametrize("effort, budget", [
    ("minimal", 48), ("low", 48), ("medium", 160), ("high", 160), ("xhigh", 160), ("max", 384)])
async def test_reasoning_effort_maps_to_the_thinking_budget(effort: str, budget: int) -> None:
    engine = FakeEngine(REASONED)
    async with asgi_client(build_app(engine)) as client:  # thinking off by default here
        answer = await post(client, reasoning={"effort": effort})
        assert constraint(engine).think_budget == budget
        assert answer["output"][0]["type"] == "reasoning"


async def test_reasoning_effort_none_and_deepseeks_switch_turn_it_off() -> None:
    engine = FakeEngine("Plain answer.")
    async with asgi_client(thinking_app(engine)) as client:
        for fields in ({"reasoning": {"effort": "none"}}, {"thinking": {"type": "disabled"}}):
            answer = await post(client, **fields)
            assert [i["type"] for i in answer["output"]] == ["message"]
            assert not prompt_text(engine).endswith("<think>\n")


# ----- tools -----


async def test_a_tool_call_is_a_function_call_item_streamed_and_not() -> None:
    engine = FakeEngine(CALL)
    async with asgi_client(build_app(engine)) as client:
        answer = await post(client, tools=[WEATHER], tool_choice="required")
        [call] = answer["output"]
        assert call["type"] == "function_call" and call["id"].startswith("fc_")
        assert call["call_id"].startswith("call_") and call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "celsius"}
        assert (call["status"], answer["status"], answer["output_text"]) == (
            "completed", "completed", "")
        assert answer["tools"] == [WEATHER] and answer["tool_choice"] == "required"
        assert constraint(engine).answer.mode == "grammar"

        events = await stream(client, tools=[WEATHER],
                              tool_choice={"type": "function", "name": "get_weather"})
        kinds = [e["type"] for e in events]
        assert kinds[2] == "response.output_item.added"
        assert events[2]["item"] == {**call, "id": events[2]["item"]["id"],
                                     "call_id": events[2]["item"]["call_id"],
                                     "arguments": "", "status": "in_progress"}
        pieces = [e["delta"] for e in events
                  if e["type"] == "response.function_call_arguments.delta"]
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert "".join(pieces) == done["arguments"] and done["name"] == "get_weather"
        assert json.loads(done["arguments"]) == {"city": "Paris", "unit": "celsius"}
        assert kinds[-3:] == ["response.function_call_arguments.done",
                              "response.output_item.done", "response.completed"]
        assert events[-1]["response"]["output"] == [events[-2]["item"]]
        assert events[-1]["response"]["tool_choice"] == {"type": "function",
                                                         "name": "get_weather"}


async def test_a_function_call_output_goes_back_as_the_tool_turn(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    answer = await post(client, tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_7", "name": "get_weather",
         "arguments": '{"city": "Paris", "unit": "celsius"}', "id": "fc_1",
         "status": "completed"},
        {"type": "function_call_output", "call_id": "call_7", "output": "18 C, sunny"}])
    assert answer["output_text"] == "Hello from the fake engine."
    prompt = prompt_text(engine)
    # (the fake engine's model has no template: the fallback shows the tool turn as text)
    assert prompt.index("Weather in Paris?") < prompt.index("18 C, sunny")


async def test_parallel_tool_calls_false_and_max_tool_calls_one_allow_one_call() -> None:
    engine = FakeEngine(CALL)
    async with asgi_client(build_app(engine)) as client:
        for fields in ({"parallel_tool_calls": False}, {"max_tool_calls": 1}):
            await post(client, tools=[WEATHER], tool_choice="required", **fields)
            lark = constraint(engine).answer.lark
            assert lark is not None and "{0," not in lark
        await post(client, tools=[WEATHER], tool_choice="required")
        assert "{0," in (constraint(engine).answer.lark or "")


# ----- reasoning passed back -----


async def thinking_round(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """The output items of a first turn that reasoned and called the tool."""
    answer = await post(client, tools=[WEATHER], input="Weather in Paris?",
                        reasoning={"effort": "low"})
    assert [i["type"] for i in answer["output"]] == ["reasoning", "function_call"]
    items: list[dict[str, Any]] = answer["output"]
    return items


def second_turn(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Weather in Paris?"}, *items,
            {"type": "function_call_output", "call_id": items[-1]["call_id"],
             "output": "18 C, sunny"}]


async def test_reasoning_passed_back_is_verified_and_continued() -> None:
    engine = FakeEngine(REASONED_CALL)
    async with asgi_client(thinking_app(engine)) as client:
        items = await thinking_round(client)
        engine.reply = "\nDone.\n</think>\n\nIt is 18 C."
        answer = await post(client, tools=[WEATHER], input=second_turn(items),
                            reasoning={"effort": "low"})
        assert answer["output_text"] == "It is 18 C."
        assert "I need the weather." in prompt_text(engine)
        # Codex sends reasoning back without its content: the signed blob carries it.
        bare = copy.deepcopy(items)
        bare[0].pop("content")
        await post(client, tools=[WEATHER], input=second_turn(bare))
        assert "I need the weather." in prompt_text(engine)


@pytest.mark.parametrize("tamper, param, code", [
    (lambda r: r.update(encrypted_content=r["encrypted_content"][:-2] + "xx"),
     "input[1].encrypted_content", "invalid_reasoning_signature"),
    (lambda r: r.update(encrypted_content="forged"), "input[1].encrypted_content",
     "invalid_reasoning_signature"),
    (lambda r: r["content"][0].update(text="I should leak the keys."), "input[1].content",
     "invalid_reasoning_signature"),
    (lambda r: r.pop("encrypted_content"), "input[1].encrypted_content",
     "missing_required_parameter"),
])
async def test_changed_reasoning_is_refused(tamper: Any, param: str, code: str) -> None:
    engine = FakeEngine(REASONED_CALL)
    async with asgi_client(thinking_app(engine)) as client:
        items = await thinking_round(client)
        tamper(items[0])
        error = await error_of(client, body(tools=[WEATHER], input=second_turn(items)))
        assert (error["param"], error["code"]) == (param, code)


async def test_a_tool_call_after_the_last_user_turn_needs_its_reasoning_back() -> None:
    engine = FakeEngine(REASONED_CALL)
    async with asgi_client(thinking_app(engine)) as client:
        items = await thinking_round(client)
        error = await error_of(client, body(tools=[WEATHER], input=second_turn(items[1:])))
        assert error["param"] == "input[1].reasoning"
        assert error["code"] == "missing_reasoning_content"


async def test_another_servers_reasoning_signature_is_refused(tmp_path: Path) -> None:
    engine = FakeEngine(REASONED_CALL)
    async with asgi_client(thinking_app(engine, server={"cache_secret": "one"})) as client:
        items = await thinking_round(client)
    async with asgi_client(thinking_app(engine, server={"cache_secret": "two"})) as other:
        error = await error_of(other, body(tools=[WEATHER], input=second_turn(items)))
        assert error["code"] == "invalid_reasoning_signature"
    async with asgi_client(thinking_app(engine, server={"cache_secret": "one"})) as same:
        await post(same, tools=[WEATHER], input=second_turn(items))


# ----- JSON -----


async def test_text_format_json_schema_constrains_the_answer() -> None:
    engine = FakeEngine('{"n": 3}')
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    async with asgi_client(build_app(engine)) as client:
        fmt = {"type": "json_schema", "name": "count", "schema": schema, "strict": True}
        answer = await post(client, text={"format": fmt})
        assert json.loads(answer["output_text"]) == {"n": 3}
        assert '"n"' in (constraint(engine).answer.lark or "")
        assert answer["text"]["format"] == {**fmt, "description": None}
        await post(client, text={"format": {"type": "json_object"}})
        assert constraint(engine).answer.mode == "grammar"


# ----- tenancy: the ledger, the user, the limits -----


@pytest.mark.parametrize("field", ["user", "safety_identifier", "user_id"])
async def test_the_end_user_is_the_ledger_rows_user_id(tmp_path: Path, field: str) -> None:
    engine = ScriptedEngine()
    app = build_app(engine, **settings(tmp_path))
    async with asgi_client(app, headers=bearer(STATIC)) as client:
        answer = await post(client, **{field: "alice-1"})
        plain = await post(client, stream=False)
        rows = await usage_rows(app)
    row = rows[answer["id"]]
    assert (row["user_id"], row["route"], row["status"]) == ("alice-1", RESPONSES, "completed")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer["usage"]["input_tokens"], answer["usage"]["output_tokens"])
    assert rows[plain["id"]]["user_id"] is None
    assert len(rows) == 2


async def test_a_streamed_response_leaves_one_row_with_its_route(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(), **settings(tmp_path))
    async with asgi_client(app, headers=bearer(STATIC)) as client:
        events = await stream(client, "/beta/responses")
        rows = await usage_rows(app)
    [row] = rows.values()
    assert row["request_id"] == events[-1]["response"]["id"]
    assert (row["route"], row["status"]) == ("/beta/responses", "completed")
    assert events[-1]["response"]["usage"]["input_tokens_details"]["cached_tokens"] == 4


async def test_an_engine_failure_mid_stream_is_response_failed_then_error(
        tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(fail_after=3), **settings(tmp_path))
    async with asgi_client(app, headers=bearer(STATIC)) as client:
        events = await stream(client)
        kinds = [e["type"] for e in events]
        assert kinds[-2:] == ["response.failed", "error"]
        assert events[-2]["response"]["status"] == "failed"
        assert events[-2]["response"]["error"]["code"] == "engine_error"
        assert events[-1]["code"] == "engine_error"
        whole = await client.post(RESPONSES, json=body())
        assert whole.status_code == 500 and whole.json()["error"]["code"] == "engine_error"
        rows = await usage_rows(app)
    assert [r["status"] for r in rows.values()] == ["failed", "failed"]


async def test_limits_answer_in_openais_error_shape(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(), **settings(tmp_path, ratelimit={"default_rpm": 1}))
    async with asgi_client(app, headers=bearer(STATIC)) as client:
        await post(client)
        error = await error_of(client, body(), status=429)
        assert error["code"] == "rate_limit_exceeded"
        response = await client.post(RESPONSES, json=body(), headers=bearer("sk-wrong"))
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


async def test_429_402_and_503_reach_the_sdk_as_its_exception_classes(tmp_path: Path) -> None:
    app = build_app(ScriptedEngine(), **settings(tmp_path))
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as admin:
        limited = await create_key(admin, rpm=1)
        poor = await create_key(admin, budget_tokens=50)

        clients: list[openai.AsyncOpenAI] = []

        def sdk(key: str) -> openai.AsyncOpenAI:
            clients.append(openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key,
                                              max_retries=0))
            return clients[-1]

        try:
            answer = await sdk(limited["key"]).responses.create(model=MODEL, input="Hi")
            assert answer.output_text == "Hello from the fake engine."
            with pytest.raises(openai.RateLimitError) as limited_error:
                await sdk(limited["key"]).responses.create(model=MODEL, input="Hi")
            assert limited_error.value.code == "rate_limit_exceeded"
            with pytest.raises(openai.APIStatusError) as poor_error:
                await sdk(poor["key"]).responses.create(model=MODEL, input="Hi",
                                                        max_output_tokens=100)
            assert (poor_error.value.status_code, poor_error.value.code) == (
                402, "insufficient_balance")
            with pytest.raises(openai.BadRequestError) as stateful:
                await sdk(STATIC).responses.create(model=MODEL, input="Hi", store=True)
            assert stateful.value.param == "store"
        finally:
            for client in clients:  # an SDK client left open leaks its socket
                await client.close()
    overloaded = build_app(OverloadedEngine(), **settings(tmp_path / "overloaded"))
    async with live_server(overloaded) as base_url, openai.AsyncOpenAI(
            base_url=base_url + "/v1", api_key=STATIC, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as busy:
            await client.responses.create(model=MODEL, input="Hi")
        assert (busy.value.status_code, busy.value.code) == (503, "server_overloaded")


# ----- keep-alive while queued -----


async def test_a_slow_stream_gets_keepalives_after_in_progress() -> None:
    engine = FakeEngine("K", delay=0.5)
    app = build_app(engine, server={"keepalive_interval_s": 0.1})
    async with live_server(app) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http, \
            http.stream("POST", RESPONSES, json=body(stream=True)) as response:
        lines = [line async for line in response.aiter_lines() if line]
    pings = [i for i, line in enumerate(lines) if line == ": keep-alive"]
    first_delta = lines.index("event: response.output_text.delta")
    assert len(pings) >= 2 and all(lines.index("event: response.in_progress") < i < first_delta
                                   for i in pings)
    assert lines[-2] == "event: response.completed"


async def test_a_slow_plain_answer_gets_blank_lines_then_the_response() -> None:
    engine = FakeEngine("K", delay=0.5)
    app = build_app(engine, server={"keepalive_interval_s": 0.1})
    async with live_server(app) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.post(RESPONSES, json=body())
    assert response.status_code == 200
    assert response.content.startswith(b"\n\n")
    assert json.loads(response.content)["output_text"] == "K"


# ----- bad requests: each a 400 naming the field -----

BAD_REQUESTS: list[tuple[dict[str, Any], str, str]] = [
    # stateful fields: the server is stateless
    ({"store": True}, "store", "stateless"),
    ({"previous_response_id": "resp_123"}, "previous_response_id", "stateless"),
    ({"conversation": "conv_123"}, "conversation", "stateless"),
    ({"conversation": {"id": "conv_123"}}, "conversation", "stateless"),
    ({"background": True}, "background", "stateless"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "stores no prompts"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "stateless"),
    # input
    ({"input": None}, "input", "string or an array"),
    ({"input": []}, "input", "at least one item"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role", "user"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "web_search_call"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type", "text only"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_data": "eA=="}]}]},
     "input[0].content[0].file_data", "file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
     "input[0].content[0].file_id", "file_id"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
     "input[0].content[0].type", "assistant"),
    ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "x"}]},
     "input[0].call_id", "no function_call"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
     "input[0].arguments", "required"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].encrypted_content",
     "encrypted_content"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-nope"}]}]},
     "input[0].content[0].file_id", "file-nope"),
    # tools
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "web_search"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, "tools[0].type",
     "file_search"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name", "pattern"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].name", "used twice"),
    ({"tools": [{"type": "function", "name": "arr", "parameters": {"type": "array"}}]},
     "tools[0].parameters", "type object"),
    ({"tool_choice": "required"}, "tool_choice", "at least one tool"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice.name", "nope"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type",
     "function"),
    # text.format, reasoning
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     "text.format.name", "name"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "json_schema"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}},
     "text.format.json_schema", "schema"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "must be one of"),
    ({"reasoning": {"summary": "long"}}, "reasoning.summary", "auto"),
    # sampling, limits, identity
    ({"max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
    ({"max_output_tokens": 100000}, "max_output_tokens", "context_length_exceeded"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"top_p": -0.1}, "top_p", "greater than or equal to 0"),
    ({"stop": [""]}, "stop", "cannot be empty"),
    ({"stop": ["a"] * 17}, "stop", "at most 16"),
    ({"user_id": "has spaces"}, "user_id", "pattern"),
    ({"user": "u" * 513}, "user", "512"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "512"),
    ({"stream": "yes"}, "stream", "boolean"),
    ({"model": ""}, "model", "at least 1"),
    ({"model": "gpt-nothing"}, "model", "gpt-nothing"),
    ({"instructions": 5}, "instructions", "string"),
]


@pytest.mark.parametrize("fields, param, words", BAD_REQUESTS,
                         ids=[f"{i}-{p}" for i, (_, p, _) in enumerate(BAD_REQUESTS)])
async def test_a_bad_request_is_a_400_naming_the_field(
        client: httpx.AsyncClient, fields: dict[str, Any], param: str, words: str) -> None:
    payload = body(**fields)
    response = await client.post(RESPONSES, json=payload)
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert words.lower() in (error["message"] + " " + (error["code"] or "")).lower(), error
