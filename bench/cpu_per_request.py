"""Gateway CPU per request: seekserve's CPU time per chat request in front of a fast upstream.

    .venv/bin/python bench/cpu_per_request.py [--requests 2000] [--concurrency 8] [--rounds 1]
                                              [--mode non-streamed|streamed] [--pin]
                                              [--profile PATH | --instructions]

Starts bench/fast_upstream.py and a seekserve gateway configured as bench/gateway_overhead.py
configures it (a `kind: remote` engine, a static API key, the rate limiter on and never
refusing, the SQLite usage ledger, metrics and the access log), then sends `--requests`
requests non-streamed and then streamed (`stream_options.include_usage`), `--concurrency` at a
time over httpx, after a warm-up. Reported: the gateway's user + system CPU seconds (read from
/proc for its whole process group) per 1,000 requests, i.e. CPU ms per request. CPU time is a
far steadier number than latency or throughput on a shared 2-core machine, and lowering it
raises the gateway's saturation rate directly. It still moves by +-10% from run to run when
other work shares the machine (the caches and the other hyperthread are shared).

`--instructions` runs the gateway under valgrind's callgrind and reports the instructions it
executed per request instead (zeroed after the warm-up, dumped after the measured requests).
It is ~50x slower, so a few hundred requests, at concurrency 1 by default: then the count
repeats to within 0.5% whatever else runs on the machine, which CPU time does not (with more
requests in flight it depends on how they interleave, by +-5%). Timers fire ~50x as often per
request under valgrind, so there the ledger's copy into SQLite runs every 60 s (not every
0.5 s), the upstream health checks are off, and each round starts just after a copy and ends
before the next: the journal write of every usage row is counted, its copy into SQLite is not.
Instructions are not time (a syscall or a cache miss counts little): they tell whether a change
to the Python code helps, and CPU time how much the gateway gains.

`--profile PATH` runs the gateway under cProfile (written to PATH when it stops): the profile
costs CPU of its own, so numbers from such a run are not comparable with others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import (
    BenchError,
    ServerProcess,
    WorkDir,
    cleanup,
    command_line,
    cpu_model,
    free_port,
    git_revision,
    load_average,
    median,
    rounded,
    run_main,
    start_server,
    warn_if_busy,
)
from gateway_overhead import (
    MODEL_ID,
    SEEKSERVE_KEY,
    pinned,
    port_of,
    seekserve_config,
    session_cpu_seconds,
    start_upstream,
)

MODES = ("non-streamed", "streamed")
_SUMMARY = re.compile(r"^summary: (\d+)", re.MULTILINE)


def start_gateway(args: argparse.Namespace, workdir: WorkDir, upstream_port: int,
                  cpus: str | None) -> ServerProcess:
    """seekserve as gateway_overhead.py starts it, optionally under cProfile or callgrind."""
    port = free_port()
    config_path = workdir.path / "seekserve.yaml"
    config = seekserve_config(upstream_port, port, workdir.path / "seekserve-data")
    if args.instructions:
        config["store"] = {"flush_interval_s": 60}
        config["engines"]["fast"]["health_interval_s"] = 0
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, SEEKSERVE_API_KEYS=SEEKSERVE_KEY, PYTHONUNBUFFERED="1")
    serve = ["serve", "--config", str(config_path), "--port", str(port)]
    if args.profile:
        # uvicorn re-raises the SIGTERM it caught once it has shut down, which would kill the
        # process before cProfile writes its stats: a Python handler turns it into an exit.
        code = ("import cProfile, runpy, signal, sys; "
                "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
                f"sys.argv = ['seekserve', *{serve!r}]; "
                "cProfile.run('runpy.run_module(\"seekserve\", run_name=\"__main__\")', "
                f"{str(args.profile)!r})")
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, "-m", "seekserve", *serve]
    if args.instructions:
        argv = ["valgrind", "--tool=callgrind",
                f"--callgrind-out-file={workdir.path / 'callgrind.out'}", *argv]
    argv = pinned(argv, cpus)
    print(f"starting seekserve: {shlex.join(argv)}", file=sys.stderr)
    return start_server("seekserve", argv, env=env, port=port, ready_path="/ready",
                        log_path=workdir.path / "seekserve.log", api_key=SEEKSERVE_KEY,
                        timeout=args.ready_timeout * (20 if args.instructions else 1))


class CPUMeter:
    """CPU seconds of the gateway's processes (user + system, from /proc)."""

    def __init__(self, gateway: ServerProcess) -> None:
        self._session = gateway.process.pid
        self._before = 0.0

    async def settle(self) -> None:
        await asyncio.sleep(0.6)  # the ledger's flush of what came before is not counted

    def start(self) -> None:
        self._before = session_cpu_seconds(self._session)

    def stop(self, requests: int) -> dict[str, float]:
        used = session_cpu_seconds(self._session) - self._before
        return {"cpu_ms_per_request": round(used / requests * 1e3, 3)}


