"""A scripted OpenAI-compatible upstream for the remote-engine tests, served by a real uvicorn on
a loopback port: each chat request (or vLLM-shaped token completion) takes the next behaviour
from its script."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.ports import free_port

USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13,
         "prompt_tokens_details": {"cached_tokens": 8}}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk() -> bytes:
    """stream_options.include_usage's last chunk: no choices, the usage."""
    body = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
            "choices": [], "usage": USAGE}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class FakeUpstream:
    """`script` items: "ok" (answers "Hello"), "drop" (one chunk, then the connection breaks),
    "slow" (a chunk every 0.05 s for 10 s), "hang" (no answer for 10 s), "hold" (token
    completions: no answer until `release`), or an HTTP status (an error body; 429 with
    Retry-After: 7). An empty script answers "ok"."""

    script: list[str | int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    healthy: bool = True
    url: str = ""
    # What /v1/completions answers, one token per chunk (the token protocol's upstream).
    token_ids: list[int] = field(default_factory=lambda: [9707])
    # A "hold" request answers once this is set (or after 60 s).
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/health", self._health),
        ])

    async def _health(self, request: Request) -> Response:
        return Response(status_code=200 if self.healthy else 503)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        action = self.script.pop(0) if self.script else "ok"
        if isinstance(action, int):
            headers = {"Retry-After": "7"} if action == 429 else {}
            echo = request.headers.get("authorization", "")
            return JSONResponse({"error": {"message": f"scripted {action} (saw {echo})"}},
                                status_code=action, headers=headers)
        if action == "hang":
            await asyncio.sleep(10)
        if not body.get("stream"):
            return JSONResponse({"id": "up-1", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hello",
                                         "reasoning_content": "Greet."},
                 "finish_reason": "stop"}], "usage": USAGE})
        return StreamingResponse(self._events(action), media_type="text/event-stream")

    async def _completions(self, request: Request) -> Response:
        """vLLM's token-level completions, streamed: `token_ids` then a `stop` (a "slow" one
        sends a token every 0.05 s until max_tokens; a "hold" one answers once `release` is
        set)."""
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        action = self.script.pop(0) if self.script else "ok"
        if isinstance(action, int):
            return JSONResponse({"error": {"message": f"scripted {action}"}},
                                status_code=action)
        if action == "hold":
            try:
                await asyncio.wait_for(self.release.wait(), 60)
            except TimeoutError:
                pass
        return StreamingResponse(self._token_events(action, int(body["max_tokens"])),
                                 media_type="text/event-stream")

    async def _token_events(self, action: str, max_tokens: int) -> AsyncIterator[bytes]:
        def event(ids: list[int], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "text": "", "token_ids": ids, "finish_reason": finish}
            return b"data: " + json.dumps({"id": "cmpl-1", "object": "text_completion",
                                           "choices": [choice], **extra}).encode() + b"\n\n"

        try:
            count = max_tokens if action == "slow" else min(max_tokens, len(self.token_ids))
            for i in range(count):
                yield event([self.token_ids[i % len(self.token_ids)]])
                if action == "slow":
                    await asyncio.sleep(0.05)
            yield event([], "length" if count == max_tokens else "stop")
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def _events(self, action: str | int) -> AsyncIterator[bytes]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            if action == "slow":
                for _ in range(200):
                    yield chunk({"content": "."})
                    await asyncio.sleep(0.05)
            yield chunk({"reasoning_content": "Greet."})
            yield chunk({"content": "Hel"})
            if action == "drop":
                raise RuntimeError("the upstream process died")
            yield chunk({"content": "lo"})
            yield chunk({}, "stop")
            yield usage_chunk()
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@asynccontextmanager
async def serving(upstream: FakeUpstream) -> AsyncIterator[FakeUpstream]:
    """`upstream` behind uvicorn on a free loopback port, in this event loop."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(upstream.app(), host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="off",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "the fake upstream did not start"
        upstream.url = f"http://127.0.0.1:{port}"
        yield upstream
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
