"""The token protocol's engine against a scripted vLLM-shaped upstream (httpx MockTransport) and
the real default vocabulary: what each segment asks for (prompt so far, cap, grammar, stop,
salt), how thinking budgets are forced between segments, how an end inside a thinking block is
turned into a close, and how answers and logprobs read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from seekserve.app import default_model_path
from seekserve.chat.plan import THINK_CLOSE, build_constraint, plan_output
from seekserve.chat.structured import GrammarCompiler
from seekserve.chat.thinking import ThinkingPlan
from seekserve.engines.base import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    StartEvent,
    TokenEvent,
)
from seekserve.engines.remote.tokens import LARK_PREFIX, RemoteTokenEngine, SglangDialect
from seekserve.protocol.errors import UpstreamError
from seekserve.protocol.openai_chat import ChatCompletionRequest, to_chat_request
from seekserve.settings import RemoteEngineSettings, default_data_dir

RECORDED = Path(__file__).parent / "recorded"
Script = Callable[[dict[str, Any]], list[dict[str, Any]]]


def settings(upstream: str = "vllm", **extra: Any) -> RemoteEngineSettings:
    return RemoteEngineSettings.model_validate({
        "upstream": upstream, "protocol": "tokens", "health_interval_s": 0, "retries": 0,
        "replicas": [{"base_url": "http://up:8000", "model": "m"}], **extra})


def sse(messages: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(m).encode() + b"\n\n" for m in messages) \
        + b"data: [DONE]\n\n"


def chunk(ids: list[int], finish: str | None = None, stop_reason: Any = None,
          logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "choices": [{
        "index": 0, "text": "", "token_ids": ids, "logprobs": logprobs,
        "finish_reason": finish, "stop_reason": stop_reason}], "usage": None}


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}}


class Upstream:
    """Answers each POST with the messages `script(body)` returns; keeps the bodies."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        self.paths.append(request.url.path)
        return httpx.Response(200, content=sse(self.script(body)),
                              headers={"content-type": "text/event-stream"})


@pytest.fixture(scope="module")
def gguf() -> Path:
    return default_model_path(default_data_dir(), progress=False)


async def run(engine: RemoteTokenEngine, request: GenerationRequest) -> list[GenerationEvent]:
    await engine.start()
    try:
        return [event async for event in engine.generate(request)]
    finally:
        await engine.aclose()


def text_of(engine: RemoteTokenEngine, events: list[GenerationEvent]) -> str:
    return b"".join(engine.tokenizer.piece(e.token_id) for e in events
                    if isinstance(e, TokenEvent)).decode()


def chat_constraint(engine: RemoteTokenEngine, *, thinking: int | None = None,
                    max_tokens: int = 200, **fields: Any) -> Any:
    req = to_chat_request(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}))
    plan = plan_output(req, ThinkingPlan(thinking is not None, "high", thinking or 0))
    compiler = GrammarCompiler(engine.tokenizer.grammar_vocabulary())
    return build_constraint(plan, req, engine.tokenizer, compiler, max_tokens=max_tokens)


def request(engine: RemoteTokenEngine, constraint: Any = None, *, max_tokens: int = 200,
            sampling: SamplingParams | None = None) -> GenerationRequest:
    return GenerationRequest("r1", engine.tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n"),
                             max_tokens, sampling or SamplingParams(temperature=0.0),
                             cache_salt=b"\x01\x02", constraint=constraint)


async def test_a_thinking_budget_is_forced_between_two_segments(gguf: Path) -> None:
    probe = RemoteTokenEngine("e", settings(), gguf)
    tok = probe.tokenizer
    thought = tok.encode(" Let me think about it carefully and slowly", parse_special=False)
    answer = tok.encode("Hello!", parse_special=False)

    def script(body: dict[str, Any]) -> list[dict[str, Any]]:
        if "stop" in body:  # the thinking segment: the model runs past its budget
            return [chunk(thought[:4]), chunk(thought[4:body["max_tokens"]], "length"),
                    usage(len(body["prompt"]), body["max_tokens"], 3)]
        return [chunk(answer), chunk([tok.end_tokens()[0]], "stop"),
                usage(len(body["prompt"]), len(answer) + 1, 20)]

    upstream = Upstream(script)
    engine = RemoteTokenEngine("e", settings(), gguf, transport=httpx.MockTransport(upstream))
    req = request(engine, chat_constraint(engine, thinking=6))
    events = await run(engine, req)

    first, second = upstream.bodies
    assert upstream.paths == ["/v1/completions", "/v1/completions"]
    assert first["prompt"] == req.prompt and first["max_tokens"] == 6
    assert first["stop"] == ["</think>"] and first["include_stop_str_in_output"] is True
    assert first["return_token_ids"] is True and first["cache_salt"] == "0102"
    assert "structured_outputs" not in first
    close = tok.encode(THINK_CLOSE, parse_special=False)
    assert second["prompt"] == req.prompt + thought[:6] + close  # the close was forced here
    assert "stop" not in second and second["max_tokens"] == 200 - 6 - len(close)
    assert isinstance(events[0], StartEvent) and isinstance(events[-1], FinishEvent)
    assert text_of(engine, events).endswith("</think>\n\nHello!")
    finish = events[-1]
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens, finish.cached_tokens) \
        == ("eos", len(req.prompt), 6 + len(close) + len(answer) + 1, 3)  # + the end token
    assert req.constraint.reasoning_tokens == 6 + len(close)