class InstructionMeter:
    """Instructions the gateway ran under callgrind: counters zeroed, then dumped."""

    def __init__(self, gateway: ServerProcess, workdir: WorkDir) -> None:
        self._pid = str(gateway.process.pid)
        self._dumps = workdir.path
        self._ledger = workdir.path / "seekserve-data" / "ledger"
        self._count = 0

    async def settle(self) -> None:
        """Wait for the ledger's next copy into SQLite (every 60 s here) to be done, so that a
        round (well under 60 s) never holds one: whether it did would swing the count by ~10%.
        A copy ends by writing the journal's checkpoint file."""
        def last_copy() -> float:
            return max((p.stat().st_mtime for p in self._ledger.glob("*.checkpoint")),
                       default=0.0)

        before = last_copy()
        deadline = time.monotonic() + 120
        while last_copy() == before:
            if time.monotonic() > deadline:
                raise BenchError("the ledger did not copy its journal within 120 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, self._pid], check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        self._control("--zero")

    def stop(self, requests: int) -> dict[str, float]:
        self._count += 1
        self._control(f"--dump=round{self._count}")
        path = self._dumps / f"callgrind.out.{self._count}"  # each dump is a file of its own
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        found = _SUMMARY.search(path.read_text(errors="replace"))
        if found is None:
            raise BenchError(f"no instruction count in {path}")
        return {"instructions_per_request_m": round(int(found.group(1)) / requests / 1e6, 4)}


def chat_body(stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL_ID, "max_tokens": 16, "stream": stream,
                            "messages": [{"role": "user", "content": "Say hello in five words."}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def send_all(client: httpx.AsyncClient, n: int, concurrency: int, stream: bool) -> None:
    """`n` requests, `concurrency` at a time; each answer is read whole and checked."""
    body = chat_body(stream)
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if stream:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    data = await response.aread()
                ok = b"data: [DONE]" in data and b'data: {"error"' not in data
            else:
                response = await client.post("/v1/chat/completions", json=body)
                data = response.content
                ok = b'"choices"' in data
            if response.status_code != 200 or not ok:
                raise BenchError(f"a request failed ({response.status_code}): {data[:300]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(args: argparse.Namespace, meter: CPUMeter | InstructionMeter,
                  gateway: ServerProcess) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {SEEKSERVE_KEY}"}
    metric = ("instructions_per_request_m" if isinstance(meter, InstructionMeter)
              else "cpu_ms_per_request")
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=gateway.base_url, headers=headers, limits=limits,
                                 timeout=120) as client:
        for mode in args.modes:
            stream = mode == "streamed"
            await send_all(client, args.warmup, args.concurrency, stream)
            rounds = []
            for _ in range(args.rounds):
                await meter.settle()
                meter.start()
                started = time.perf_counter()
                await send_all(client, args.requests, args.concurrency, stream)
                wall = time.perf_counter() - started
                await asyncio.sleep(0.6)  # what the gateway still does after the answers
                rounds.append({**meter.stop(args.requests),
                               "req_per_s": round(args.requests / wall, 1)})
                print(f"{mode}: {rounds[-1]}", file=sys.stderr)
            results[mode] = {metric: rounded(median([r[metric] for r in rounds]), 4),
                             "rounds": rounds}
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    gateway_cpus = client_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise BenchError("--pin needs at least 2 CPUs")
        gateway_cpus = str(cpus[-1])
        client_cpus = ",".join(str(c) for c in cpus[:-1])
        os.sched_setaffinity(0, cpus[:-1])
    workdir = WorkDir("cpu", args.keep_server_log)
    with cleanup(workdir):
        upstream = start_upstream(args, workdir, client_cpus)
        gateway = start_gateway(args, workdir, port_of(upstream), gateway_cpus)
        meter = (InstructionMeter(gateway, workdir) if args.instructions
                 else CPUMeter(gateway))
        load_start = load_average()
        results = asyncio.run(measure(args, meter, gateway))
        gateway.check_alive()
    return {
        "benchmark": "cpu_per_request", "command": command_line(), "git": git_revision(),
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} CPUs usable",
        "load_average_at_start": load_start, "load_average_at_end": load_average(),
        "settings": {"requests": args.requests, "concurrency": args.concurrency,
                     "warmup": args.warmup, "rounds": args.rounds, "pin": args.pin,
                     "modes": args.modes, "instructions": args.instructions,
                     "profile": str(args.profile) if args.profile else None},
        **results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=None,
                        help="measured requests per mode and round (default 2000; 200 with "
                        "--instructions)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="requests in flight (default 8; 1 with --instructions, where "
                        "more makes the count depend on how requests interleave: +-5%%)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="requests per mode, not counted (default 300; 60 with "
                        "--instructions)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measured rounds per mode (the median is reported)")
    parser.add_argument("--mode", dest="modes", choices=MODES, action="append",
                        help="measure only this mode (repeatable; default both)")
    parser.add_argument("--pin", action="store_true",
                        help="the gateway on the last CPU; the upstream and this process on the "
                        "others")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--profile", type=Path, default=None,
                      help="run the gateway under cProfile, writing its stats to this file")
    what.add_argument("--instructions", action="store_true",
                      help="count the gateway's instructions under callgrind instead of its "
                      "CPU time (needs valgrind)")
    parser.add_argument("--upstream-impl", choices=["raw", "starlette"], default="raw")
    parser.add_argument("--keep-server-log", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    args.modes = args.modes or list(MODES)
    if args.requests is None:
        args.requests = 200 if args.instructions else 2000
    if args.concurrency is None:
        args.concurrency = 1 if args.instructions else 8
    if args.warmup is None:
        args.warmup = 60 if args.instructions else 300
    if args.profile:
        args.profile = args.profile.resolve()
    warn_if_busy()
    summary = run(args)
    text = json.dumps(summary, indent=2)
    if args.json_out:
        args.json_out.write_text(text)
    print(text)
    metric = "instructions_per_request_m" if args.instructions else "cpu_ms_per_request"
    unit = "M instructions/request" if args.instructions else "CPU ms/request"
    print("\n" + " | ".join(f"{mode}: {summary[mode][metric]} {unit}" for mode in args.modes))


if __name__ == "__main__":
    run_main(main)
