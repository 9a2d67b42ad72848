"""A fake OpenAI-compatible upstream that answers at a set pace, as a process of its own (so a
test can kill -9 it):

    python -m tests.reliability.paced_upstream --port P [--pieces N] [--interval S] [--hold]

A chat answer is N content pieces `--interval` seconds apart (streamed, with a usage chunk,
or as one JSON body after the same time). With `--hold` a stream sends its first chunk and
then only `: ping` comments every 5 s until the client leaves: an idle SSE connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "paced"


def _chunk(delta: dict[str, Any], finish: str | None = None,
           usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def build_app(pieces: int, interval: float, hold: bool) -> Starlette:
    usage = {"prompt_tokens": 12, "completion_tokens": pieces, "total_tokens": 12 + pieces}

    async def events() -> AsyncIterator[bytes]:
        yield _chunk({"role": "assistant", "content": ""})
        if hold:
            while True:
                await asyncio.sleep(5)
                yield b": ping\n\n"
        for _ in range(pieces):
            await asyncio.sleep(interval)
            yield _chunk({"content": "wave "})
        yield _chunk({}, "stop")
        yield _chunk({}, usage=usage)
        yield b"data: [DONE]\n\n"

    async def chat(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream")
        await asyncio.sleep(pieces * interval)
        return JSONResponse({
            "id": "chatcmpl-paced", "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "wave " * pieces}}],
            "usage": usage})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/models", models), Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args()
    uvicorn.run(build_app(args.pieces, args.interval, args.hold), host="127.0.0.1",
                port=args.port, log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