async def test_an_end_inside_the_thinking_block_closes_it_and_an_answer_must_follow(
        gguf: Path) -> None:
    probe = RemoteTokenEngine("e", settings(), gguf)
    tok = probe.tokenizer
    end = tok.end_tokens()[0]

    def script(body: dict[str, Any]) -> list[dict[str, Any]]:
        if "stop" in body:
            return [chunk(tok.encode("The answer is 4.", parse_special=False)),
                    chunk([end], "stop")]
        return [chunk(tok.encode("4", parse_special=False)), chunk([end], "stop")]

    upstream = Upstream(script)
    engine = RemoteTokenEngine("e", settings(), gguf, transport=httpx.MockTransport(upstream))
    events = await run(engine, request(engine, chat_constraint(engine, thinking=50)))
    assert upstream.bodies[1]["min_tokens"] == 1  # the end is banned until some answer
    assert text_of(engine, events) == "The answer is 4.\n</think>\n\n4"
    assert events[-1].reason == "eos"


async def test_json_mode_sends_its_grammar_and_reads_the_answer(gguf: Path) -> None:
    probe = RemoteTokenEngine("e", settings(), gguf)
    tok = probe.tokenizer
    answer = tok.encode('{"a":1}', parse_special=False)

    upstream = Upstream(lambda body: [chunk(answer, "stop")])
    engine = RemoteTokenEngine("e", settings(), gguf, transport=httpx.MockTransport(upstream))
    constraint = chat_constraint(engine, response_format={"type": "json_object"})
    events = await run(engine, request(engine, constraint))
    grammar = upstream.bodies[0]["structured_outputs"]["grammar"]
    assert grammar.startswith(LARK_PREFIX) and "%json" in grammar
    assert text_of(engine, events) == '{"a":1}' and events[-1].reason == "eos"
    assert constraint.finished  # the local matcher followed the upstream's tokens to the end


async def test_tool_choice_auto_sends_prose_or_calls_and_none_bans_the_call_token(
        gguf: Path) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}]
    upstream = Upstream(lambda body: [chunk([], "stop")])
    engine = RemoteTokenEngine("e", settings(), gguf, transport=httpx.MockTransport(upstream))
    await run(engine, request(engine, chat_constraint(engine, tools=tools)))
    await run(engine, request(engine, chat_constraint(engine, tools=tools, tool_choice="none")))
    auto, none = (b["structured_outputs"]["grammar"] for b in upstream.bodies)
    assert "start: prose | prose calls" in auto and "<tool_call>" in auto
    assert none == LARK_PREFIX + "start: /(?s:.*)/"


async def test_max_tokens_ends_a_segment_and_logprobs_read_as_token_ids(gguf: Path) -> None:
    probe = RemoteTokenEngine("e", settings(), gguf)
    ids = probe.tokenizer.encode("one two three four", parse_special=False)

    def script(body: dict[str, Any]) -> list[dict[str, Any]]:
        lp = {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.5] * len(ids),
              "top_logprobs": [{f"token_id:{i}": -0.5, "token_id:7": -1.5} for i in ids]}
        return [chunk(ids, "length", logprobs=lp)]

    upstream = Upstream(script)
    engine = RemoteTokenEngine("e", settings(), gguf, transport=httpx.MockTransport(upstream))
    events = await run(engine, request(engine, max_tokens=len(ids), sampling=SamplingParams(
        temperature=0.0, logprobs=True, top_logprobs=2)))
    body = upstream.bodies[0]
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [t.token_id for t in tokens] == ids
    assert tokens[0].logprob == -0.5 and [t.token_id for t in tokens[0].top] == [ids[0], 7]
    assert events[-1].reason == "length"


