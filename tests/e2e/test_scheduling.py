"""The embedded engine as a serving engine, on the real model: batching, the isolated prefix
cache, admission and overload, keep-alive while queued, cancellation and shutdown."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
KEY_A, KEY_B = "sk-scheduling-a", "sk-scheduling-b"
LONG_ANSWER = "Write a very long story about a lighthouse keeper and the sea, in many chapters."


def _config(**engine: Any) -> dict[str, Any]:
    spec = {"n_ctx": 4096, "max_running": 4, **engine.pop("engine", {})}
    return {
        "server": {"host": "127.0.0.1", **engine.pop("server", {})},
        "engines": {"embedded": spec},
        "models": [{"id": MODEL, "engine": "embedded"}],
    }


def _client(server: Server, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=key, max_retries=0, timeout=120)


def _engine_state(server: Server) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{server.base_url}/ready", timeout=10).json()
    return state["engines"]["embedded"]  # type: ignore[no-any-return]


def _wait_for(server: Server, predicate: Any, timeout: float) -> tuple[bool, float]:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if predicate(_engine_state(server)):
            return True, time.monotonic() - began
        time.sleep(0.02)
    return False, time.monotonic() - began


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(_config(engine={"prefix_cache_entries": 16}),
                       tmp_path_factory.mktemp("batching"), api_key=f"{KEY_A},{KEY_B}")
    yield srv
    stop_server(srv)


def _ask(server: Server, question: str, *, key: str = KEY_A, user_id: str | None = None,
         max_tokens: int = 24, system: str | None = None) -> Any:
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return _client(server, key).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,  # type: ignore[arg-type]
        extra_body={"user_id": user_id} if user_id else None)


def _greedy_tokens(server: Server, question: str, user_id: str) -> list[tuple[str, float]]:
    """(token, gap between the top two log-probabilities) for each generated token."""
    response = _client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=32,
        temperature=0, logprobs=True, top_logprobs=2, extra_body={"user_id": user_id})
    out = []
    for entry in response.choices[0].logprobs.content:
        top = sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        out.append((entry.token, top[0] - top[1] if len(top) > 1 else float("inf")))
    return out


def test_concurrent_requests_give_the_text_they_give_alone(batching_server: Server) -> None:
    """Greedy text is the same batched or alone. Batch shape moves logits slightly (DESIGN.md
    measured up to 0.4), so a divergence is allowed only where the two best tokens were
    within 0.5 of each other when the request ran alone."""
    questions = ["Count from one to ten in words.", "Name the planets of the solar system.",
                 "List the days of the week.", "Spell the word banana letter by letter."]
    alone = [_greedy_tokens(batching_server, q, f"alone{i}") for i, q in enumerate(questions)]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(
            lambda iq: _greedy_tokens(batching_server, iq[1], f"together{iq[0]}"),
            enumerate(questions)))
    identical = 0
    for solo, batched in zip(alone, together, strict=True):
        assert len(solo) >= 4 and len(batched) >= 4
        for i, ((token, gap), (other, _)) in enumerate(zip(solo, batched, strict=False)):
            if token != other:
                assert gap < 0.5, f"diverged at token {i} ({token!r} vs {other!r}), gap {gap}"
                break
        else:
            identical += [t for t, _ in solo] == [t for t, _ in batched]
    assert identical >= len(questions) // 2, "most answers should match token for token"


def test_cache_hits_stay_within_one_key_and_user_id(batching_server: Server) -> None:
    """A paired test: the same salt hits (the cache is on); another user_id or key never does,
    although every prompt shares the chat template's system prompt."""
    system = "You are a terse assistant for the harbour office. " * 8
    same_salt_hits = []
    for i in range(12):
        question = f"Pair {i}: what is {i} plus {i}?"
        first = _ask(batching_server, question, user_id=f"owner{i}", max_tokens=1,
                     system=system)
        assert first.usage.prompt_tokens_details.cached_tokens == 0, i
        other_key = i % 2 == 1
        cross = _ask(batching_server, question, key=KEY_B if other_key else KEY_A,
                     user_id=f"owner{i}" if other_key else f"stranger{i}", max_tokens=1,
                     system=system)
        extra = cross.usage.model_extra or {}
        assert cross.usage.prompt_tokens_details.cached_tokens == 0, (i, other_key)
        assert extra["prompt_cache_hit_tokens"] == 0
        assert extra["prompt_cache_miss_tokens"] == cross.usage.prompt_tokens
        if i % 4 == 0:
            again = _ask(batching_server, question, user_id=f"owner{i}", max_tokens=1,
                         system=system)
            hit = again.usage.prompt_tokens_details.cached_tokens
            assert again.usage.model_extra["prompt_cache_hit_tokens"] == hit
            assert (again.usage.model_extra["prompt_cache_miss_tokens"]
                    == again.usage.prompt_tokens - hit)
            same_salt_hits.append(hit / again.usage.prompt_tokens)
    assert len(same_salt_hits) == 3
    assert min(same_salt_hits) > 0.9, same_salt_hits


