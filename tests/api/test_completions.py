"""Text completions on a scripted engine: FIM and plain prompts as the engine receives them,
the `text_completion` shape (streamed too), legacy logprobs, echo, every 400, the usage row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from seekserve.app import create_app
from seekserve.engines.base import EngineFailure, GenerationEvent, GenerationRequest, TokenEvent
from seekserve.settings import Settings
from seekserve.tenancy.schema import usage
from tests.api.conftest import (
    MODEL,
    REPLY,
    asgi_client,
    build_app,
    chat_body,
    live_server,
    sse_json,
    sse_payloads,
)
from tests.fakes import SPECIALS, ByteTokenizer, FakeEngine

BETA = "/beta/completions"
V1 = "/v1/completions"
FIM_MARKERS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
# Past the 256 byte tokens, as in Qwen's vocabulary where they follow the ordinary tokens.
PRE, SUF, MID = (256 + SPECIALS + i for i in range(3))
PROMPT = "def add(a, b):\n"
SUFFIX = "\n\nprint(add(1, 2))\n"


class FimTokenizer(ByteTokenizer):
    """The byte tokenizer with Qwen's three FIM markers as special tokens; like a real
    tokenizer it also reads BOS and EOS written as text when asked to parse specials."""

    SPECIAL_IDS: ClassVar[dict[str, int]] = {
        "<s>": 0, "</s>": 1, **{m: PRE + i for i, m in enumerate(FIM_MARKERS)}}

    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True
               ) -> list[int]:
        ids = [0] if add_special else []
        rest = text
        while rest:
            hits = [(rest.find(s), s) for s in self.SPECIAL_IDS if parse_special and s in rest]
            if not hits:
                ids += super().encode(rest)
                break
            at, special = min(hits)
            ids += [*super().encode(rest[:at]), self.SPECIAL_IDS[special]]
            rest = rest[at + len(special):]
        return ids

    def piece(self, token_id: int) -> bytes:
        if token_id >= PRE:
            return FIM_MARKERS[token_id - PRE].encode()
        return super().piece(token_id)


def fim_engine(reply: str = REPLY, **kwargs: Any) -> FakeEngine:
    engine = FakeEngine(reply, **kwargs)
    engine.tokenizer = FimTokenizer()
    return engine


def text_bytes(text: str) -> list[int]:
    return [b + SPECIALS for b in text.encode()]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "suffix": SUFFIX, **fields}


async def post(client: httpx.AsyncClient, path: str = BETA, **fields: Any) -> dict[str, Any]:
    response = await client.post(path, json=body(**fields))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stream(client: httpx.AsyncClient, path: str = BETA, **fields: Any
                 ) -> tuple[list[str], list[dict[str, Any]]]:
    response = await client.post(path, json=body(stream=True, **fields))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_payloads(response.text), sse_json(response.text)


@pytest.fixture
def engine() -> FakeEngine:
    return fim_engine()


@pytest.fixture
def app(engine: FakeEngine, tmp_path: Path) -> FastAPI:
    return build_app(engine, data_dir=tmp_path / "data",
                     store={"journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05})


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


async def usage_rows(app: FastAPI) -> list[dict[str, Any]]:
    tenancy = app.state.services.tenancy
    await tenancy.ledger.flush()
    async with tenancy.store.read() as conn:
        return [dict(r) for r in (await conn.execute(select(usage))).mappings().all()]


# ----- what the engine is asked -----


async def test_fim_prompt_is_framed_by_the_models_fim_tokens(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    result = await post(client)
    expected = [0, PRE, *text_bytes(PROMPT), SUF, *text_bytes(SUFFIX), MID]
    assert engine.requests[-1].prompt == expected
    assert result["usage"]["prompt_tokens"] == len(expected)


async def test_markers_written_in_the_prompt_stay_text(client: httpx.AsyncClient,
                                                       engine: FakeEngine) -> None:
    await post(client, prompt="a<|fim_middle|>b", suffix="<|fim_prefix|>")
    assert engine.requests[-1].prompt == [
        0, PRE, *text_bytes("a<|fim_middle|>b"), SUF, *text_bytes("<|fim_prefix|>"), MID]


@pytest.mark.parametrize("suffix", [None, ""])
async def test_without_a_suffix_the_prompt_is_completed_raw(
        client: httpx.AsyncClient, engine: FakeEngine, suffix: str | None) -> None:
    result = await post(client, V1, prompt="Once upon a time", suffix=suffix)
    assert engine.requests[-1].prompt == [0, *text_bytes("Once upon a time")]
    assert result["choices"][0]["text"] == REPLY


async def test_a_plain_prompt_may_carry_special_tokens(client: httpx.AsyncClient,
                                                       engine: FakeEngine) -> None:
    await post(client, V1, prompt="<s>x<|fim_middle|>", suffix=None)
    # It starts with BOS's text already, so no second BOS; the caller's marker is a token.
    assert engine.requests[-1].prompt == [0, *text_bytes("x"), MID]


async def test_sampling_fields_reach_the_engine(client: httpx.AsyncClient,
                                                engine: FakeEngine) -> None:
    await post(client, temperature=0.3, top_p=0.9, seed=11, logprobs=4, max_tokens=7,
               frequency_penalty=1, presence_penalty=-1)
    request = engine.requests[-1]
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed, sampling.logprobs,
            sampling.top_logprobs, request.max_tokens) == (0.3, 0.9, 11, True, 4, 7)


async def test_max_tokens_defaults_to_the_fim_cap() -> None:
    engine = fim_engine(max_sequence_tokens=8192)
    async with asgi_client(build_app(engine)) as client:
        await post(client)
    assert engine.requests[-1].max_tokens == 4096


async def test_max_tokens_defaults_to_what_the_context_leaves() -> None:
    engine = fim_engine(max_sequence_tokens=100)
    async with asgi_client(build_app(engine)) as client:
        await post(client)
    prompt = engine.requests[-1].prompt
    assert engine.requests[-1].max_tokens == 100 - len(prompt)


# ----- the text_completion shape -----


@pytest.mark.parametrize("path", [BETA, V1])
async def test_a_completion_has_the_text_completion_shape(client: httpx.AsyncClient,
                                                          path: str) -> None:
    before = int(time.time())
    result = await post(client, path)
    assert set(result) == {"id", "object", "created", "model", "choices", "usage",
                           "system_fingerprint"}
    assert result["object"] == "text_completion"
    assert result["id"].startswith("cmpl-") and len(result["id"]) > len("cmpl-")
    assert before - 1 <= result["created"] <= int(time.time()) + 1
    assert result["model"] == MODEL
    assert isinstance(result["system_fingerprint"], str) and result["system_fingerprint"]
    assert result["choices"] == [{"index": 0, "text": REPLY, "logprobs": None,
                                  "finish_reason": "stop", "matched_stop": None}]
    used = result["usage"]
    prompt = 3 + 1 + len(PROMPT) + len(SUFFIX)  # three markers and BOS
    assert used == {
        "prompt_tokens": prompt, "completion_tokens": len(REPLY) + 1,
        "total_tokens": prompt + len(REPLY) + 1,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
        "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": prompt,
    }


async def test_the_model_is_echoed_as_requested(client: httpx.AsyncClient) -> None:
    result = await post(client, model="MaaS_Deepseek_V4_pro_20260424")
    assert result["model"] == "MaaS_Deepseek_V4_pro_20260424"


async def test_a_prompt_in_an_array_of_one(client: httpx.AsyncClient,
                                           engine: FakeEngine) -> None:
    await post(client, prompt=[PROMPT])
    assert engine.requests[-1].prompt[2:2 + len(PROMPT)] == text_bytes(PROMPT)


async def test_stop_cuts_the_text_and_is_named(client: httpx.AsyncClient) -> None:
    choice = (await post(client, stop=["zzz", "fake"]))["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["matched_stop"]) == (
        "Hello from the ", "stop", "fake")


async def test_max_tokens_ends_with_length(client: httpx.AsyncClient) -> None:
    result = await post(client, max_tokens=5)
    assert (result["choices"][0]["text"], result["choices"][0]["finish_reason"]) == (
        "Hello", "length")
    assert result["usage"]["completion_tokens"] == 5


async def test_echo_puts_the_prompt_not_the_suffix_before_the_text(
        client: httpx.AsyncClient) -> None:
    assert (await post(client, echo=True))["choices"][0]["text"] == PROMPT + REPLY


async def test_logprobs_in_the_legacy_shape(client: httpx.AsyncClient) -> None:
    logprobs = (await post(client, logprobs=2, max_tokens=4))["choices"][0]["logprobs"]
    assert logprobs["tokens"] == list("Hell")
    assert logprobs["token_logprobs"] == [-0.25] * 4
    # The scripted engine ranks the token itself (-0.5), then the next byte (-1.0).
    assert logprobs["top_logprobs"] == [{c: -0.5, chr(ord(c) + 1): -1.0} for c in "Hell"]
    assert logprobs["text_offset"] == [0, 1, 2, 3]


async def test_logprobs_zero_gives_the_sampled_token_alone(client: httpx.AsyncClient) -> None:
    logprobs = (await post(client, logprobs=0, max_tokens=2))["choices"][0]["logprobs"]
    assert logprobs["top_logprobs"] == [{"H": -0.25}, {"e": -0.25}]


async def test_text_offsets_count_characters_not_bytes() -> None:
    async with asgi_client(build_app(fim_engine("héllo wörld"))) as client:
        choice = (await post(client, logprobs=0))["choices"][0]
    text, logprobs = choice["text"], choice["logprobs"]
    assert text == "héllo wörld"
    # ö and é are two byte tokens each (their pieces are not text alone); every whole token
    # sits at its offset in the text.
    offsets = logprobs["text_offset"]
    assert offsets == sorted(offsets) and offsets[0] == 0
    whole = [(t, o) for t, o in zip(logprobs["tokens"], offsets, strict=True) if t != "\ufffd"]
    assert [t for t, _ in whole] == list("hllo wrld")
    assert all(text[o] == t for t, o in whole)


async def test_logprobs_stop_at_the_stop_string(client: httpx.AsyncClient) -> None:
    choice = (await post(client, logprobs=0, stop="lo"))["choices"][0]
    assert choice["text"] == "Hel"
    # Tokens of the stop string are not in the text, so not in the logprobs either.
    assert choice["logprobs"]["tokens"] == list("Hel")
    assert choice["logprobs"]["text_offset"] == [0, 1, 2]


# ----- streamed -----


async def test_stream_sends_text_pieces_then_the_finish_then_done(
        client: httpx.AsyncClient) -> None:
    payloads, chunks = await stream(client, stop="fake")
    assert payloads[-1] == "[DONE]"
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from the "
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [{"index": 0, "text": "", "logprobs": None,
                                      "finish_reason": "stop", "matched_stop": "fake"}]


async def test_stream_with_include_usage_ends_with_a_usage_chunk(
        client: httpx.AsyncClient) -> None:
    whole = await post(client)
    _, chunks = await stream(client, stream_options={"include_usage": True})
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_streamed_logprobs_keep_their_offsets_across_chunks(
        client: httpx.AsyncClient) -> None:
    _, chunks = await stream(client, logprobs=1)
    pieces = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert len(pieces) > 1
    assert [t for p in pieces for t in p["tokens"]] == list(REPLY)
    assert [o for p in pieces for o in p["text_offset"]] == list(range(len(REPLY)))


async def test_streamed_echo_comes_first(client: httpx.AsyncClient) -> None:
    _, chunks = await stream(client, echo=True)
    assert chunks[0]["choices"][0]["text"] == PROMPT
    assert "".join(c["choices"][0]["text"] for c in chunks) == PROMPT + REPLY


# ----- bad requests -----


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"prompt": None}, "prompt", "invalid_parameter"),
    ({"prompt": [PROMPT, PROMPT]}, "prompt", "invalid_parameter"),
    ({"prompt": []}, "prompt", "invalid_parameter"),
    ({"prompt": [1, 2, 3]}, "suffix", "invalid_parameter"),  # token ids cannot be framed
    ({"suffix": 5}, "suffix", "invalid_parameter"),
    ({"n": 2}, "n", "invalid_parameter"),
    ({"best_of": 3}, "best_of", "invalid_parameter"),
    ({"logprobs": 21}, "logprobs", "invalid_parameter"),
    ({"logprobs": -1}, "logprobs", "invalid_parameter"),
    ({"logprobs": True}, "logprobs", "invalid_parameter"),
    ({"stop": [f"s{i}" for i in range(17)]}, "stop", "invalid_parameter"),
    ({"stop": ""}, "stop", "invalid_parameter"),
    ({"stop": ["ok", 3]}, "stop[1]", "invalid_parameter"),
    ({"stop": "x" * 257}, "stop", "invalid_parameter"),
    ({"max_tokens": 0}, "max_tokens", "invalid_parameter"),
    ({"max_tokens": 4097}, "max_tokens", "invalid_parameter"),
    ({"temperature": 2.5}, "temperature", "invalid_parameter"),
    ({"top_p": 1.5}, "top_p", "invalid_parameter"),
    ({"echo": "yes"}, "echo", "invalid_parameter"),
    ({"echo": True, "logprobs": 1}, "echo", "invalid_parameter"),
    ({"user_id": "a b"}, "user_id", "invalid_parameter"),
    ({"user": "alice", "user_id": "bob"}, "user", "invalid_parameter"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage",
     "invalid_parameter"),
])
async def test_a_bad_field_is_a_400_naming_it(client: httpx.AsyncClient, fields: dict[str, Any],
                                              param: str, code: str) -> None:
    response = await client.post(BETA, json=body(**fields))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", param, code)
    assert error["message"]


@pytest.mark.parametrize("missing", ["model", "prompt"])
async def test_a_missing_field_is_a_400_naming_it(client: httpx.AsyncClient,
                                                  missing: str) -> None:
    fields = body()
    del fields[missing]
    response = await client.post(V1, json=fields)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (missing, "missing_required_parameter")


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]"])
async def test_a_body_that_is_not_a_json_object_is_400(client: httpx.AsyncClient,
                                                       content: bytes) -> None:
    response = await client.post(BETA, content=content,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_an_empty_plain_prompt_is_400(client: httpx.AsyncClient) -> None:
    engine = fim_engine()
    engine.tokenizer.add_bos = False
    async with asgi_client(build_app(engine)) as no_bos:
        response = await no_bos.post(V1, json=body(prompt="", suffix=None))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


async def test_a_model_without_fim_tokens_refuses_a_suffix() -> None:
    async with asgi_client(build_app(FakeEngine(REPLY))) as client:
        response = await client.post(BETA, json=body())
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("suffix", "fim_not_supported")
        assert "fill-in-the-middle" in error["message"]
        # The same model completes the prompt alone.
        plain = await client.post(BETA, json=body(suffix=None))
        assert plain.status_code == 200
        assert plain.json()["choices"][0]["text"] == REPLY


async def test_a_prompt_over_the_context_is_400() -> None:
    async with asgi_client(build_app(fim_engine(max_sequence_tokens=64))) as client:
        response = await client.post(BETA, json=body(prompt="x" * 80))
        error = response.json()["error"]
        assert (response.status_code, error["param"], error["code"]) == (
            400, "prompt", "context_length_exceeded")
        assert "64" in error["message"]
        response = await client.post(BETA, json=body(max_tokens=40))
        error = response.json()["error"]
        assert (response.status_code, error["param"], error["code"]) == (
            400, "max_tokens", "context_length_exceeded")


async def test_a_model_without_a_token_engine_is_400(engine: FakeEngine, tmp_path: Path
                                                     ) -> None:
    # The model's engine is not among the token engines (as with a remote chat pass-through).
    app = create_app(Settings.load(None, data_dir=tmp_path), {"elsewhere": engine})
    async with asgi_client(app) as client:
        response = await client.post(BETA, json=body())
    error = response.json()["error"]
    assert (response.status_code, error["param"], error["code"]) == (
        400, "model", "unsupported_model")
    assert engine.requests == []


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(BETA, json=body(model="gpt-3.5-turbo-instruct"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("fields", [{"prompt": "say badword"}, {"suffix": "# badword"}])
async def test_a_flagged_prompt_or_suffix_is_refused(engine: FakeEngine,
                                                     fields: dict[str, Any]) -> None:
    app = build_app(engine, moderation={"rules": {"words": ["badword"]}})
    async with asgi_client(app) as client:
        response = await client.post(BETA, json=body(**fields))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "content_filter"
        assert (await client.post(BETA, json=body())).status_code == 200
    assert len(engine.requests) == 1


async def test_flagged_output_ends_with_content_filter() -> None:
    engine = fim_engine("The secret is badword, and that is all I will ever say about it.")
    app = build_app(engine, moderation={"rules": {"words": ["badword"]}})
    async with asgi_client(app) as client:
        choice = (await post(client))["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == ("The secret is ", "content_filter")
        _, chunks = await stream(client)
        assert "".join(c["choices"][0]["text"] for c in chunks) == "The secret is "
        assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


async def test_a_key_is_required_when_keys_are_configured(engine: FakeEngine) -> None:
    async with asgi_client(build_app(engine, api_keys=["sk-c"])) as client:
        assert (await client.post(BETA, json=body())).status_code == 401
        response = await client.post(BETA, json=body(),
                                     headers={"Authorization": "Bearer sk-c"})
        assert response.status_code == 200


# ----- accounting -----


async def test_a_completion_leaves_one_usage_row(app: FastAPI,
                                                 client: httpx.AsyncClient) -> None:
    result = await post(client, user="carol", max_tokens=5)
    rows = await usage_rows(app)
    assert [r["request_id"] for r in rows] == [result["id"]]
    row = rows[0]
    assert {k: row[k] for k in ("user_id", "model", "deployment", "route", "status",
                                "prompt_tokens", "completion_tokens")} == {
        "user_id": "carol", "model": MODEL, "deployment": "deepseek", "route": BETA,
        "status": "length", "prompt_tokens": result["usage"]["prompt_tokens"],
        "completion_tokens": 5}


async def test_a_streamed_completion_leaves_one_row_too(app: FastAPI,
                                                        client: httpx.AsyncClient) -> None:
    _, chunks = await stream(client, V1, user_id="dave")
    [row] = await usage_rows(app)
    assert (row["request_id"], row["route"], row["user_id"], row["status"],
            row["completion_tokens"]) == (chunks[0]["id"], V1, "dave", "completed",
                                          len(REPLY) + 1)


async def test_a_refused_request_leaves_no_row(app: FastAPI, client: httpx.AsyncClient) -> None:
    assert (await client.post(BETA, json=body(n=3))).status_code == 400
    assert await usage_rows(app) == []


class FailingEngine(FakeEngine):
    """Generates three tokens of its reply, then fails."""

    async def generate(self, request: GenerationRequest
                       ) -> AsyncGenerator[GenerationEvent, None]:
        self.requests.append(request)
        for token in self.tokenizer.encode(self.reply)[:3]:
            yield TokenEvent(token)
        raise EngineFailure("llama_decode returned -3")


async def test_an_engine_failure_mid_stream_is_one_error_event_and_a_failed_row(
        tmp_path: Path) -> None:
    engine = FailingEngine(REPLY)
    engine.tokenizer = FimTokenizer()
    app = build_app(engine, data_dir=tmp_path)
    async with asgi_client(app) as client:
        response = await client.post(BETA, json=body(stream=True))
        assert response.status_code == 200
        assert "[DONE]" not in sse_payloads(response.text)
        events = sse_json(response.text)
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Hel"
        assert events[-1]["error"]["code"] == "engine_error"
        [row] = await usage_rows(app)
        assert row["status"] == "failed"


async def wait_until(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def test_a_client_leaving_a_stream_stops_the_generation(tmp_path: Path) -> None:
    engine = fim_engine("word " * 400, delay=0.05)  # 2000 tokens: 100 s if nobody stops it
    app = build_app(engine, data_dir=tmp_path)
    async with live_server(app) as base_url, \
            httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        async with http.stream("POST", BETA, json=body(stream=True)) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break
            assert engine.active == 1
        assert await wait_until(lambda: engine.active == 0, within=1.0), \
            "the generation went on after the client left"
        for _ in range(100):
            rows = await usage_rows(app)
            if rows:
                break
            await asyncio.sleep(0.02)
        assert [r["status"] for r in rows] == ["cancelled"]
        assert 3 <= rows[0]["completion_tokens"] < 2000


# ----- the beta chat route and the OpenAPI description -----


async def test_prefix_completion_answers_on_the_beta_chat_route(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    messages = [{"role": "user", "content": "Write add."},
                {"role": "assistant", "content": "def add(", "prefix": True}]
    response = await client.post("/beta/chat/completions", json=chat_body(messages=messages))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["content"] == REPLY
    # The continuation is the end of the prompt the engine received.
    assert engine.requests[-1].prompt[-len("def add("):] == text_bytes("def add(")


async def test_openapi_describes_the_completion_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in (BETA, V1, "/beta/chat/completions"):
        operation = spec["paths"][path]["post"]
        assert operation["summary"] and operation["tags"]
        assert operation["requestBody"]["required"] is True
    schemas = spec["components"]["schemas"]
    request = schemas["CompletionRequest"]
    assert set(request["required"]) == {"model", "prompt"}
    for field in ("suffix", "echo", "logprobs", "stop", "stream_options", "user_id", "user"):
        assert field in request["properties"]
    assert request["properties"]["logprobs"]["anyOf"][0]["maximum"] == 20
    assert schemas["TextCompletion"]["properties"]["object"]["const"] == "text_completion"