async def test_an_upstream_that_returns_no_token_ids_is_an_error(gguf: Path) -> None:
    def script(body: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"choices": [{"index": 0, "text": "Hello", "finish_reason": "stop"}]}]

    engine = RemoteTokenEngine("e", settings(), gguf,
                               transport=httpx.MockTransport(Upstream(script)))
    with pytest.raises(UpstreamError, match="return_token_ids"):
        await run(engine, request(engine))


def test_protocol_tokens_needs_an_upstream_that_takes_token_ids() -> None:
    with pytest.raises(ValueError, match="protocol `tokens` needs an upstream"):
        settings(upstream="deepseek")


def test_sglang_body_and_its_cumulative_stream() -> None:
    dialect = SglangDialect()
    read = dialect.reader()
    first = read({"text": "a", "output_ids": [5], "meta_info": {
        "completion_tokens": 1, "finish_reason": None}})
    second = read({"text": "ab", "output_ids": [5, 6, 7], "meta_info": {
        "completion_tokens": 3, "prompt_tokens": 9, "cached_tokens": 4,
        "finish_reason": {"type": "stop", "matched": 151645}}})
    assert [t.token_id for t in first.tokens] == [5]
    assert [t.token_id for t in second.tokens] == [6, 7]
    assert (second.finish, second.cached_tokens) == ("eos", 4)


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / name).read_text())
    return data


@pytest.mark.parametrize(("upstream", "name"), [
    ("vllm", "vllm_completions_tokens_stream.json"),
    ("sglang", "sglang_generate_stream.json")])
async def test_recorded_streams_read_back_as_token_events(gguf: Path, upstream: str,
                                                          name: str) -> None:
    fixture = recorded(name)
    prompt = fixture["request"].get("prompt") or fixture["request"]["input_ids"]
    transport = httpx.MockTransport(lambda r: httpx.Response(
        200, content=sse(fixture["chunks"]), headers={"content-type": "text/event-stream"}))
    engine = RemoteTokenEngine("e", settings(upstream), gguf, transport=transport)
    req = GenerationRequest("r1", prompt, 64, SamplingParams(logprobs=True, top_logprobs=1))
    events = await run(engine, req)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert text_of(engine, events) == "The capital of France is Paris."  # the end id dropped
    assert tokens[0].token_id == 785 and tokens[0].logprob == pytest.approx(-1.0986)
    assert 59604 in [t.token_id for t in tokens[0].top]
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    cached = 16 if upstream == "vllm" else fixture["chunks"][-1]["meta_info"]["cached_tokens"]
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens,
            finish.cached_tokens) == ("eos", len(prompt), 8, cached)  # the end token counts


async def test_sglang_gets_an_abort_for_a_segment_we_cut(gguf: Path) -> None:
    probe = RemoteTokenEngine("e", settings("sglang"), gguf)
    tok = probe.tokenizer
    thought = tok.encode(" a b c d e f g h", parse_special=False)
    calls: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append((request.url.path, body))
        if request.url.path == "/abort_request":
            return httpx.Response(200, json={})
        params = body["sampling_params"]
        if "stop" in params:  # thinking: the model writes the close tag and keeps going
            ids = [*thought[:2], *tok.encode("</think>", parse_special=False), *thought[2:]]
        else:
            ids = [*tok.encode("ok", parse_special=False), tok.end_tokens()[0]]
        messages = [{"text": "", "output_ids": ids[:n], "meta_info": {
            "completion_tokens": n, "finish_reason": None}} for n in range(1, len(ids) + 1)]
        messages[-1]["meta_info"]["finish_reason"] = {"type": "stop", "matched": 1}
        return httpx.Response(200, content=sse(messages),
                              headers={"content-type": "text/event-stream"})

    engine = RemoteTokenEngine("e", settings("sglang"), gguf,
                               transport=httpx.MockTransport(handler))
    events = await run(engine, request(engine, chat_constraint(engine, thinking=50)))
    paths = [path for path, _ in calls]
    assert paths == ["/generate", "/abort_request", "/generate"]
    assert calls[1][1] == {"rid": calls[0][1]["rid"]}
    assert text_of(engine, events).endswith("</think>ok")
