"""vLLM's token-level extensions of /v1/completions on a scripted engine that follows its
constraint: token-id prompts, returned token ids (streamed too), grammars and JSON schemas,
stop strings kept, min_tokens, ignore_eos, stop token ids, token ids as logprob names,
cache_salt, and every 400."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from seekserve.engines.base import GenerationRequest, SamplingParams, Segment
from seekserve.engines.remote.tokens import SegmentCall, VllmDialect
from tests.api.conftest import MODEL, REPLY, asgi_client, build_app, chat_body, sse_json
from tests.fakes import END, SPECIALS, ByteTokenizer, FakeEngine

V1 = "/v1/completions"
BETA = "/beta/completions"
VOCAB = SPECIALS + 256
YES_NO = 'start: "yes" | "no"'
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}


def ids(text: str) -> list[int]:
    return [b + SPECIALS for b in text.encode()]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": ids("Say: "), **fields}


async def post(client: httpx.AsyncClient, path: str = V1, **fields: Any) -> dict[str, Any]:
    response = await client.post(path, json=body(**fields))
    assert response.status_code == 200, response.text
    choice: dict[str, Any] = response.json()["choices"][0]
    return choice


async def stream(client: httpx.AsyncClient, **fields: Any) -> list[dict[str, Any]]:
    """The choices of each chunk, usage chunk left out."""
    response = await client.post(V1, json=body(stream=True, **fields))
    assert response.status_code == 200, response.text
    return [c["choices"][0] for c in sse_json(response.text) if c["choices"]]


async def error_of(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post(V1, json=body(**fields))
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def following(reply: str = REPLY, **kwargs: Any) -> FakeEngine:
    return FakeEngine(reply, follow_constraints=True, **kwargs)


@pytest.fixture
def engine() -> FakeEngine:
    return following()


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(build_app(engine)) as c:
        yield c


# ----- token-id prompts -----


@pytest.mark.parametrize("prompt", [ids("Say: "), [ids("Say: ")]])
async def test_a_token_id_prompt_reaches_the_engine_as_given(
        client: httpx.AsyncClient, engine: FakeEngine, prompt: list[Any]) -> None:
    response = await client.post(V1, json=body(prompt=prompt))
    assert response.status_code == 200, response.text
    assert engine.requests[-1].prompt == ids("Say: ")  # no BOS added
    assert response.json()["usage"]["prompt_tokens"] == len("Say: ")
    assert response.json()["choices"][0]["text"] == REPLY


@pytest.mark.parametrize("bad", [VOCAB, 10_000, -1])
async def test_a_token_id_outside_the_vocabulary_is_a_400_naming_the_limit(
        client: httpx.AsyncClient, engine: FakeEngine, bad: int) -> None:
    error = await error_of(client, prompt=[5, bad, 6])
    assert error["param"] == "prompt"
    assert str(bad) in error["message"] and f"< {VOCAB}" in error["message"]
    assert engine.requests == []


async def test_echo_of_token_ids_is_their_text(client: httpx.AsyncClient) -> None:
    assert (await post(client, echo=True))["text"] == "Say: " + REPLY
    chunks = await stream(client, echo=True)
    assert chunks[0]["text"] == "Say: "
    assert "".join(c["text"] for c in chunks) == "Say: " + REPLY


async def test_add_special_tokens_false_adds_no_bos_to_a_text_prompt(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    await post(client, prompt="Hi")
    assert engine.requests[-1].prompt == [0, *ids("Hi")]
    await post(client, prompt="Hi", add_special_tokens=False, skip_special_tokens=False)
    assert engine.requests[-1].prompt == ids("Hi")


async def test_max_tokens_past_the_fim_cap_is_allowed_for_token_ids() -> None:
    engine = following(max_sequence_tokens=8192)
    async with asgi_client(build_app(engine)) as client:
        await post(client, max_tokens=5000)
        assert engine.requests[-1].max_tokens == 5000
        error = await error_of(client, prompt="Say: ", max_tokens=5000)
        assert error["param"] == "max_tokens" and "4096" in error["message"]


# ----- return_token_ids -----


async def test_return_token_ids_gives_the_generated_and_the_prompt_ids(
        client: httpx.AsyncClient) -> None:
    choice = await post(client, return_token_ids=True)
    assert choice["token_ids"] == ids(REPLY)
    assert choice["prompt_token_ids"] == ids("Say: ")
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (
        REPLY, "stop", None)


async def test_without_the_flag_the_choice_keeps_its_shape(client: httpx.AsyncClient) -> None:
    assert set(await post(client)) == {"index", "text", "logprobs", "finish_reason",
                                       "matched_stop"}
    for chunk in await stream(client):
        assert set(chunk) == {"index", "text", "logprobs", "finish_reason", "matched_stop"}


async def test_streamed_token_ids_add_up_to_the_whole_answers(
        client: httpx.AsyncClient) -> None:
    whole = (await post(client, return_token_ids=True))["token_ids"]
    chunks = await stream(client, return_token_ids=True)
    assert [t for c in chunks for t in c["token_ids"]] == whole == ids(REPLY)
    assert chunks[0]["prompt_token_ids"] == ids("Say: ")
    assert all("prompt_token_ids" not in c for c in chunks[1:])
    # Each chunk's ids are the tokens of its text.
    for chunk in chunks:
        assert bytes(t - SPECIALS for t in chunk["token_ids"]).decode() == chunk["text"]
    assert chunks[-1]["finish_reason"] == "stop"


async def test_tokens_of_a_cut_stop_string_are_still_returned(client: httpx.AsyncClient) -> None:
    choice = await post(client, return_token_ids=True, stop="fake")
    assert (choice["text"], choice["matched_stop"], choice["stop_reason"]) == (
        "Hello from the ", "fake", "fake")
    # The engine generated through the end of the stop string; every token is reported.
    assert choice["token_ids"] == ids("Hello from the fake")
    chunks = await stream(client, return_token_ids=True, stop="fake")
    assert [t for c in chunks for t in c["token_ids"]] == ids("Hello from the fake")
    assert "".join(c["text"] for c in chunks) == "Hello from the "


async def test_streamed_ids_and_logprobs_stay_aligned_per_chunk(
        client: httpx.AsyncClient) -> None:
    chunks = await stream(client, return_token_ids=True, logprobs=0,
                          return_tokens_as_token_ids=True, stop="fake")
    tokens = [c for c in chunks if c["token_ids"]]
    for chunk in tokens:
        assert chunk["logprobs"]["tokens"] == [f"token_id:{t}" for t in chunk["token_ids"]]


async def test_our_stream_reads_as_vllm_for_the_remote_token_client(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    """What seekserve's own token-protocol client sends is accepted, and its reader finds the
    generated tokens, their logprobs and how the segment ended."""
    request = GenerationRequest("r", ids("Say: "), 40, SamplingParams(logprobs=True),
                                cache_salt=b"\x01\x02")
    segment = Segment("think", lark=YES_NO, stop=("</think>",), min_tokens=1)
    sent = VllmDialect().body(SegmentCall(ids("Say: "), 40, segment, request), MODEL)
    response = await client.post(V1, json=sent)
    assert response.status_code == 200, response.text
    read = VllmDialect().reader()
    steps = [read(data) for data in sse_json(response.text)]
    tokens = [t for step in steps for t in step.tokens]
    assert [t.token_id for t in tokens] == ids("no")
    assert all(t.logprob == -0.25 for t in tokens)
    assert [s.finish for s in steps if s.finish] == ["eos"]
    assert steps[-1].prompt_tokens == len("Say: ")
    assert engine.requests[-1].cache_salt not in (b"", b"\x01\x02")


# ----- structured_outputs -----


@pytest.mark.parametrize("prefix", ["", "%llguidance {}\n"])
async def test_a_lark_grammar_constrains_the_completion(
        client: httpx.AsyncClient, engine: FakeEngine, prefix: str) -> None:
    choice = await post(client, structured_outputs={"grammar": prefix + YES_NO},
                        return_token_ids=True)
    # The engine would say "Hello..."; the grammar lets only "yes" or "no" through.
    assert (choice["text"], choice["finish_reason"]) == ("no", "stop")
    assert choice["token_ids"] == ids("no")
    assert engine.requests[-1].constraint is not None


async def test_a_grammar_and_min_tokens_combine() -> None:
    grammar = {"grammar": "start: /[a-z ]+/"}
    async with asgi_client(build_app(following("hi"))) as client:
        assert (await post(client, structured_outputs=grammar))["text"] == "hi"
        choice = await post(client, structured_outputs=grammar, min_tokens=5)
        assert choice["text"] == "hi   "  # no end until 5 tokens; a space is the next best


@pytest.mark.parametrize("schema", [SCHEMA, json.dumps(SCHEMA)])
async def test_a_json_schema_constrains_the_completion(client: httpx.AsyncClient,
                                                       schema: Any) -> None:
    choice = await post(client, structured_outputs={"json": schema})
    jsonschema.validate(json.loads(choice["text"]), SCHEMA)


async def test_null_or_false_options_of_vllm_are_ignored(client: httpx.AsyncClient) -> None:
    outputs = {"grammar": YES_NO, "regex": None, "disable_any_whitespace": False}
    assert (await post(client, structured_outputs=outputs))["text"] == "no"


async def test_a_grammar_that_does_not_compile_is_a_400_with_llguidances_reason(
        client: httpx.AsyncClient, engine: FakeEngine) -> None:
    error = await error_of(client, structured_outputs={"grammar": "start: foo"})
    assert error["param"] == "structured_outputs.grammar"
    assert 'unknown name: "foo"' in error["message"]
    error = await error_of(client, structured_outputs={"json": {"type": "strin"}})
    assert error["param"] == "structured_outputs.json" and "strin" in error["message"]
    assert engine.requests == []


class PlainTokenizer(ByteTokenizer):
    def grammar_vocabulary(self) -> None:
        return None


async def test_an_engine_that_cannot_constrain_refuses_a_grammar() -> None:
    engine = following()
    engine.tokenizer = PlainTokenizer()
    async with asgi_client(build_app(engine)) as client:
        error = await error_of(client, structured_outputs={"grammar": YES_NO})
    assert error["param"] == "structured_outputs"
    assert "cannot constrain" in error["message"]


# ----- stops and length -----


async def test_include_stop_str_in_output_keeps_the_stop_string(
        client: httpx.AsyncClient) -> None:
    choice = await post(client, stop="fake", include_stop_str_in_output=True)
    assert (choice["text"], choice["finish_reason"], choice["matched_stop"]) == (
        "Hello from the fake", "stop", "fake")
    chunks = await stream(client, stop="fake", include_stop_str_in_output=True)
    assert "".join(c["text"] for c in chunks) == "Hello from the fake"
    assert chunks[-1]["matched_stop"] == "fake"


async def test_min_tokens_holds_off_the_end() -> None:
    async with asgi_client(build_app(following("Hi"))) as client:
        response = await client.post(V1, json=body(min_tokens=5))
        result = response.json()
        assert result["choices"][0]["text"] == "Hi   "
        assert result["usage"]["completion_tokens"] == 6  # five, then the end token
        assert (await post(client, min_tokens=2))["text"] == "Hi"


async def test_ignore_eos_generates_up_to_max_tokens() -> None:
    async with asgi_client(build_app(following("Hi"))) as client:
        choice = await post(client, ignore_eos=True, max_tokens=6)
    assert (choice["text"], choice["finish_reason"]) == ("Hi    ", "length")


async def test_a_stop_token_id_ends_the_completion_and_is_reported(
        client: httpx.AsyncClient) -> None:
    f = ids("f")[0]
    choice = await post(client, stop_token_ids=[f, END], return_token_ids=True)
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (
        "Hello ", "stop", f)
    assert choice["token_ids"] == ids("Hello f")
    kept = await post(client, stop_token_ids=[f], include_stop_str_in_output=True)
    assert (kept["text"], kept["stop_reason"]) == ("Hello f", f)
    chunks = await stream(client, stop_token_ids=[f])
    assert "".join(c["text"] for c in chunks) == "Hello "
    assert chunks[-1]["stop_reason"] == f


# ----- logprobs named by token id -----


async def test_return_tokens_as_token_ids_names_tokens_by_id(client: httpx.AsyncClient) -> None:
    logprobs = (await post(client, logprobs=1, max_tokens=3,
                           return_tokens_as_token_ids=True))["logprobs"]
    named = [f"token_id:{t}" for t in ids("Hel")]
    assert logprobs["tokens"] == named
    assert logprobs["token_logprobs"] == [-0.25] * 3
    assert logprobs["text_offset"] == [0, 1, 2]
    assert [set(top) for top in logprobs["top_logprobs"]] == [{name} for name in named]
    plain = (await post(client, logprobs=1, max_tokens=3))["logprobs"]
    assert plain["tokens"] == list("Hel")


async def test_chat_logprobs_carry_no_token_ids() -> None:
    async with asgi_client(build_app(FakeEngine(REPLY))) as client:
        response = await client.post("/v1/chat/completions",
                                     json=chat_body(logprobs=True, top_logprobs=2))
        content = response.json()["choices"][0]["logprobs"]["content"]
        assert content and all(set(e) == {"token", "logprob", "bytes", "top_logprobs"}
                               for e in content)
        assert all(set(t) == {"token", "logprob", "bytes"}
                   for e in content for t in e["top_logprobs"])
        response = await client.post("/v1/chat/completions",
                                     json=chat_body(logprobs=True, stream=True))
        streamed = [e for c in sse_json(response.text) for choice in c["choices"]
                    if choice["logprobs"] for e in choice["logprobs"]["content"]]
        assert streamed and all("id" not in e for e in streamed)


# ----- cache_salt -----


async def test_cache_salt_splits_the_prefix_cache(engine: FakeEngine) -> None:
    app = build_app(engine, api_keys=["sk-one", "sk-two"])
    async with asgi_client(app) as client:

        async def salt(key: str, cache_salt: str | None) -> bytes:
            fields = {"cache_salt": cache_salt} if cache_salt is not None else {}
            response = await client.post(V1, json=body(**fields),
                                         headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200, response.text
            return engine.requests[-1].cache_salt

        a, b = await salt("sk-one", "a"), await salt("sk-one", "b")
        assert a != b
        assert await salt("sk-one", "a") == a
        assert await salt("sk-one", None) not in (a, b)
        # The key's own part stays: another key with the same client salt is elsewhere.
        assert await salt("sk-two", "a") != a


# ----- bad requests -----


@pytest.mark.parametrize(("fields", "param"), [
    ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt[0]"),
    ({"prompt": [5, 6], "suffix": "x"}, "suffix"),
    ({"prompt": [VOCAB]}, "prompt"),
    ({"stop_token_ids": [VOCAB]}, "stop_token_ids"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    ({"cache_salt": ""}, "cache_salt"),
    ({"cache_salt": "x" * 257}, "cache_salt"),
    ({"skip_special_tokens": True}, "skip_special_tokens"),
    ({"return_token_ids": "yes"}, "return_token_ids"),
    ({"structured_outputs": {"regex": "a+"}}, "structured_outputs"),
    ({"structured_outputs": {"choice": ["a", "b"], "grammar": YES_NO}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": YES_NO, "json": SCHEMA}}, "structured_outputs"),
    ({"structured_outputs": {"grammar": "start: foo"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": "[1]"}}, "structured_outputs.json"),
    ({"structured_outputs": {"json": 5}}, "structured_outputs.json"),
])
async def test_a_bad_token_field_is_a_400_naming_it(
        client: httpx.AsyncClient, engine: FakeEngine, fields: dict[str, Any],
        param: str) -> None:
    error = await error_of(client, **fields)
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", param, "invalid_parameter")
    assert error["message"]
    assert engine.requests == []


async def test_the_regex_refusal_names_what_is_supported(client: httpx.AsyncClient) -> None:
    error = await error_of(client, structured_outputs={"regex": "a+"})
    assert "regex" in error["message"]
    assert "grammar" in error["message"] and "json" in error["message"]


async def test_the_beta_route_takes_the_same_fields(client: httpx.AsyncClient) -> None:
    choice = await post(client, BETA, return_token_ids=True, structured_outputs={
        "grammar": YES_NO})
    assert (choice["text"], choice["token_ids"]) == ("no", ids("no"))
