"""Bad requests against the real server: each is a 400 that names the field and its rule."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import SEED_PROVIDERS, Server

CHAT = "/v1/chat/completions"
MODEL = "deepseek-v4-pro"
# The longest prompt + completion of one sequence, as the shipped example config sets it.
CONTEXT = int(yaml.safe_load(SEED_PROVIDERS.read_text())["engines"]["embedded"][
    "max_sequence_tokens"])
TOOL = {"type": "function", "function": {"name": "get_weather",
                                         "parameters": {"type": "object"}}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **fields}


def without(key: str) -> dict[str, Any]:
    b = body()
    del b[key]
    return b


def messages(*items: Any) -> dict[str, Any]:
    return body(messages=list(items))


@dataclass(frozen=True)
class Bad:
    request: dict[str, Any]
    param: str
    limit: str | None = None  # the bound the message must name, where there is one
    code: str | None = None  # checked when given


BAD_REQUESTS: dict[str, Bad] = {
    "missing model": Bad(without("model"), "model", code="missing_required_parameter"),
    "missing messages": Bad(without("messages"), "messages",
                            code="missing_required_parameter"),
    "empty model": Bad(body(model=""), "model"),
    "model is a number": Bad(body(model=4), "model"),
    "empty messages": Bad(body(messages=[]), "messages", limit="1"),
    "messages is an object": Bad(body(messages={"role": "user", "content": "Hi"}), "messages"),
    "message is a string": Bad(messages("Hi"), "messages[0]"),
    "bad role": Bad(messages({"role": "robot", "content": "Hi"}), "messages[0].role"),
    "bad role in the second message": Bad(
        messages({"role": "user", "content": "Hi"}, {"role": "developer", "content": "x"}),
        "messages[1].role"),
    "content is a number": Bad(messages({"role": "user", "content": 42}), "messages[0].content"),
    "content is missing": Bad(messages({"role": "user"}), "messages[0].content"),
    "content part of type image": Bad(
        messages({"role": "user", "content": [{"type": "image", "image_url": "x"}]}),
        "messages[0].content[0].type"),
    "content part without type": Bad(messages({"role": "user", "content": [{"text": "Hi"}]}),
                                     "messages[0].content[0].type"),
    "file part without file_id": Bad(
        messages({"role": "user", "content": [{"type": "file", "file": {}}]}),
        "messages[0].content[0].file.file_id", code="missing_required_parameter"),
    "tool_calls on a user message": Bad(
        messages({"role": "user", "content": "Hi", "tool_calls": []}), "messages[0].tool_calls"),
    "text part without text": Bad(
        messages({"role": "user", "content": [{"type": "text"}]}),
        "messages[0].content[0].text"),
    "name is a number": Bad(messages({"role": "user", "content": "Hi", "name": 7}),
                            "messages[0].name"),
    "temperature 2.5": Bad(body(temperature=2.5), "temperature", limit="2"),
    "temperature -1": Bad(body(temperature=-1), "temperature", limit="0"),
    "temperature as a string": Bad(body(temperature="1"), "temperature"),
    "top_p 1.5": Bad(body(top_p=1.5), "top_p", limit="1"),
    "max_tokens 0": Bad(body(max_tokens=0), "max_tokens", limit="1"),
    "max_tokens -5": Bad(body(max_tokens=-5), "max_tokens", limit="1"),
    "max_tokens 1.5": Bad(body(max_tokens=1.5), "max_tokens"),
    "max_tokens as a string": Bad(body(max_tokens="10"), "max_tokens"),
    "top_logprobs 21": Bad(body(logprobs=True, top_logprobs=21), "top_logprobs", limit="20"),
    "top_logprobs -1": Bad(body(logprobs=True, top_logprobs=-1), "top_logprobs", limit="0"),
    "17 stop sequences": Bad(body(stop=[f"s{i}" for i in range(17)]), "stop", limit="16"),
    "stop is a number": Bad(body(stop=5), "stop"),
    "stop item is a number": Bad(body(stop=["\n\n", 5]), "stop[1]"),
    "stop with an empty string": Bad(body(stop=["\n\n", ""]), "stop"),
    "stop is an empty string": Bad(body(stop=""), "stop"),
    "user_id with a space": Bad(body(user_id="user 123"), "user_id"),
    "user_id of 513 characters": Bad(body(user_id="u" * 513), "user_id", limit="512"),
    "thinking.type maybe": Bad(body(thinking={"type": "maybe"}), "thinking.type"),
    "thinking is a string": Bad(body(thinking="enabled"), "thinking"),
    "thinking.reasoning_effort extreme": Bad(body(thinking={"reasoning_effort": "extreme"}),
                                             "thinking.reasoning_effort"),
    "reasoning_effort ultra": Bad(body(reasoning_effort="ultra"), "reasoning_effort"),
    "response_format.type xml": Bad(body(response_format={"type": "xml"}),
                                    "response_format.type"),
    "tool of type retrieval": Bad(body(tools=[{"type": "retrieval"}]), "tools[0].type"),
    "tool function name with a space": Bad(
        body(tools=[{"type": "function", "function": {"name": "get weather"}}]),
        "tools[0].function.name"),
    "tool_choice sometimes": Bad(body(tools=[TOOL], tool_choice="sometimes"), "tool_choice"),
    "tool_choice names a function not in tools": Bad(
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}),
        "tool_choice"),
    "tool_choice required without tools": Bad(body(tool_choice="required"), "tool_choice"),
    "duplicate tool names": Bad(body(tools=[TOOL, TOOL]), "tools[1].function.name"),
    "tool message without tool_call_id": Bad(
        messages({"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}),
        "messages[1].tool_call_id"),
    "prefix on a message that is not last": Bad(
        messages({"role": "assistant", "content": "Once", "prefix": True},
                 {"role": "user", "content": "Hi"}),
        "messages[0].prefix"),
    "prefix on a user message": Bad(messages({"role": "user", "content": "Hi", "prefix": True}),
                                    "messages[0].prefix"),
    "stream yes": Bad(body(stream="yes"), "stream"),
    "stream_options.include_usage yes": Bad(
        body(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage"),
    "logprobs as a string": Bad(body(logprobs="true"), "logprobs"),
    "frequency_penalty 3": Bad(body(frequency_penalty=3), "frequency_penalty", limit="2"),
    "presence_penalty -3": Bad(body(presence_penalty=-3), "presence_penalty", limit="-2"),
    "seed as a string": Bad(body(seed="42"), "seed"),
    "system_instruction is a number": Bad(body(system_instruction=1), "system_instruction"),
    "max_tokens larger than the context": Bad(
        body(max_tokens=CONTEXT), "max_tokens", limit=str(CONTEXT),
        code="context_length_exceeded"),
    "prompt longer than the context": Bad(
        messages({"role": "user", "content": "hello " * (CONTEXT + 500)}), "messages",
        limit=str(CONTEXT), code="context_length_exceeded"),
}


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


def mentions(message: str, number: str) -> bool:
    """`number` appears in `message` as a whole number, not as part of another one."""
    return re.search(rf"(?<![\d.\-]){re.escape(number)}(?![\d.])", message) is not None


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_is_400_naming_the_field(http: httpx.Client, case: Bad) -> None:
    response = http.post(CHAT, json=case.request)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == case.param, error
    assert error["type"] == "invalid_request_error"
    if case.code is not None:
        assert error["code"] == case.code
    assert isinstance(error["message"], str) and error["message"].strip()
    if case.limit is not None:
        assert mentions(error["message"], case.limit), error["message"]


def test_bad_requests_table_is_large_enough() -> None:
    assert len(BAD_REQUESTS) >= 30


@pytest.mark.parametrize("route", [CHAT, "/v1/ai/maas-deepseek/chat/completions"])
def test_unknown_model_is_404(http: httpx.Client, route: str) -> None:
    response = http.post(route, json=body(model="deepseek-v3"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", "model_not_found", "model")
    assert "deepseek-v3" in error["message"]


def test_wrong_key_is_401(server: Server) -> None:
    response = httpx.post(f"{server.base_url}{CHAT}", json=body(), timeout=30,
                          headers={"Authorization": "Bearer sk-not-the-key"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert "sk-not-the-key" not in response.text


def test_missing_key_is_401(server: Server) -> None:
    response = httpx.post(f"{server.base_url}{CHAT}", json=body(), timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("content", [b"[]", b'[{"model": "deepseek-v4-pro"}]'])
def test_a_json_array_body_is_400(http: httpx.Client, content: bytes) -> None:
    response = http.post(CHAT, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert error["param"] is None
    assert "object" in error["message"]


@pytest.mark.parametrize("content", [b"{", b""], ids=["truncated", "empty"])
def test_unparseable_body_is_400(http: httpx.Client, content: bytes) -> None:
    response = http.post(CHAT, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_the_server_still_answers_after_bad_requests(http: httpx.Client) -> None:
    response = http.post(CHAT, json=body(max_tokens=3, temperature=0))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
