"""The three seed documents' example requests, sent as written, answered in each one's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from tests.e2e.conftest import Server

SEED_OPENAPI = Path(__file__).resolve().parents[1] / "data" / "seed_openapi.yaml"

# First seed (000_1ef33bf2cd9372d7.txt): the model id and the `messages` example of its OpenAPI.
FIRST_SEED_REQUEST = """{
"model": "deepseek-v4-pro",
"messages": [
{
"role": "user",
"content": "你好！"
}
]
}"""

# Second seed (002_0e13c11502775976.txt): the curl body, verbatim.
SECOND_SEED_REQUEST = """{
"model": "deepseek-v4-pro",
"messages": [
{
"content": "你好,世界",
"role": "user"
}
],
"system_instruction": "你是一个严谨的助手。",
"temperature": 1,
"top_p": 1,
"max_tokens": 4096,
"stop": [
"\\n\\n"
],
"stream": false,
"stream_options": {
"include_usage": true
},
"thinking": {
"reasoning_effort": "high",
"type": "enabled"
},
"response_format": {
"type": "json_object"
},
"tools": [],
"tool_choice": "auto",
"logprobs": false,
"top_logprobs": 5,
"user_id": "user_123"
}"""

# Third seed (004_07e7240fbf05a252.txt): the curl body, verbatim.
THIRD_SEED_REQUEST = """{
"messages": [
{
"content": "You are a helpful assistant",
"role": "system"
},
{
"content": "Hi",
"role": "user"
}
],
"model": "MaaS_Deepseek_V4_pro_20260424",
"thinking": {
"type": "enabled"
},
"reasoning_effort": "high",
"max_tokens": 4096,
"response_format": {
"type": "text"
},
"stop": null,
"stream": false,
"stream_options": null,
"temperature": 1,
"top_p": 1,
"tools": null,
"tool_choice": "none",
"logprobs": false,
"top_logprobs": null
}"""

# Fields the third seed's response example carries beyond the first seed's schema.
MAAS_USAGE_FIELDS = ("prompt_cache_hit_tokens", "prompt_cache_miss_tokens")


def openapi_nullable_to_json_schema(node: Any) -> Any:
    """The seed writes `nullable: true` (OpenAPI 3.0 style) inside an OpenAPI 3.1 document.

    JSON Schema 2020-12, which 3.1 uses, has no `nullable` and would reject every null the seed
    allows (matched_stop, content, system_fingerprint, ...). Its intent is `type: [T, "null"]`.
    """
    if isinstance(node, list):
        return [openapi_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_nullable_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


@pytest.fixture(scope="module")
def completion_validator() -> jsonschema.Draft202012Validator:
    spec = yaml.safe_load(SEED_OPENAPI.read_text(encoding="utf-8"))
    schema = openapi_nullable_to_json_schema(spec["components"]["schemas"]["ChatCompletion"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.http() as client:
        client.timeout = httpx.Timeout(900)
        yield client


def post_raw(http: httpx.Client, path: str, raw: str, **headers: str) -> httpx.Response:
    """POST the document's JSON text itself, as its curl example does."""
    return http.post(path, content=raw.encode(),
                     headers={"Content-Type": "application/json", **headers})


def assert_valid_completion(validator: jsonschema.Draft202012Validator,
                            body: dict[str, Any], model: str) -> dict[str, Any]:
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # The seed's schema requires nothing; its example response has all of these.
    assert {"id", "object", "created", "model", "choices", "usage",
            "system_fingerprint"} <= set(body)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == model
    assert len(body["choices"]) == 1
    choice: dict[str, Any] = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] >= 1
    return choice


def test_first_seed_example(http: httpx.Client,
                            completion_validator: jsonschema.Draft202012Validator) -> None:
    response = post_raw(http, "/v1/chat/completions", FIRST_SEED_REQUEST)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    choice = assert_valid_completion(completion_validator, body, "deepseek-v4-pro")
    assert choice["matched_stop"] is None
    assert "native_finish_reason" not in choice


def test_second_seed_example_gets_the_output_text_envelope(http: httpx.Client) -> None:
    request = json.loads(SECOND_SEED_REQUEST)
    assert request["stop"] == ["\n\n"]
    response = post_raw(http, "/v1/chat/completions", SECOND_SEED_REQUEST, Host="backend:8000")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"output"}
    assert set(body["output"]) == {"text"}
    text = body["output"]["text"]
    assert isinstance(text, str) and text
    assert "\n\n" not in text


def test_third_seed_example_gets_the_maas_shape(
        http: httpx.Client, completion_validator: jsonschema.Draft202012Validator) -> None:
    response = post_raw(http, "/v1/ai/maas-deepseek/chat/completions", THIRD_SEED_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    choice = assert_valid_completion(completion_validator, body,
                                     "MaaS_Deepseek_V4_pro_20260424")
    assert choice["native_finish_reason"] == choice["finish_reason"]
    usage = body["usage"]
    for field in MAAS_USAGE_FIELDS:
        assert isinstance(usage[field], int) and usage[field] >= 0
    assert (usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"]
            == usage["prompt_tokens"])
    assert usage["prompt_cache_hit_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
    assert isinstance(usage["completion_tokens_details"]["reasoning_tokens"], int)
    assert isinstance(body["system_fingerprint"], str) and body["system_fingerprint"]


def test_the_seed_schema_rejects_a_malformed_completion(
        completion_validator: jsonschema.Draft202012Validator) -> None:
    """The validator has teeth: wrong types and an unlisted finish_reason are caught."""
    bad = {"id": 1, "object": "chat.completion", "created": "now", "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": 5},
                        "finish_reason": "done"}],
           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    paths = {tuple(e.path) for e in completion_validator.iter_errors(bad)}
    assert paths == {("id",), ("created",), ("choices", 0, "message", "content"),
                     ("choices", 0, "finish_reason")}
