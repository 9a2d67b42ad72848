"""Metrics, the access log line and x-request-id: read back from the exposition and the log."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message, Receive, Scope, Send

from seekserve.api.access_log import AccessLogMiddleware, RequestContext, incoming_request_id
from seekserve.engines.base import EngineState
from seekserve.metrics import Metrics
from tests.api.conftest import asgi_client, build_app
from tests.fakes import FakeEngine


def samples(exposition: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_tokens_latencies_and_rejections_are_exported() -> None:
    metrics = Metrics()
    metrics.count_tokens("m", prompt=100, completion=20, cached=25)
    metrics.count_tokens("m", prompt=100, completion=5, cached=75)
    metrics.observe_ttft("m", 0.3)
    metrics.observe_itl("m", 0.04)
    metrics.observe_itl("m", 0.06)
    metrics.count_rejection("requests")
    metrics.count_rejection("requests")
    metrics.count_redis_error("admit")
    metrics.count_content_filtered("output")
    got = samples(metrics.render())
    m = (("model", "m"),)
    assert got[("seekserve_prompt_tokens_total", m)] == 200
    assert got[("seekserve_completion_tokens_total", m)] == 25
    assert got[("seekserve_cached_prompt_tokens_total", m)] == 100
    assert got[("seekserve_prompt_cache_hit_ratio", m)] == 0.5
    assert got[("seekserve_time_to_first_token_seconds_count", m)] == 1
    assert got[("seekserve_time_to_first_token_seconds_bucket", (("le", "0.25"), *m))] == 0
    assert got[("seekserve_time_to_first_token_seconds_bucket", (("le", "0.5"), *m))] == 1
    assert got[("seekserve_inter_token_latency_seconds_sum", m)] == pytest.approx(0.1)
    assert got[("seekserve_inter_token_latency_seconds_bucket", (("le", "0.05"), *m))] == 1
    assert got[("seekserve_ratelimit_rejections_total", (("reason", "requests"),))] == 2
    assert got[("seekserve_redis_errors_total", (("operation", "admit"),))] == 1
    assert got[("seekserve_content_filtered_total", (("stage", "output"),))] == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.count_rejection("tokens")
    assert ("seekserve_ratelimit_rejections_total", (("reason", "tokens"),)) in samples(
        first.render())
    assert ("seekserve_ratelimit_rejections_total", (("reason", "tokens"),)) not in samples(
        second.render())


@dataclass(frozen=True)
class StateWithMore(EngineState):
    cache_hit_tokens: int = 0
    note: str = "not a number"


class ReportingEngine(FakeEngine):
    def __init__(self, state: EngineState | None) -> None:
        super().__init__()
        self.reported = state

    def state(self) -> EngineState:
        if self.reported is None:
            raise RuntimeError("not started")
        return self.reported


def test_engine_state_is_read_at_scrape_time_with_fields_engines_add() -> None:
    engine = ReportingEngine(EngineState(True, 2, 5, 4096, 1000))
    broken = ReportingEngine(None)
    metrics = Metrics(lambda: {"embedded": engine, "broken": broken})
    e = (("engine", "embedded"),)
    got = samples(metrics.render())
    assert got[("seekserve_queue_depth", e)] == 5
    assert got[("seekserve_running_sequences", e)] == 2
    assert got[("seekserve_kv_cells_used", e)] == 1000
    assert got[("seekserve_kv_cells_total", e)] == 4096
    assert got[("seekserve_engine_loaded", e)] == 1
    assert not any(labels == (("engine", "broken"),) for _, labels in got)
    engine.reported = StateWithMore(True, 0, 0, 4096, 10, cache_hit_tokens=321)
    got = samples(metrics.render())
    assert got[("seekserve_queue_depth", e)] == 0
    assert got[("seekserve_engine_cache_hit_tokens", e)] == 321
    assert not any(name.endswith("_note") for name, _ in got)


@pytest.mark.parametrize(("sent", "kept"), [
    ("abc-123_X.y:z", True),
    ("a" * 128, True),
    ("a" * 129, False),
    ("has space", False),
    ("new\nline", False),
    ("", False),
])
def test_an_incoming_request_id_is_kept_only_when_well_formed(sent: str, kept: bool) -> None:
    scope: Scope = {"type": "http", "headers": [(b"x-request-id", sent.encode())]}
    got = incoming_request_id(scope)
    assert (got == sent) is kept
    if not kept:
        assert len(got) == 32 and int(got, 16) >= 0


async def test_requests_are_counted_by_route_template_and_status_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    app = build_app(FakeEngine())
    with caplog.at_level(logging.INFO, logger="seekserve.access"):
        async with asgi_client(app) as client:
            ok = await client.get("/v1/models/deepseek-v4-pro",
                                  headers={"x-request-id": "trace-42"})
            missing = await client.get("/v1/models/nope")
            unrouted = await client.get("/no/such/route")
            exposition = await client.get("/metrics")
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-42"
    assert missing.status_code == 404 and len(missing.headers["x-request-id"]) == 32
    assert unrouted.status_code == 404
    assert exposition.headers["content-type"].startswith("text/plain")
    got = samples(exposition.text)
    route = "/v1/models/{model_id}"
    assert got[("seekserve_requests_total",
                (("model", ""), ("route", route), ("status", "200")))] == 1
    assert got[("seekserve_requests_total",
                (("model", ""), ("route", route), ("status", "404")))] == 1
    assert got[("seekserve_requests_total",
                (("model", ""), ("route", "unmatched"), ("status", "404")))] == 1
    assert got[("seekserve_request_duration_seconds_count", (("route", route),))] == 2
    assert got[("seekserve_engine_loaded", (("engine", "embedded"),))] == 1

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "seekserve.access"]
    assert [(line["path"], line["status"]) for line in lines[:3]] == [
        ("/v1/models/deepseek-v4-pro", 200), ("/v1/models/nope", 404),
        ("/no/such/route", 404)]
    first = lines[0]
    assert first["request_id"] == "trace-42"
    assert first["method"] == "GET"
    assert first["route"] == route
    assert first["duration_ms"] > 0
    assert set(first) >= {"key_id", "user_id", "model", "bytes_sent", "client"}


async def test_a_streamed_chat_passes_through_and_is_counted() -> None:
    app = build_app(FakeEngine("streamed reply"))
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={
            "model": "deepseek-v4-pro", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        exposition = await client.get("/metrics")
    assert response.status_code == 200
    assert response.text.rstrip().endswith("data: [DONE]")
    assert "x-request-id" in response.headers
    got = samples(exposition.text)
    # The chat route labels its requests with the served model's id.
    assert got[("seekserve_requests_total", (("model", "deepseek-v4-pro"),
                                             ("route", "/v1/chat/completions"),
                                             ("status", "200")))] == 1


async def test_the_middleware_forwards_each_body_chunk_as_it_comes() -> None:
    """A pure ASGI middleware: no buffering, so SSE reaches the client token by token."""
    seen_by_client: list[Message] = []
    chunks_sent_by_app = 0

    async def streaming_app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal chunks_sent_by_app
        context = scope["state"]["request_context"]
        assert isinstance(context, RequestContext)
        context.model, context.key_id, context.user_id = "m1", "key-1", "u-1"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            chunks_sent_by_app += 1
            # The client has this chunk before the app produces the next one.
            assert len(seen_by_client) == chunks_sent_by_app + 1
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        seen_by_client.append(message)

    metrics = Metrics()
    middleware = AccessLogMiddleware(streaming_app, metrics)
    await middleware({"type": "http", "method": "GET", "path": "/s", "headers": []},
                     receive, send)
    assert [m.get("body") for m in seen_by_client[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert len(dict(seen_by_client[0]["headers"])[b"x-request-id"]) == 32
    got = samples(metrics.render())
    assert got[("seekserve_requests_total",
                (("model", "m1"), ("route", "unmatched"), ("status", "200")))] == 1


async def test_a_failing_app_is_counted_as_500_and_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        pass

    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="seekserve.access"), \
            pytest.raises(RuntimeError):
        await AccessLogMiddleware(failing_app, metrics)(
            {"type": "http", "method": "POST", "path": "/x", "headers": []}, receive, send)
    got = samples(metrics.render())
    assert got[("seekserve_requests_total",
                (("model", ""), ("route", "unmatched"), ("status", "500")))] == 1
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "seekserve.access"]
    assert line["status"] == 500 and line["path"] == "/x"