def test_requests_arriving_together_share_their_common_prefix(batching_server: Server) -> None:
    """No finished entry exists yet: the first request's computed cells serve the others."""
    system = "You are the harbour master's assistant. Answer briefly. " * 20
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda i: _ask(batching_server, f"Question {i}: when does ship {i} leave?",
                           user_id="harbour-app", system=system, max_tokens=4),
            range(4)))
    cached = sorted(r.usage.prompt_tokens_details.cached_tokens for r in results)
    assert cached[0] == 0  # the first one computed the system prompt
    assert all(c >= 200 for c in cached[1:]), cached
    for r in results:
        hit = r.usage.prompt_tokens_details.cached_tokens
        assert r.usage.model_extra["prompt_cache_hit_tokens"] == hit


def test_streamed_usage_reports_the_cache_hit(batching_server: Server) -> None:
    system = "You answer questions about tide tables. " * 10
    _ask(batching_server, "When is high tide?", user_id="streamer", system=system, max_tokens=1)
    stream = _client(batching_server).chat.completions.create(
        model=MODEL, temperature=0, max_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body={"user_id": "streamer"},
        messages=[{"role": "system", "content": system},
                  {"role": "user", "content": "When is low tide?"}])
    usage = [c.usage for c in stream if c.usage is not None]
    assert len(usage) == 1
    hit = usage[0].prompt_tokens_details.cached_tokens
    assert hit >= 60  # the system prompt and the template around it
    assert usage[0].model_extra["prompt_cache_hit_tokens"] == hit
    assert usage[0].model_extra["prompt_cache_miss_tokens"] == usage[0].prompt_tokens - hit


def test_a_disconnect_frees_the_sequence_within_a_second(batching_server: Server) -> None:
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY_A}"}) as http, \
            http.stream("POST", f"{batching_server.v1}/chat/completions", json={
                "model": MODEL, "stream": True, "max_tokens": 2000, "temperature": 0,
                "messages": [{"role": "user", "content": LONG_ANSWER}]}) as response:
        lines = response.iter_lines()  # held: dropping the iterator closes the response
        chunks = 0
        for line in lines:
            if line.startswith("data: {"):
                chunks += 1
                if chunks == 5:
                    break
        assert _engine_state(batching_server)["running"] == 1
    # Leaving the block closed the connection.
    freed, elapsed = _wait_for(batching_server, lambda s: s["running"] == 0, timeout=5)
    assert freed, "the sequence was still running 5 s after the client left"
    assert elapsed < 1.0


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One sequence at a time, one waiting: the smallest queue there is."""
    srv = start_server(_config(engine={"max_running": 1, "max_queued": 1,
                                       "queue_deadline_s": 60},
                               server={"keepalive_interval_s": 0.25}),
                       tmp_path_factory.mktemp("queue"), api_key=KEY_A)
    yield srv
    stop_server(srv)


class _Occupier:
    """A long streaming request held open in a thread, keeping the only slot busy."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.started = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {KEY_A}"}) as http, \
                http.stream("POST", f"{self.server.v1}/chat/completions", json={
                    "model": MODEL, "stream": True, "max_tokens": 3000, "temperature": 0,
                    "messages": [{"role": "user", "content": LONG_ANSWER}]}) as response:
            for line in response.iter_lines():
                if '"delta":{"content"' in line:  # a token, not the role chunk sent at once
                    self.started.set()
                if self.stop.is_set():
                    return

    def __enter__(self) -> _Occupier:
        self.thread.start()
        assert self.started.wait(60), "the occupying request never started"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        ok, _ = _wait_for(self.server, lambda s: s["running"] == 0 and s["queued"] == 0, 10)
        assert ok, "the engine did not go idle after the test"


