"""Gateway overhead: seekserve and LiteLLM's proxy in front of a fast upstream vs the upstream.

    .venv/bin/python bench/gateway_overhead.py [--json-out PATH] [--step-seconds 4] [--pin]

Three targets, measured in the same run: the fast upstream directly (bench/fast_upstream.py),
seekserve in front of it (a `kind: remote` engine, `upstream: openai`; tenancy on: a static API
key, `ratelimit.default_rpm`/`default_tpm` set high so the limiter runs without refusing, the
usage ledger in SQLite in a temporary data dir; /metrics is always on) and LiteLLM's proxy
(bench/.venv-litellm, made by bench/setup_litellm.sh) with one model routed to the same upstream
and a master key; what LiteLLM can and cannot turn on without its database is in the JSON and
in bench/RESULTS.md. Each server is its own process, each gateway one worker.

Two modes: non-streamed (`stream: false`, time to the last byte) and streamed (`stream: true`
with `stream_options.include_usage`; time to the last byte, and to the first body chunk that
carries text: seekserve, like OpenAI, opens a stream with a role chunk of empty content before
the upstream answers, so the first byte would flatter it).

Two phases per mode:
1. Latency at concurrency 1: after a warm-up, `--rounds` rounds in which each target (in an
   order rotated every round) serves `--requests` requests one after the other on one
   keep-alive connection. Added latency = a gateway's p50/p99 minus the direct upstream's.
2. Rate sweep, open loop: requests are sent at a constant rate (a schedule fixed in advance;
   latency counts from the scheduled time, so a late sender does not hide queueing) for
   `--step-seconds` per step, the rate multiplied by `--rate-step` each step, the targets
   interleaved at each rate. A target passes a step when its p99 (to the last byte) is at most
   `--p99-limit-ms` and no request failed; a narrowly failing step is run once more before the
   target drops out (a step that failed by far is not run again); after a failed step the benchmark
   waits until the target's CPU use has fallen (its backlog worked off). Reported: the highest
   passing rate.

The load generator is this process: a raw asyncio HTTP/1.1 client (uvloop when installed, no
JSON parsing of answers, only checks that they are complete), much lighter than httpx. It
shares the machine with the servers, so each step records its own CPU use and how late its
sends were; a step where the generator was the bottleneck is flagged. Each step also records
the CPU seconds the target's processes used, so requests per CPU-second compare the gateways
even on a busy machine. `--pin` puts the gateways on the last CPU and this process and the
upstream on the others.

Goals (issue 6): seekserve's added p50 <= 1/4 of LiteLLM's, and >= 3x its requests/s at
p99 <= 50 ms, non-streamed and streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from common import (
    REPO,
    BenchError,
    ServerProcess,
    WorkDir,
    cleanup,
    command_line,
    cpu_count,
    cpu_model,
    free_port,
    git_revision,
    load_average,
    percentile,
    rounded,
    run_main,
    start_server,
    warn_if_busy,
)

MODEL_ID = "deepseek-v4-pro"
UPSTREAM_MODEL = "fast-upstream"
SEEKSERVE_KEY = "sk-bench-gateway"
LITELLM_KEY = "sk-litellm-bench"
LITELLM_VENV = REPO / "bench" / ".venv-litellm"
MODES = ("non-streamed", "streamed")
IDLE_LIMIT_S = 2.0  # a pooled connection idle longer than this is not reused
TARGETS = ("direct", "seekserve", "litellm")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
_CONTENT = re.compile(rb'"content":\s*"[^"]')  # a delta with text in it


# ----- a light HTTP/1.1 client --------------------------------------------------------------


class ResponseError(Exception):
    """An answer that is not a complete, successful chat completion."""


@dataclass
class Timing:
    """perf_counter seconds of one request: the first text (the first body chunk with a
    non-empty `content`; the whole body for a non-streamed answer) and the end of the answer."""

    first_content: float
    last_byte: float


class Connection:
    """One keep-alive HTTP/1.1 connection; `request` sends a prepared request, reads the answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.idle_since = time.perf_counter()

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return cls(reader, writer)

    def close(self) -> None:
        self.closed = True
        self.writer.close()

    async def request(self, payload: bytes, stream: bool) -> Timing:
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            self.close()
            raise ResponseError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        first = math.nan
        if _CHUNKED.search(head):
            parts: list[bytes] = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data = await self.reader.readexactly(size + 2)
                if math.isnan(first) and _CONTENT.search(data):
                    first = time.perf_counter()
                parts.append(data)
            body = b"".join(parts)
        else:
            length = _CONTENT_LENGTH.search(head)
            if length is None:
                self.close()
                raise ResponseError("answer with neither content-length nor chunked encoding")
            body = await self.reader.readexactly(int(length.group(1)))
            first = time.perf_counter()
        last = time.perf_counter()
        self.idle_since = last
        if _CONNECTION_CLOSE.search(head):
            self.close()
        if stream:
            if b"data: [DONE]" not in body or b'data: {"error"' in body:
                raise ResponseError("stream without [DONE] or with an error: "
                                    + body[-300:].decode(errors="replace"))
        elif b'"choices"' not in body:
            raise ResponseError("answer without choices: " + body[:300].decode(errors="replace"))
        return Timing(first, last)


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    model: str
    api_key: str | None
    pids_session: int | None = None  # the process group whose CPU time a step reports

    def payload(self, stream: bool) -> bytes:
        body: dict[str, Any] = {
            "model": self.model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "Say hello in five words."}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                   "Content-Type: application/json", "Accept: */*",
                   f"Content-Length: {len(data)}"]
        if self.api_key:
            headers.append(f"Authorization: Bearer {self.api_key}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + data


# ----- CPU accounting -----------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(session: int) -> float:
    """User + system CPU seconds of every live process in `session` (a server and its children)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is field 3 (state): session is field 6, utime 14, stime 15.
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


# ----- phase 1: latency at concurrency 1 ----------------------------------------------------


async def sequential(target: Target, stream: bool, n: int) -> tuple[list[float], list[float]]:
    """`n` requests one after the other: (times to the last byte, times to the first text)."""
    payload = target.payload(stream)
    connection = await Connection.open(target.port)
    ttlb: list[float] = []
    ttfb: list[float] = []
    try:
        for _ in range(n):
            if connection.closed:
                connection = await Connection.open(target.port)
            sent = time.perf_counter()
            timing = await connection.request(payload, stream)
            ttlb.append(timing.last_byte - sent)
            ttfb.append(timing.first_content - sent)
    except (ResponseError, OSError, asyncio.IncompleteReadError) as exc:
        raise BenchError(f"{target.name}: a sequential request failed: {exc!r}") from None
    finally:
        connection.close()
    return ttlb, ttfb


def latency_stats(values: list[float]) -> dict[str, float | None]:
    return {"p50_ms": rounded(percentile(values, 50) * 1e3),
            "p90_ms": rounded(percentile(values, 90) * 1e3),
            "p99_ms": rounded(percentile(values, 99) * 1e3),
            "n": len(values)}


async def latency_phase(targets: list[Target], args: argparse.Namespace
                        ) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        stream = mode == "streamed"
        for target in targets:
            await sequential(target, stream, args.warmup)
        ttlb: dict[str, list[float]] = {t.name: [] for t in targets}
        ttfb: dict[str, list[float]] = {t.name: [] for t in targets}
        for round_no in range(args.rounds):
            shift = round_no % len(targets)
            for target in targets[shift:] + targets[:shift]:
                last, first = await sequential(target, stream, args.requests)
                ttlb[target.name] += last
                ttfb[target.name] += first
        per_target: dict[str, Any] = {}
        for target in targets:
            entry: dict[str, Any] = {"to_last_byte": latency_stats(ttlb[target.name])}
            if stream:
                entry["to_first_content"] = latency_stats(ttfb[target.name])
            per_target[target.name] = entry
        direct = per_target["direct"]
        for name, entry in per_target.items():
            if name == "direct":
                continue
            for what in [k for k in entry if k.startswith("to_")]:
                entry[what]["added_p50_ms"] = _minus(entry[what]["p50_ms"],
                                                     direct[what]["p50_ms"])
                entry[what]["added_p99_ms"] = _minus(entry[what]["p99_ms"],
                                                     direct[what]["p99_ms"])
        results[mode] = per_target
        print(f"latency {mode}: " + json.dumps(per_target), file=sys.stderr)
    return results


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


# ----- phase 2: open-loop rate sweep --------------------------------------------------------


@dataclass
class Pool:
    """Idle keep-alive connections to one target, opened as the offered load needs them."""

    port: int
    limit: int
    idle: list[Connection] = field(default_factory=list)
    opened: int = 0

    async def take(self) -> Connection:
        now = time.perf_counter()
        while self.idle:
            connection = self.idle.pop()
            # uvicorn closes a connection idle for 5 s (its keep-alive timeout); sending on one
            # it is closing would count a failure the server did not make.
            if (not connection.closed and not connection.reader.at_eof()
                    and now - connection.idle_since < IDLE_LIMIT_S):
                return connection
            connection.close()
            self.opened -= 1
        if self.opened >= self.limit:
            raise ResponseError(f"the generator has {self.limit} connections open, all busy")
        self.opened += 1
        try:
            return await Connection.open(self.port)
        except OSError:
            self.opened -= 1
            raise

    def give(self, connection: Connection) -> None:
        if connection.closed:
            self.opened -= 1
        else:
            self.idle.append(connection)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
        self.opened = 0


async def rate_step(target: Target, pool: Pool, stream: bool, rate: float, seconds: float
                    ) -> dict[str, Any]:
    """`rate` requests/s for `seconds` on a fixed schedule; latency from the scheduled time."""
    payload = target.payload(stream)
    n = max(1, round(rate * seconds))
    latencies: list[float] = []
    lateness: list[float] = []
    errors: list[str] = []

    async def one(scheduled: float) -> None:
        lateness.append(time.perf_counter() - scheduled)
        try:
            connection = await pool.take()
        except (ResponseError, OSError) as exc:
            errors.append(repr(exc))
            return
        try:
            timing = await connection.request(payload, stream)
            latencies.append(timing.last_byte - scheduled)
        except (ResponseError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            connection.close()
            errors.append(repr(exc))
        except BaseException:  # cancelled mid-answer: the connection cannot be reused
            connection.close()
            raise
        finally:
            pool.give(connection)

    cpu_before = time.process_time()
    server_before = (session_cpu_seconds(target.pids_session)
                     if target.pids_session is not None else math.nan)
    start = time.perf_counter() + 0.01
    tasks: set[asyncio.Task[None]] = set()
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    send_end = time.perf_counter()
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=10)
        for task in pending:
            task.cancel()
            errors.append("no answer within 10 s of the step's end")
    wall = time.perf_counter() - start
    generator_cpu = (time.process_time() - cpu_before) / wall
    server_cpu = (session_cpu_seconds(target.pids_session) - server_before
                  if target.pids_session is not None else math.nan)
    p99 = percentile(latencies, 99)
    late_p99 = percentile(lateness, 99)
    return {
        "rate": round(rate, 1), "sent": n, "ok": len(latencies), "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "achieved_rps": rounded(len(latencies) / wall, 1),
        "p50_ms": rounded(percentile(latencies, 50) * 1e3),
        "p99_ms": rounded(p99 * 1e3),
        "send_duration_s": rounded(send_end - start),
        "generator_cpu": rounded(generator_cpu),
        "generator_late_p99_ms": rounded(late_p99 * 1e3),
        "server_cpu_s": rounded(server_cpu),
        "server_cpu_ms_per_request": (rounded(server_cpu / len(latencies) * 1e3)
                                      if latencies and not math.isnan(server_cpu) else None),
        "connections": pool.opened,
    }


def step_passes(step: dict[str, Any], limit_ms: float) -> bool:
    return step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= limit_ms


def borderline(step: dict[str, Any], limit_ms: float) -> bool:
    """A failed step close enough to passing that noise may explain it: worth one more try."""
    return (not step_passes(step, limit_ms) and step["p99_ms"] is not None
            and step["p99_ms"] <= 4 * limit_ms and step["errors"] <= 0.01 * step["sent"])


async def settle(target: Target, most_s: float = 30.0) -> None:
    """Wait until an overloaded target has worked off its backlog (its CPU use falls under
    10% over half a second), so it does not slow down the next target's step."""
    if target.pids_session is None:
        return
    deadline = time.perf_counter() + most_s
    before = session_cpu_seconds(target.pids_session)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        now = session_cpu_seconds(target.pids_session)
        if now - before < 0.05:
            return
        before = now


def generator_limited(step: dict[str, Any]) -> bool:
    """The generator, not the target, may have set the pace: busy or late sending."""
    return bool((step["generator_cpu"] or 0) > 0.85
                or (step["generator_late_p99_ms"] or 0) > 5.0)


async def sweep_phase(targets: list[Target], args: argparse.Namespace
                      ) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        stream = mode == "streamed"
        pools = {t.name: Pool(t.port, args.max_connections) for t in targets}
        steps: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        best: dict[str, float] = {t.name: 0.0 for t in targets}
        active = list(targets)
        rate = args.start_rate
        for target in targets:  # warm-up: connections open, code paths hot
            await rate_step(target, pools[target.name], stream, args.start_rate, 1.0)
        while active and rate <= args.max_rate:
            for target in list(active):
                step = await rate_step(target, pools[target.name], stream, rate,
                                       args.step_seconds)
                if not step_passes(step, args.p99_limit_ms):
                    await settle(target)
                if borderline(step, args.p99_limit_ms):
                    step["retried"] = True
                    steps[target.name].append(step)
                    step = await rate_step(target, pools[target.name], stream, rate,
                                           args.step_seconds)
                    if not step_passes(step, args.p99_limit_ms):
                        await settle(target)
                steps[target.name].append(step)
                passed = step_passes(step, args.p99_limit_ms)
                print(f"sweep {mode} {target.name} {rate:.0f}/s: p50 {step['p50_ms']} ms "
                      f"p99 {step['p99_ms']} ms errors {step['errors']} "
                      f"gen cpu {step['generator_cpu']} server cpu ms/req "
                      f"{step['server_cpu_ms_per_request']} -> "
                      f"{'pass' if passed else 'FAIL'}", file=sys.stderr)
                if passed:
                    best[target.name] = rate
                else:
                    active.remove(target)
                await asyncio.sleep(0.5)  # let the ledger flush and the sockets settle
            rate *= args.rate_step
        for pool in pools.values():
            pool.close()
        results[mode] = {}
        for target in targets:
            passing = [s for s in steps[target.name]
                       if s["rate"] == round(best[target.name], 1) and step_passes(
                           s, args.p99_limit_ms)]
            top = passing[-1] if passing else None
            results[mode][target.name] = {
                "max_rps_at_p99_limit": round(best[target.name], 1),
                "capped_by_max_rate": target in active,
                "generator_limited_at_max": bool(top and generator_limited(top)),
                "server_cpu_ms_per_request_at_max": top["server_cpu_ms_per_request"]
                if top else None,
                "steps": steps[target.name],
            }
    return results


# ----- servers ------------------------------------------------------------------------------


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def start_upstream(args: argparse.Namespace, workdir: WorkDir, cpus: str | None
                   ) -> ServerProcess:
    port = free_port()
    argv = pinned([sys.executable, str(REPO / "bench" / "fast_upstream.py"), "--port",
                   str(port), "--impl", args.upstream_impl], cpus)
    print(f"starting the upstream: {shlex.join(argv)}", file=sys.stderr)
    return start_server("upstream", argv, env=dict(os.environ), port=port, ready_path="/health",
                        log_path=workdir.path / "upstream.log", api_key="-",
                        timeout=args.ready_timeout)


def seekserve_config(upstream_port: int, port: int, data_dir: Path) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "server": {"host": "127.0.0.1", "port": port},
        # Only the remote engine: the embedded llama.cpp engine (and its model) is not loaded.
        "engines": {"fast": {
            "kind": "remote", "upstream": "openai",
            "replicas": [{"base_url": f"http://127.0.0.1:{upstream_port}",
                          "model": UPSTREAM_MODEL}],
            # The open-loop sweep can hold many requests at once; refusing them (503) is not
            # what this measures.
            "max_in_flight": 4096,
        }},
        "models": [{"id": MODEL_ID, "engine": "fast"}],
        "ratelimit": {"default_rpm": 10_000_000, "default_tpm": 10_000_000_000,
                      "default_max_concurrency": 100_000},
    }


