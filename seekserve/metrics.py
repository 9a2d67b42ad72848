"""Prometheus metrics of one app, the per-request access log line, and the x-request-id header.

Every app builds its own `Metrics` (its own CollectorRegistry): nothing is module-global, so
tests build as many apps as they like. Engine gauges are read from `Engine.state()` when
Prometheus scrapes, never stored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekserve.engines.base import EngineState

log = logging.getLogger(__name__)
access_log = logging.getLogger("seekserve.access")

# Time to first token runs from ~10 ms (a cached prompt on a GPU) to a minute (a long prompt
# prefilled on CPU behind a queue); inter-token latency from a few ms to seconds per step.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0, 600.0)

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=\-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"

# Engine state fields with names and help of their own; any other numeric field is exported as
# seekserve_engine_<field>, so fields an engine adds show up without a change here.
_ENGINE_GAUGES: dict[str, tuple[str, str]] = {
    "loaded": ("seekserve_engine_loaded", "1 when the engine's model is loaded."),
    "queued": ("seekserve_queue_depth", "Requests admitted and waiting for a sequence slot."),
    "running": ("seekserve_running_sequences", "Sequences being decoded."),
    "kv_cells_used": ("seekserve_kv_cells_used", "KV cache cells in use."),
    "kv_cells_total": ("seekserve_kv_cells_total", "KV cache cells in the context."),
}


class ReportsState(Protocol):
    """Anything with an engine state: token engines and remote engines alike."""

    def state(self) -> EngineState: ...


class EngineStateCollector(Collector):
    """Gauges read from every engine's state() at scrape time, labelled by engine name."""

    def __init__(self, engines: Callable[[], Mapping[str, ReportsState]]) -> None:
        self._engines = engines

    def describe(self) -> Iterable[Metric]:
        return []  # no scrape at registration: engines may not exist yet

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for engine_name, engine in self._engines().items():
            try:
                state = engine.state()
            except Exception:
                log.warning("engine %s failed to report its state", engine_name, exc_info=True)
                continue
            for field_name, value in _numeric_fields(state):
                name, doc = _ENGINE_GAUGES.get(
                    field_name, (f"seekserve_engine_{field_name}", f"Engine state {field_name}."))
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(name, doc, labels=["engine"])
                family.add_metric([engine_name], float(value))
        return list(families.values())


def _numeric_fields(state: object) -> list[tuple[str, float]]:
    if dataclasses.is_dataclass(state):
        names = [f.name for f in dataclasses.fields(state)]
    else:
        names = list(getattr(state, "__dict__", {}))
    out = []
    for name in names:
        value = getattr(state, name, None)
        if isinstance(value, bool | int | float):
            out.append((re.sub(r"[^A-Za-z0-9_]", "_", name), float(value)))
    return out


class _CacheHitRatioCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "seekserve_prompt_cache_hit_ratio",
            "Prompt tokens served from the prefix cache / all prompt tokens, since start.",
            labels=["model"])
        for model, (prompt, cached) in sorted(self._metrics.prompt_totals.items()):
            if prompt:
                family.add_metric([model], cached / prompt)
        return [family]


class Metrics:
    """The app's metrics; the request path reports through these methods."""

    def __init__(self, engines: Callable[[], Mapping[str, ReportsState]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seekserve_requests", "HTTP requests by route, model and status.",
                                ["route", "model", "status"], registry=r)
        self.request_duration = Histogram(
            "seekserve_request_duration_seconds", "Time from request to the last byte sent.",
            ["route"], buckets=DURATION_BUCKETS, registry=r)
        self.prompt_tokens = Counter("seekserve_prompt_tokens", "Prompt tokens processed.",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("seekserve_completion_tokens", "Tokens generated.",
                                         ["model"], registry=r)
        self.cached_tokens = Counter("seekserve_cached_prompt_tokens",
                                     "Prompt tokens served from the prefix cache.", ["model"],
                                     registry=r)
        self.ttft = Histogram("seekserve_time_to_first_token_seconds",
                              "Time from admission to the first generated token.", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("seekserve_inter_token_latency_seconds",
                             "Time between consecutive generated tokens of one request.",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.rejections = Counter("seekserve_ratelimit_rejections",
                                  "Requests refused by the rate limiter, by reason.", ["reason"],
                                  registry=r)
        self.redis_errors = Counter("seekserve_redis_errors",
                                    "Failed Redis operations of the rate limiter.", ["operation"],
                                    registry=r)
        self.content_filtered = Counter("seekserve_content_filtered",
                                        "Prompts refused and outputs stopped by moderation.",
                                        ["stage"], registry=r)
        self.moderation_errors = Counter("seekserve_moderation_errors",
                                         "Failed calls to the moderation classifier.", [],
                                         registry=r)
        # model -> (prompt tokens, cached prompt tokens), for the cache hit ratio gauge.
        self.prompt_totals: dict[str, tuple[int, int]] = {}
        r.register(_CacheHitRatioCollector(self))
        if engines is not None:
            r.register(EngineStateCollector(engines))

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.request_duration.labels(route).observe(seconds)

    def observe_ttft(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def observe_itl(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int, cached: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)
        self.cached_tokens.labels(model).inc(cached)
        total_prompt, total_cached = self.prompt_totals.get(model, (0, 0))
        self.prompt_totals[model] = (total_prompt + prompt, total_cached + cached)

    def count_rejection(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def count_redis_error(self, operation: str) -> None:
        self.redis_errors.labels(operation).inc()

    def count_content_filtered(self, stage: str) -> None:
        self.content_filtered.labels(stage).inc()

    def count_moderation_error(self) -> None:
        self.moderation_errors.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


@dataclass
class RequestContext:
    """What the access log and request metrics know of a request; handlers fill in the rest.

    Set `model` only to a served model id (after the registry resolved it): it is a metric
    label, and a client-supplied string there would let anyone create label values.
    """

    request_id: str
    model: str | None = None
    key_id: str | None = None
    user_id: str | None = None


def request_context(request: Request) -> RequestContext | None:
    """The context the middleware attached to this request (None outside the middleware)."""
    context = request.scope.get("state", {}).get("request_context")
    return context if isinstance(context, RequestContext) else None


def incoming_request_id(scope: Scope) -> str:
    """The client's x-request-id when it is well-formed, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class AccessLogMiddleware:
    """Pure ASGI (messages pass through unbuffered, so streams stay streams): x-request-id in
    and out, request metrics, and one JSON access log line per request when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = RequestContext(request_id=incoming_request_id(scope))
        scope.setdefault("state", {})["request_context"] = context
        status: int | None = None
        sent_bytes = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = context.request_id
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            if status is None:
                # 499: the request was cancelled (client gone) before any response.
                status = 500 if isinstance(exc, Exception) else 499
            raise
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            final_status = status if status is not None else 499
            self.metrics.observe_request(route, context.model or "", final_status, seconds)
            access_log.info(json.dumps(_access_record(scope, context, route, final_status,
                                                      seconds, sent_bytes)))


def _access_record(scope: Scope, context: RequestContext, route: str, status: int,
                   seconds: float, sent_bytes: int) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "request_id": context.request_id,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes_sent": sent_bytes,
        "model": context.model,
        "key_id": context.key_id,
        "user_id": context.user_id,
        "client": client[0] if client else None,
    }


def metrics_router() -> APIRouter:
    """GET /metrics in the Prometheus text format, from `app.state.metrics`."""
    router = APIRouter()

    @router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        app_metrics: Metrics = request.app.state.metrics
        return Response(app_metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
