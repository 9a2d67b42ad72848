"""The gateway's bound on requests in flight (`server.max_in_flight`): one request over it is
refused at once with 503 server_overloaded and Retry-After, in the caller's protocol, and its
place comes back when a request ends however it ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.api.conftest import build_app, chat_body, live_server
from tests.fakes import FakeEngine


async def wait_until(condition: Callable[[], bool]) -> None:
    """Polls `condition` for up to 30 s (generous: the machine may be busy)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_one_request_over_the_limit_is_refused_at_once() -> None:
    engine = FakeEngine("x" * 200, delay=0.02)
    app = build_app(engine, server={"max_in_flight": 2})
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url,
                                                               timeout=30) as client:
        streams = [client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True))
                   for _ in range(2)]
        opened = [await s.__aenter__() for s in streams]
        await wait_until(lambda: engine.active == 2)
        refused = await client.post("/v1/chat/completions", json=chat_body())
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("server_overloaded", "server_error")
        assert "server.max_in_flight" in error["message"]
        assert len(engine.requests) == 2  # the refused request never reached the engine
        # A client that leaves gives its place back; the next request is served.
        await opened[0].aclose()
        await streams[0].__aexit__(None, None, None)
        await wait_until(lambda: app.state.inflight.in_flight == 1)
        served = await client.post("/v1/chat/completions", json=chat_body(max_tokens=5))
        assert served.status_code == 200
        await streams[1].__aexit__(None, None, None)
        await wait_until(lambda: app.state.inflight.in_flight == 0)


async def test_refused_and_failed_requests_give_their_place_back() -> None:
    engine = FakeEngine("hi")
    app = build_app(engine, server={"max_in_flight": 1})
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url,
                                                               timeout=30) as client:
        for _ in range(3):
            bad = await client.post("/v1/chat/completions", json={"model": "deepseek-v4-pro"})
            assert bad.status_code == 400
            missing = await client.post("/v1/chat/completions",
                                        json=chat_body(model="no-such-model"))
            assert missing.status_code == 404
            assert (await client.post("/v1/chat/completions", json=chat_body())).status_code \
                == 200
        assert app.state.inflight.in_flight == 0
