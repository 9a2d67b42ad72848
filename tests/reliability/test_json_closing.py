"""Grammar-constrained answers always end complete: 320 JSON-mode, `json_schema` and required
tool-call requests on the real model, with prompts that pull toward endless or deeply nested
output and `max_tokens` from 6 to 60 (streamed and not).

Held: every answer whose closing fits in `max_tokens` ends with `stop` (`tool_calls`) and parses
(and validates against its schema); `length` only where the schema's required keys cannot fit.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e import test_tenancy_e2e as tenancy
from tests.e2e.conftest import Server, stop_server
from tests.reliability.harness import MODEL, Row, embedded_config, start_in

model_path = tenancy.model_path

REQUESTS = 320
OFF = {"thinking": {"type": "disabled"}}
PROMPTS = [
    "Write a JSON array of every country in the world with its capital and cities.",
    "Return a JSON object nested 40 levels deep.",
    "Write a JSON object whose values are long strings full of ] and } characters.",
    'Repeat {"a":[{"b":[" forever as JSON.',
    "Describe the history of Rome as JSON, in as much detail as you can.",
    "Write JSON: a list of 1000 numbers.",
    "Give me an object with empty keys and empty values, many of them.",
    "Write a JSON string that contains a whole essay with escaped quotes \\\" in it.",
]
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
    "size": {"enum": ["small", "large"]}}, "required": ["title", "tags", "size"],
    "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "save", "parameters": {
    "type": "object", "properties": {"items": {"type": "array", "items": {"type": "object",
    "properties": {"k": {"type": "string"}, "v": {"type": "string"}}}}},
    "required": ["items"], "additionalProperties": False}}}
# The shortest complete schema answer, `{"title": "", "tags": [], "size": "small"}`, and the
# shortest tool call, `<tool_call>\n{"name": "save", "arguments": {"items": []}}\n</tool_call>`,
# are 15-20 tokens; below that `length` is the honest answer.
SCHEMA_FITS = 20


@pytest.fixture(scope="module")
def json_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_in(tmp_path_factory.mktemp("json"), embedded_config(
        model_path, n_ctx=8192, max_running=8, max_queued=REQUESTS, queue_deadline_s=3600))
    yield server
    stop_server(server)


def request(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    kind = ("json_object", "json_schema", "tool")[i % 3]
    body: dict[str, Any] = {
        "model": MODEL, "max_tokens": rng.randint(6, 60), "temperature": rng.choice([0, 0.7, 1.3]),
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "extra_body": OFF}
    if kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "thing", "schema": SCHEMA}}
    else:
        body.update(tools=[TOOL], tool_choice="required")
    return body


def ask(client: openai.OpenAI, i: int) -> tuple[dict[str, Any], str, list[str]]:
    """The request, its finish_reason and its JSON texts (the content, or each tool call's
    arguments)."""
    body = request(i)
    if i % 2:
        choice = client.chat.completions.create(**body).choices[0]
        calls = choice.message.tool_calls or []
        texts = [c.function.arguments for c in calls] if "tools" in body else [
            choice.message.content or ""]
        return body, choice.finish_reason, texts
    text, args, reason = "", dict[int, str](), ""
    for chunk in client.chat.completions.create(stream=True, **body):
        for c in chunk.choices:
            text += c.delta.content or ""
            for call in c.delta.tool_calls or []:
                piece = call.function.arguments if call.function else None
                args[call.index] = args.get(call.index, "") + (piece or "")
            reason = c.finish_reason or reason
    return body, reason, list(args.values()) if "tools" in body else [text]


def test_grammar_answers_end_complete(json_server: Server, record: Row) -> None:
    client = openai.OpenAI(base_url=json_server.v1, api_key=json_server.api_key, max_retries=0,
                           timeout=600)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: ask(client, i), range(REQUESTS)))
    reasons: Counter[str] = Counter()
    bad: list[str] = []
    for body, reason, texts in results:
        reasons[reason] += 1
        json_object = body.get("response_format", {}).get("type") == "json_object"
        fits = json_object or body["max_tokens"] >= SCHEMA_FITS
        if reason == "length" and not fits:
            continue
        try:
            assert reason in ("stop", "tool_calls") and texts
            for text in texts:
                value = json.loads(text)
                if "tools" in body:
                    jsonschema.validate(value, TOOL["function"]["parameters"])  # type: ignore
                elif body["response_format"]["type"] == "json_schema":
                    jsonschema.validate(value, SCHEMA)
                else:
                    assert isinstance(value, dict)
        except (ValueError, AssertionError, jsonschema.ValidationError) as exc:
            bad.append(f"max_tokens={body['max_tokens']} {reason}: {texts!r:.160} ({exc})")
    record.held = (f"{REQUESTS} grammar requests (json_object, json_schema, required tool "
                   "call; max_tokens 6-60; temperature 0/0.7/1.3; streamed and not), 8 at once")
    record.inputs = f"{len(PROMPTS)} prompts pulling toward endless or deeply nested JSON"
    record.measured = (f"finish reasons {dict(reasons)}; {len(bad)} unparseable or invalid "
                       "where the closing fits")
    record.lost = "-"
    assert not bad, "\n".join(bad[:10])
