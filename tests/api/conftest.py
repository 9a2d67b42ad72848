"""In-process apps on the scripted FakeEngine: an ASGI client, and a real socket when needed."""

from __future__ import annotations

import asyncio
import atexit
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from seekserve.app import create_app
from seekserve.engines.base import Engine
from seekserve.settings import Settings
from tests.fakes import FakeEngine
from tests.ports import free_port

MODEL = "deepseek-v4-pro"
MAAS_MODEL = "MaaS_Deepseek_V4_pro_20260424"
REPLY = "Hello from the fake engine."
_DATA_ROOT = Path(tempfile.mkdtemp(prefix="seekserve-api-tests-"))
atexit.register(shutil.rmtree, _DATA_ROOT, ignore_errors=True)

# The three seed providers' shapes, as examples/seed-providers.yaml deploys them.
SEED_DEPLOYMENTS: list[dict[str, Any]] = [
    {"name": "deepseek", "dialect": "openai"},
    {"name": "maas-deepseek", "endpoint_path": "maas-deepseek", "dialect": "maas"},
    {"name": "backend", "hosts": ["backend", "backend:8000"], "dialect": "output_text"},
]


def build_app(engine: Engine, **overrides: Any) -> FastAPI:
    """The real app on `engine`, configured like the seed example unless overridden; its
    store and usage journal live in a directory of its own, not the user's data dir."""
    overrides.setdefault("deployments", SEED_DEPLOYMENTS)
    # The fake engine's reply is plain text: these tests read it as the answer. Thinking
    # mode (on by default for V4) has its own tests, which turn it on per request.
    overrides.setdefault("models", [{"id": MODEL, "aliases": [MAAS_MODEL],
                                     "thinking": {"default": "disabled"}}])
    overrides.setdefault("data_dir", Path(tempfile.mkdtemp(dir=_DATA_ROOT)))
    return create_app(Settings.load(None, **overrides), {"embedded": engine})


@asynccontextmanager
async def asgi_client(app: FastAPI, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling `app` in-process, inside its lifespan (engines started)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     **kwargs) as client:
            yield client


@asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[str]:
    """`app` behind uvicorn on a loopback port, in this event loop; yields its base URL.

    httpx's ASGITransport buffers whole responses and never reports a disconnect, so tests of
    what happens when a client goes away need a real connection.
    """
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                            log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def chat_body(**fields: Any) -> dict[str, Any]:
    """A minimal valid request, with `fields` added or replaced."""
    return {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], **fields}


def sse_payloads(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments and blank lines dropped)."""
    payloads = []
    for event in raw.split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: "):
                payloads.append(line[len("data: "):])
    return payloads


def sse_json(raw: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, without the final [DONE]."""
    return [json.loads(p) for p in sse_payloads(raw) if p != "[DONE]"]


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(REPLY)


@pytest.fixture
async def client(engine: FakeEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The seed-shaped app without API keys."""
    async with asgi_client(build_app(engine)) as c:
        yield c
