"""Soak: mixed load on the embedded engine and the real model for `--reliability-duration`
minutes (30 for the recorded run): streamed and not, tools, JSON mode, thinking, clients that
leave mid-stream, prefix-cache hits, two managed keys with limits beside the static key.

Held: no 5xx (nor any answer but 200 and the limits' 429); the server's RSS grows less than 5%
from the end of the warm-up to the end; its open file descriptors and the KV cells held by
running sequences are back to where they were before the load; the ledger has exactly one row
per admitted request, with the status the client saw.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import test_tenancy_e2e as tenancy
from tests.e2e.conftest import API_KEY, Server, stop_server
from tests.e2e.test_tenancy_e2e import ADMIN, create_key
from tests.reliability.harness import (
    MODEL,
    STORY,
    Outcome,
    Row,
    cells_in_use,
    chat,
    embedded_config,
    engine_state,
    eventually,
    expected_status,
    idle_state,
    open_fds,
    resources,
    sqlite_usage,
    start_in,
)

model_path = tenancy.model_path

WORKERS = 5
MAX_RUNNING = 4
WARMUP_SHARE = 0.2
MIN_WARMUP_S = 60.0
SAMPLE_EVERY_S = 5.0
# A shared system prompt of ~400 tokens: the requests of one (key, user) after the first
# reuse its cells from the prefix cache.
SYSTEM = ("You are the assistant of a lighthouse museum. Answer visitors briefly. "
          + " ".join(f"Fact {i}: the lamp of tower {i} was lit in {1800 + i}." for i in range(30)))
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
QUESTIONS = ["Name three colours.", "What is 7 times 8?", "Say hello in French.",
             "Describe the sea in one sentence.", "List two fruits."]


@pytest.fixture(scope="module")
def soak_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[Server, Path]]:
    workdir = tmp_path_factory.mktemp("soak")
    config = embedded_config(model_path, n_ctx=4096, max_running=MAX_RUNNING)
    server = start_in(workdir, {**config, "admin_key": ADMIN})
    yield server, workdir / "data"
    stop_server(server)


def request_of(kind: str, rng: random.Random, user_id: str) -> tuple[dict[str, Any], int | None]:
    """A request of `kind` and, for a client that leaves, after how many chunks."""
    question = [{"role": "user", "content": rng.choice(QUESTIONS)}]
    body: dict[str, Any] = {"model": MODEL, "messages": question, "user_id": user_id,
                            "temperature": rng.choice([0, 0.7]),
                            "thinking": {"type": "disabled"},
                            "stream": rng.random() < 0.5,
                            "stream_options": {"include_usage": True}}
    leave = None
    if kind == "plain":
        body["max_tokens"] = rng.randint(8, 32)
    elif kind == "json":
        body.update(max_tokens=rng.randint(24, 64),
                    response_format={"type": "json_object"},
                    messages=[{"role": "user", "content": "Describe a cat as a JSON object."}])
    elif kind == "tools":
        body.update(max_tokens=64, tools=TOOLS, tool_choice=rng.choice(["auto", "required"]),
                    messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
    elif kind == "thinking":
        body.update(max_tokens=96, thinking={"type": "enabled"}, reasoning_effort="low")
    elif kind == "cached":
        body.update(max_tokens=8, messages=[{"role": "system", "content": SYSTEM}, *question])
    elif kind == "leave":
        body.update(max_tokens=300, messages=STORY, stream=True, temperature=0)
        leave = rng.randint(1, 12)
    return body, leave


KINDS = {"plain": 3, "json": 2, "tools": 2, "thinking": 1, "cached": 3, "leave": 2}


async def load(server: Server, keys: dict[str, str], until: float, seed: int, tag: str
               ) -> list[Outcome]:
    """WORKERS clients sending requests back to back until `until`; user ids start with
    `tag` (one per request, or one per key for the prefix-cache kind)."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    counter = 0

    async def worker(n: int) -> None:
        nonlocal counter
        clients = {name: httpx.AsyncClient(base_url=server.base_url, timeout=300,
                                           headers={"Authorization": f"Bearer {key}"})
                   for name, key in keys.items()}
        try:
            while time.monotonic() < until:
                counter += 1
                key_name = rng.choice(list(keys))
                kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
                user_id = (f"{tag}-cache-{key_name}" if kind == "cached"
                           else f"{tag}-{counter}")
                body, leave = request_of(kind, rng, user_id)
                outcome = Outcome(kind=kind, user_id=user_id, extra={"key": key_name})
                outcomes.append(await chat(clients[key_name], outcome, body, leave_after=leave))
        finally:
            for client in clients.values():
                await client.aclose()

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))
    return outcomes


