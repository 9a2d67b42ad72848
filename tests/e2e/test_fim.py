"""Fill-in-the-middle and plain text completions on the real model through the openai SDK, on
DeepSeek's beta base URL and on /v1, and chat prefix completion on the beta base URL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.model

MODEL = "deepseek-v4-pro"
# The body is left to the model; the prompt ends with the body's indentation, as an editor's
# cursor would be.
FIB_PROMPT = 'def fib(n):\n    """Return the n-th Fibonacci number."""\n    '
FIB_SUFFIX = "\n\n\nprint(fib(10))\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Requests here run one at a time on an engine without a prefix cache, so a greedy
    request repeats exactly (the same computation every time, streamed or not)."""
    srv = start_server({"engines": {"embedded": {"n_ctx": 4096, "max_running": 2,
                                                 "prefix_cache_entries": 0}},
                        "models": [{"id": MODEL, "engine": "embedded"}]},
                       tmp_path_factory.mktemp("fim"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def beta(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/beta", api_key=server.api_key,
                         max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def v1(server: Server) -> openai.OpenAI:
    return server.client()


def fill_fib(client: openai.OpenAI, **kwargs: Any) -> Any:
    """The fib body filled greedily (a Completion, or its chunks with stream=True)."""
    return client.completions.create(
        model=MODEL, prompt=FIB_PROMPT, suffix=FIB_SUFFIX, temperature=0,
        **{"max_tokens": 64, **kwargs})


def run_python(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=30)


def test_fim_fills_a_python_function_body(beta: openai.OpenAI) -> None:
    resp = fill_fib(beta)
    assert resp.object == "text_completion"
    assert resp.id.startswith("cmpl-")
    assert resp.model == MODEL
    choice = resp.choices[0]
    assert choice.finish_reason == "stop", choice.text
    program = FIB_PROMPT + choice.text + FIB_SUFFIX
    compile(program, "<fim>", "exec")
    result = run_python(program)
    assert result.returncode == 0, result.stderr
    # The suffix's print is the program's last line; the model may have repeated it above.
    assert result.stdout.splitlines()[-1] == "55", program
    usage = resp.usage
    assert usage is not None and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The prompt is the three FIM tokens around the prefix's and suffix's own tokens.
    assert usage.prompt_tokens > 3


def test_v1_and_beta_give_the_same_fill(beta: openai.OpenAI, v1: openai.OpenAI) -> None:
    assert fill_fib(v1).choices[0].text == fill_fib(beta).choices[0].text


def test_streamed_fill_equals_the_whole_one(beta: openai.OpenAI) -> None:
    whole = fill_fib(beta)
    chunks = list(fill_fib(beta, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_ends_the_fill_before_the_stop_string(beta: openai.OpenAI) -> None:
    full = fill_fib(beta).choices[0].text
    assert "(" in full, full
    choice = fill_fib(beta, stop=["(", "zzz"]).choices[0]
    assert choice.text == full[: full.index("(")]
    assert choice.finish_reason == "stop"
    assert (choice.model_extra or {})["matched_stop"] == "("


def test_logprobs_in_the_legacy_shape(beta: openai.OpenAI) -> None:
    choice = fill_fib(beta, logprobs=2, max_tokens=8).choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None
    tokens, token_logprobs = logprobs.tokens or [], logprobs.token_logprobs or []
    top, offsets = logprobs.top_logprobs or [], logprobs.text_offset or []
    assert len(tokens) == len(token_logprobs) == len(top) == len(offsets) == 8
    assert "".join(tokens) == choice.text  # ASCII code: every token is whole text
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    for token, logprob, alternatives in zip(tokens, token_logprobs, top, strict=True):
        assert logprob <= 0
        # Greedy: the chosen token is the likeliest of the two alternatives listed.
        assert len(alternatives) == 2
        assert alternatives[token] == pytest.approx(logprob)
        assert max(alternatives.values()) == pytest.approx(logprob)


def test_plain_completion_without_suffix(v1: openai.OpenAI) -> None:
    resp = v1.completions.create(model=MODEL, prompt="def add(a, b):\n    return",
                                 temperature=0, max_tokens=8, stop=["\n"])
    assert resp.choices[0].text.startswith(" a + b"), resp.choices[0].text


def test_echo_puts_the_prompt_first(v1: openai.OpenAI) -> None:
    resp = v1.completions.create(model=MODEL, prompt="def add(a, b):\n    return",
                                 suffix="\n", temperature=0, max_tokens=4, echo=True)
    assert resp.choices[0].text.startswith("def add(a, b):\n    return")
    assert len(resp.choices[0].text) > len("def add(a, b):\n    return")


def test_more_than_one_completion_is_a_400(beta: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        beta.completions.create(model=MODEL, prompt="x", suffix="y", n=2)
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "n"


def test_chat_prefix_completion_on_the_beta_base_url(beta: openai.OpenAI) -> None:
    prefix = "```python\ndef add(a, b):\n    return"
    resp = beta.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Write a Python function add(a, b) returning the sum."},
            {"role": "assistant", "content": prefix, "prefix": True},  # type: ignore[typeddict-unknown-key]
        ],
        temperature=0, max_tokens=24, stop=["\n\n"],
        extra_body={"thinking": {"type": "disabled"}},
    )
    content = resp.choices[0].message.content or ""
    assert content.startswith(" a + b"), content