def start_seekserve_gateway(args: argparse.Namespace, workdir: WorkDir, upstream_port: int,
                            cpus: str | None) -> ServerProcess:
    port = free_port()
    config_path = workdir.path / "seekserve.yaml"
    config = seekserve_config(upstream_port, port, workdir.path / "seekserve-data")
    if args.store_url:
        config["store"] = {"url": args.store_url}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, SEEKSERVE_API_KEYS=SEEKSERVE_KEY, PYTHONUNBUFFERED="1")
    argv = pinned([sys.executable, "-m", "seekserve", "serve", "--config", str(config_path),
                   "--port", str(port)], cpus)
    print(f"starting seekserve: {shlex.join(argv)}", file=sys.stderr)
    return start_server("seekserve", argv, env=env, port=port, ready_path="/ready",
                        log_path=workdir.path / "seekserve.log", api_key=SEEKSERVE_KEY,
                        timeout=args.ready_timeout)


def litellm_config(upstream_port: int, prometheus: bool, router_limits: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_list": [{
            "model_name": MODEL_ID,
            "litellm_params": {
                "model": f"openai/{UPSTREAM_MODEL}",
                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "unused",
                # With router pre-call checks on, counted per deployment in memory: the
                # nearest thing LiteLLM has to our per-key limiter without its database.
                "rpm": 10_000_000,
                "tpm": 10_000_000_000,
            },
        }],
        "general_settings": {"master_key": LITELLM_KEY},
        "litellm_settings": {"telemetry": False},
    }
    if prometheus:
        config["litellm_settings"]["callbacks"] = ["prometheus"]
    if router_limits:
        config["router_settings"] = {"enable_pre_call_checks": True}
    return config