async def test_soak(soak_server: tuple[Server, Path], record: Row,
                    request: pytest.FixtureRequest) -> None:
    server, data_dir = soak_server
    minutes: float = request.config.getoption("--reliability-duration")
    duration = minutes * 60
    warmup = max(MIN_WARMUP_S, WARMUP_SHARE * duration)
    keys = {"static": API_KEY,
            "a": create_key(server, rpm=40, max_concurrency=3)["key"],
            "b": create_key(server, tpm=6000, max_concurrency=2)["key"]}
    pid = server.process.pid

    # Every key and kind once before the baseline, so what is made lazily and then pooled
    # (the store's connections of managed-key lookups, grammars) exists already.
    warm = await load(server, keys, time.monotonic() + 20, seed=1, tag="warm")
    idle, _ = eventually(lambda: idle_state(server.base_url), within=30)
    assert idle, engine_state(server.base_url)
    before = resources(pid)

    samples: list[tuple[float, int, int]] = []  # (seconds into the load, rss, fds)
    started = time.monotonic()

    async def sample() -> None:
        while time.monotonic() < started + duration:
            now = resources(pid)
            samples.append((time.monotonic() - started, now.rss, now.fds))
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(sample())
    outcomes = await load(server, keys, started + duration, seed=2, tag="soak")
    await sampler
    load_s = time.monotonic() - started

    state, to_idle = eventually(lambda: idle_state(server.base_url), within=30)
    # The clients' connections close as the server reads their end: give it a moment.
    eventually(lambda: resources(pid).fds <= before.fds, within=10)
    after = resources(pid)
    rss_at_warmup = next(rss for at, rss, _ in samples if at >= warmup) if duration > warmup \
        else samples[-1][1]
    growth = after.rss / rss_at_warmup - 1

    statuses = Counter(o.status for o in outcomes)
    admitted = [o for o in warm + outcomes if o.status == 200 and o.error is None]
    wrong = [o for o in warm + outcomes if (o.status, o.error) != (200, None) and o.status != 429]
    expected = {o.request_id: expected_status(o) for o in admitted}

    def ledger() -> list[dict[str, Any]] | None:
        rows = sqlite_usage(data_dir)
        return rows if set(expected) <= {r["request_id"] for r in rows} else None

    rows, _ = eventually(ledger, within=30)
    rows = rows or sqlite_usage(data_dir)
    load_rows = [r for r in rows if (r["user_id"] or "").startswith(("soak-", "warm-"))]
    ids = Counter(r["request_id"] for r in rows)
    missing = set(expected) - set(ids)
    duplicates = [i for i, n in ids.items() if n > 1]
    cache_hits = sum(1 for o in admitted if o.kind == "cached" and o.cached_tokens > 0)
    cached_total = sum(1 for o in admitted if o.kind == "cached")
    kinds = Counter(o.kind for o in admitted)
    json_unparsed = sum(1 for o in admitted if o.kind == "json" and o.finish == "length")

    record.held = (f"{load_s / 60:.1f} min, {WORKERS} clients, {len(outcomes)} requests "
                   f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
                   f"2 managed keys with limits: {statuses.get(429, 0)} refused with 429")
    record.lost = (f"{len(missing)} of {len(expected)} admitted without a row, "
                   f"{len(duplicates)} duplicated")
    record.measured = (f"statuses {dict(statuses)}; RSS {before.rss >> 20} MiB before, "
                       f"{rss_at_warmup >> 20} after warm-up, {after.rss >> 20} at the end "
                       f"({growth:+.1%}); fds {before.fds} -> {after.fds}; idle "
                       f"{to_idle:.1f} s after the load; cache hits {cache_hits}/{cached_total};"
                       f" json_object answers cut at max_tokens {json_unparsed}")

    assert not wrong, [(o.kind, o.status, o.error) for o in wrong][:20]
    assert state, f"the engine did not go idle: {engine_state(server.base_url)}"
    assert cells_in_use(state) == 0 and state["running"] == 0
    assert after.fds <= before.fds, (before, after, open_fds(pid))
    assert growth < 0.05, (rss_at_warmup, after.rss, samples)
    assert not missing, sorted(missing)[:10]
    assert not duplicates, duplicates[:10]
    assert len(load_rows) == len(expected), (len(load_rows), len(expected))
    statuses_seen = {r["request_id"]: r["status"] for r in rows if r["request_id"] in expected}
    mismatched = {i: (s, statuses_seen[i]) for i, s in expected.items() if statuses_seen[i] != s}
    assert not mismatched, list(mismatched.items())[:10]
    assert cache_hits >= cached_total // 2, (cache_hits, cached_total)
