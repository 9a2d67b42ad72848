"""Prometheus metrics of one app: request, token and latency series, and engine gauges.

Every app builds its own `Metrics` (its own CollectorRegistry): nothing is module-global, so
tests build as many apps as they like. Engine gauges are read from `Engine.state()` when
Prometheus scrapes, never stored.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from seekserve.engines.base import EngineState

log = logging.getLogger(__name__)

# The text format's media type, for whoever serves `Metrics.render()`.
MEDIA_TYPE = CONTENT_TYPE_LATEST

# Time to first token runs from ~10 ms (a cached prompt on a GPU) to a minute (a long prompt
# prefilled on CPU behind a queue); inter-token latency from a few ms to seconds per step.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                    300.0, 600.0)

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