def start_litellm(args: argparse.Namespace, workdir: WorkDir, upstream_port: int,
                  cpus: str | None) -> ServerProcess:
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        raise BenchError(f"{litellm} is missing: run `bash bench/setup_litellm.sh` first")
    port = free_port()
    config_path = workdir.path / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(litellm_config(upstream_port, args.litellm_prometheus,
                                                         args.litellm_router_limits),
                                          sort_keys=False))
    # Offline: the bundled model cost map instead of fetching one from GitHub at start.
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    env.pop("DATABASE_URL", None)
    argv = pinned([str(litellm), "--config", str(config_path), "--host", "127.0.0.1",
                   "--port", str(port), "--num_workers", "1"], cpus)
    print(f"starting LiteLLM: {shlex.join(argv)}", file=sys.stderr)
    return start_server("litellm", argv, env=env, port=port, ready_path="/health/liveliness",
                        log_path=workdir.path / "litellm.log", api_key=LITELLM_KEY,
                        timeout=args.ready_timeout)


def port_of(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


# ----- report -------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    litellm = "not installed"
    python = LITELLM_VENV / "bin" / "python"
    if python.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            litellm = subprocess.run(
                [str(python), "-c", "from importlib.metadata import version as v; "
                 "print(v('litellm'))"], capture_output=True, text=True, timeout=60,
                check=True).stdout.strip()
    return {"seekserve": metadata.version("seekserve"), "litellm": litellm,
            "python": sys.version.split()[0]}


def goals(latency: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        ours = latency[mode]["seekserve"]["to_last_byte"]["added_p50_ms"]
        theirs = latency[mode]["litellm"]["to_last_byte"]["added_p50_ms"]
        our_rps = sweep[mode]["seekserve"]["max_rps_at_p99_limit"]
        their_rps = sweep[mode]["litellm"]["max_rps_at_p99_limit"]
        out[mode] = {
            "added_p50_ratio": (round(ours / theirs, 3) if ours is not None and theirs
                                else None),
            "added_p50_met": ours is not None and theirs is not None and ours <= theirs / 4,
            # LiteLLM may pass no step at all (its p99 over the limit at the lowest rate): then
            # there is no ratio, and any passing rate of ours is more than 3x its zero.
            "rps_ratio": round(our_rps / their_rps, 2) if their_rps else None,
            "rps_met": our_rps >= 3 * their_rps and our_rps > 0,
        }
    return out


def markdown(summary: dict[str, Any]) -> str:
    lat, sweep, met = summary["latency"], summary["sweep"], summary["goals"]
    lines = ["| mode | target | p50 / p99 ms (c=1) | added p50 / p99 ms | streamed first text "
             "p50 / p99 ms | max req/s at p99 <= "
             f"{summary['settings']['p99_limit_ms']:g} ms | gateway CPU ms/req at that rate |",
             "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        for name in TARGETS:
            last = lat[mode][name]["to_last_byte"]
            first = lat[mode][name].get("to_first_content")
            added = ("—" if name == "direct"
                     else f"{last['added_p50_ms']:.2f} / {last['added_p99_ms']:.2f}")
            ttfb = "—" if first is None else f"{first['p50_ms']:.2f} / {first['p99_ms']:.2f}"
            rate = sweep[mode][name]
            capped = "+" if rate["capped_by_max_rate"] else ""
            gen = " (generator-limited)" if rate["generator_limited_at_max"] else ""
            cpu = rate["server_cpu_ms_per_request_at_max"]
            top = (f"{rate['max_rps_at_p99_limit']:.0f}" if rate["max_rps_at_p99_limit"]
                   else f"< {summary['settings']['start_rate']:g}")
            lines.append(f"| {mode} | {name} | {last['p50_ms']:.2f} / {last['p99_ms']:.2f} | "
                         f"{added} | {ttfb} | {top}{capped}{gen} "
                         f"| {'—' if cpu is None else f'{cpu:.2f}'} |")
    lines.append("")
    for mode in MODES:
        g = met[mode]
        lines.append(f"- {mode}: added p50 seekserve / LiteLLM = {g['added_p50_ratio']} "
                     f"(goal <= 0.25: {'met' if g['added_p50_met'] else 'not met'}); req/s "
                     f"seekserve / LiteLLM = {g['rps_ratio']} (goal >= 3: "
                     f"{'met' if g['rps_met'] else 'not met'})")
    return "\n".join(lines)


# ----- main ---------------------------------------------------------------------------------


async def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    latency = await latency_phase(targets, args)
    sweep = await sweep_phase(targets, args) if not args.skip_sweep else {}
    return {"latency": latency, "sweep": sweep}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ncpu = cpu_count()
    gateway_cpus = client_cpus = None
    if args.pin:
        if ncpu < 2:
            raise BenchError("--pin needs at least 2 CPUs")
        cpus = sorted(os.sched_getaffinity(0))
        gateway_cpus = str(cpus[-1])
        client_cpus = ",".join(str(c) for c in cpus[:-1])
        os.sched_setaffinity(0, cpus[:-1])
    workdir = WorkDir("gateway", args.keep_server_log)
    with cleanup(workdir):
        upstream = start_upstream(args, workdir, client_cpus)
        seekserve = start_seekserve_gateway(args, workdir, port_of(upstream), gateway_cpus)
        litellm = start_litellm(args, workdir, port_of(upstream), gateway_cpus)
        targets = [
            Target("direct", port_of(upstream), UPSTREAM_MODEL, None, upstream.process.pid),
            Target("seekserve", port_of(seekserve), MODEL_ID, SEEKSERVE_KEY,
                   seekserve.process.pid),
            Target("litellm", port_of(litellm), MODEL_ID, LITELLM_KEY, litellm.process.pid),
        ]
        load_start = load_average()
        try:
            import uvloop
        except ImportError:
            measured = asyncio.run(measure(targets, args))
        else:
            measured = uvloop.run(measure(targets, args))
        for server in (upstream, seekserve, litellm):
            server.check_alive()
        ledger_rows = count_ledger_rows(workdir.path / "seekserve-data")
    return {
        "benchmark": "gateway_overhead", "command": command_line(),
        "date": datetime.date.today().isoformat(), "git": git_revision(),
        "machine": f"{cpu_model()}, {ncpu} CPUs",
        "versions": versions(),
        "load_average_at_start": load_start, "load_average_at_end": load_average(),
        "settings": {
            "upstream_impl": args.upstream_impl, "pin": args.pin,
            "gateway_cpus": gateway_cpus, "client_and_upstream_cpus": client_cpus,
            "warmup": args.warmup, "rounds": args.rounds, "requests_per_round": args.requests,
            "start_rate": args.start_rate, "rate_step": args.rate_step,
            "max_rate": args.max_rate, "step_seconds": args.step_seconds,
            "p99_limit_ms": args.p99_limit_ms,
        },
        "seekserve_setup": {
            "auth": "static API key (SEEKSERVE_API_KEYS)",
            "rate_limits": "ratelimit.default_rpm 1e7, default_tpm 1e10, "
                           "default_max_concurrency 1e5 (memory backend): checked, never refuse",
            "ledger": args.store_url or "SQLite in a temporary data dir (default store), "
                                        "journal flushed every 0.5 s",
            "ledger_rows_after_run": ledger_rows,
            "metrics": "on (always; /metrics)", "moderation": "none configured",
            "upstream_kind": "openai (non-streamed client requests are streamed upstream, "
                             "to read usage the same way)",
            "workers": 1,
        },
        "litellm_setup": {
            "auth": "master key only (general_settings.master_key); no virtual keys: those "
                    "need its PostgreSQL database through prisma",
            "rate_limits": ("deployment rpm/tpm 1e7/1e10 enforced by router pre-call checks "
                            "(in memory)" if args.litellm_router_limits else "none")
                           + "; no per-key limits without the database",
            "ledger": "none: spend logs need the database",
            "metrics": "prometheus callback" if args.litellm_prometheus else "off",
            "workers": 1,
        },
        **measured,
    }


def count_ledger_rows(data_dir: Path) -> int | None:
    """Usage rows seekserve wrote (SQLite only): proof that the ledger ran."""
    import sqlite3

    db = data_dir / "seekserve.db"
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        table = next((t for t in ("usage",) if t in tables), None)
        if table is None:
            return None
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-out", type=Path,
                        default=Path("/tmp/seekserve-gateway-overhead.json"),
                        help="where the JSON results go")
    parser.add_argument("--upstream-impl", choices=["raw", "starlette"], default="raw")
    parser.add_argument("--warmup", type=int, default=200,
                        help="sequential warm-up requests per target and mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200,
                        help="sequential requests per target per round")
    parser.add_argument("--start-rate", type=float, default=5)
    parser.add_argument("--rate-step", type=float, default=1.25)
    parser.add_argument("--max-rate", type=float, default=3000)
    parser.add_argument("--step-seconds", type=float, default=4)
    parser.add_argument("--p99-limit-ms", type=float, default=50)
    parser.add_argument("--max-connections", type=int, default=1000,
                        help="most connections the generator opens to one target")
    parser.add_argument("--pin", action="store_true",
                        help="gateways on the last CPU; upstream and generator on the others")
    parser.add_argument("--store-url", default=None,
                        help="seekserve's store.url (default: SQLite in the temp data dir)")
    parser.add_argument("--litellm-prometheus", action=argparse.BooleanOptionalAction,
                        default=True, help="LiteLLM's prometheus callback (metrics)")
    parser.add_argument("--litellm-router-limits", action=argparse.BooleanOptionalAction,
                        default=True, help="LiteLLM's router pre-call checks, which enforce the "
                        "deployment's rpm/tpm (in memory)")
    parser.add_argument("--skip-sweep", action="store_true", help="latency phase only")
    parser.add_argument("--keep-server-log", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=180)
    args = parser.parse_args()
    warn_if_busy()
    summary = run(args)
    args.json_out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "sweep"}, indent=2))
    if summary["sweep"]:
        summary["goals"] = goals(summary["latency"], summary["sweep"])
        args.json_out.write_text(json.dumps(summary, indent=2))
        print("\n=== Markdown for bench/RESULTS.md ===")
        print(markdown(summary))
    print(f"\nJSON results: {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