def test_queue_full_is_a_503_with_retry_after(queue_server: Server) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body = {"model": MODEL, "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    with _Occupier(queue_server), httpx.Client(timeout=60, headers=headers) as http:
        with http.stream("POST", f"{queue_server.v1}/chat/completions", json=body) as waiting:
            assert waiting.status_code == 200
            ok, _ = _wait_for(queue_server, lambda s: s["queued"] == 1, 5)
            assert ok
            refused = http.post(f"{queue_server.v1}/chat/completions", json=body)
            assert refused.status_code == 503
            assert int(refused.headers["retry-after"]) >= 1
            error = refused.json()["error"]
            assert error["code"] == "server_overloaded"
            assert "engines.max_queued is 1" in error["message"]
            with pytest.raises(openai.InternalServerError) as info:  # the SDK sees it too
                _client(queue_server).chat.completions.create(
                    model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
            assert info.value.status_code == 503


def test_queued_requests_receive_keepalives(queue_server: Server) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 3, "temperature": 0,
                            "messages": [{"role": "user", "content": "Say yes."}]}
    with _Occupier(queue_server) as occupier, httpx.Client(timeout=60, headers=headers) as http:
        with http.stream("POST", f"{queue_server.v1}/chat/completions",
                         json={**body, "stream": True}) as response:
            stream = response.iter_lines()
            lines = []
            for line in stream:
                lines.append(line)
                if lines.count(": keep-alive") >= 3:
                    break
            # The role chunk goes out at once, as OpenAI's does; no token came while queued.
            assert not any('"delta":{"content"' in line for line in lines)
            occupier.stop.set()
            rest = list(stream)
        assert "data: [DONE]" in rest
        assert any(line.startswith('data: {"id"') for line in rest)

    with _Occupier(queue_server) as occupier, httpx.Client(timeout=60, headers=headers) as http:
        with http.stream("POST", f"{queue_server.v1}/chat/completions", json=body) as response:
            assert response.status_code == 200
            raw = response.iter_raw()
            received = b""
            for chunk in raw:
                received += chunk
                if received.count(b"\n") >= 3:
                    break
            assert received.strip() == b"", "blank lines come first"
            occupier.stop.set()
            received += b"".join(raw)
        answer = json.loads(received)
        assert answer["object"] == "chat.completion"
        assert answer["usage"]["completion_tokens"] >= 1


def test_a_queued_request_whose_client_left_never_starts(queue_server: Server) -> None:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    with _Occupier(queue_server):
        after_occupier = _engine_state(queue_server)["prompt_tokens_total"]
        with httpx.Client(timeout=60, headers=headers) as http, http.stream(
                "POST", f"{queue_server.v1}/chat/completions",
                json={"model": MODEL, "stream": True, "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Never started."}]}):
            ok, _ = _wait_for(queue_server, lambda s: s["queued"] == 1, 5)
            assert ok
        ok, elapsed = _wait_for(queue_server, lambda s: s["queued"] == 0, 5)
        assert ok and elapsed < 1.0
    # Only the occupier's prompt was ever scheduled.
    assert _engine_state(queue_server)["prompt_tokens_total"] == after_occupier


def test_a_request_past_its_queue_deadline_gets_a_clean_error(tmp_path: Path) -> None:
    srv = start_server(_config(engine={"max_running": 1, "queue_deadline_s": 1.0},
                               server={"keepalive_interval_s": 30}), tmp_path, api_key=KEY_A)
    try:
        with _Occupier(srv):
            began = time.monotonic()
            with pytest.raises(openai.InternalServerError) as info:
                _client(srv).chat.completions.create(
                    model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
            assert time.monotonic() - began < 10
            assert info.value.status_code == 503
            assert info.value.body["code"] == "queue_timeout"  # type: ignore[index]
            assert "engines.queue_deadline_s" in info.value.body["message"]  # type: ignore[index]
    finally:
        stop_server(srv)


def test_a_tiny_context_preempts_or_ends_cleanly(tmp_path: Path) -> None:
    """Four sequences that cannot all fit: some are preempted (and resume) or end with
    insufficient_system_resource; none errors, and the engine serves normally afterwards."""
    srv = start_server(_config(engine={"n_ctx": 256, "max_running": 4,
                                       "prefix_cache_entries": 4}),
                       tmp_path, api_key=KEY_A)
    try:
        prompts = [f"Story {i}: {LONG_ANSWER}" for i in range(4)]

        def run(prompt: str) -> tuple[str | None, str, int]:
            stream = _client(srv).chat.completions.create(
                model=MODEL, max_tokens=180, temperature=0, stream=True,
                stream_options={"include_usage": True},
                messages=[{"role": "user", "content": prompt}])
            text, finish, completion = "", None, 0
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                if chunk.usage is not None:
                    completion = chunk.usage.completion_tokens
            return finish, text, completion

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, prompts))
        state = _engine_state(srv)
        assert state["preemptions_total"] + state["resource_finishes_total"] > 0, state
        for finish, text, completion in results:
            assert finish in {"stop", "length", "insufficient_system_resource"}
            assert completion >= 1 and text
        assert state["running"] == 0 and state["kv_cells_used"] <= 256
        after = _ask(srv, "What is 2 + 2?", max_tokens=8)
        assert after.choices[0].finish_reason in {"stop", "length"}
        assert "4" in after.choices[0].message.content
    finally:
        stop_server(srv)


def test_shutdown_ends_running_streams_with_an_in_band_error(tmp_path: Path) -> None:
    srv = start_server(_config(server={"shutdown_grace_s": 1.0}), tmp_path, api_key=KEY_A)
    try:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY_A}"}) as http, \
                http.stream("POST", f"{srv.v1}/chat/completions", json={
                    "model": MODEL, "stream": True, "max_tokens": 3000, "temperature": 0,
                    "messages": [{"role": "user", "content": LONG_ANSWER}]}) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    break
            began = time.monotonic()
            srv.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest, "the stream ended without a word"
        last = json.loads(rest[-1].removeprefix("data: "))
        assert last["error"]["code"] == "server_shutting_down"
        # uvicorn re-raises the signal once its shutdown is complete.
        assert srv.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert time.monotonic() - began < 15
        assert "Application shutdown complete" in srv.log()
    finally:
        stop_server(srv)


def test_ready_and_the_banner_name_the_device_the_engine_runs_on(batching_server: Server) -> None:
    state = _engine_state(batching_server)
    assert state["layers"] == 25  # Qwen2.5-0.5B: 24 blocks + the output layer
    assert state["devices"], state
    if state["backend"] == "CPU":  # a CPU build (a GPU build offloads every layer)
        assert state["gpu_layers"] == 0
        assert state["devices"][0].startswith("CPU (")
    else:
        assert state["gpu_layers"] == 25
    banner = [line for line in batching_server.log().splitlines()
              if line.startswith("  engine embedded: llama.cpp ")]
    assert len(banner) == 1, batching_server.log()[-2000:]
    assert f" on {state['devices'][0]}" in banner[0]
