"""Aggregate decode throughput on one GPU: llama.cpp's bare batched decode, llama-server with 64
slots, and seekserve, at 1, 8, 32 and 64 concurrent streaming clients (issue 15).

  python bench/gpu_throughput.py --model-path MODEL.gguf \\
      [--llama-server build/bin/llama-server] [--batched-bench build/bin/llama-batched-bench]

Each client sends its own ~270-token prompt (distinct text, so no prefix is shared) and streams
128 tokens at temperature 0 (`ignore_eos` where the server takes it; the random-weight model of
bench/gpu/ seldom ends early anyway). Per level and server: aggregate tok/s (completion tokens
of all streams over the wall time of the round), TTFT p50/p99 and ITL p99 (gaps between content
chunks of one stream). A warm-up request runs first; `--rounds` rounds per level, the best
round's numbers are reported (JSON has every round). bench/gpu/device_run.sh runs this on the
GPU machine; without --llama-server and --batched-bench only seekserve is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    MODEL_ID,
    BenchError,
    ServerProcess,
    StreamResult,
    WorkDir,
    async_client,
    cleanup,
    filler_text,
    free_port,
    machine_info,
    percentile,
    positive_int,
    run_main,
    start_server,
    stream_chat,
)


def _prompt(i: int, sentences: int) -> list[dict[str, str]]:
    notes = filler_text(1000 + i, sentences)
    return [{"role": "user", "content": f"Summarise these notes.\n{notes}"}]


async def _round(server: ServerProcess, n: int, args: argparse.Namespace, round_no: int,
                 extra: dict[str, Any]) -> dict[str, Any]:
    async with async_client(server, args.request_timeout) as client:
        bodies = [{"model": MODEL_ID, "messages": _prompt(round_no * 1000 + i, args.sentences),
                   "max_tokens": args.tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}, **extra} for i in range(n)]
        began = time.perf_counter()
        results: list[StreamResult] = await asyncio.gather(
            *(stream_chat(client, server, b, StreamResult(label=f"{server.name} {i}"))
              for i, b in enumerate(bodies)))
        wall = time.perf_counter() - began
    tokens = [r.completion_tokens if r.completion_tokens is not None else len(r.token_times)
              for r in results]
    gaps = [g for r in results for g in r.gaps_within(-float("inf"), float("inf"))]
    ttfts = [r.ttft for r in results]
    prompt_tokens = [r.prompt_tokens for r in results if r.prompt_tokens is not None]
    return {
        "streams": n,
        "tok_s": sum(tokens) / wall,
        "completion_tokens": sum(tokens),
        "prompt_tokens_mean": (sum(prompt_tokens) / len(prompt_tokens)) if prompt_tokens
        else None,
        "wall_s": wall,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "itl_p99_s": percentile(gaps, 99),
    }


def _measure(server: ServerProcess, args: argparse.Namespace, extra: dict[str, Any]
             ) -> list[dict[str, Any]]:
    asyncio.run(_round(server, 1, args, 999, extra))  # warm-up
    levels = []
    for n in args.streams:
        rounds = [asyncio.run(_round(server, n, args, r, extra)) for r in range(args.rounds)]
        best = max(rounds, key=lambda r: r["tok_s"])
        levels.append({**best, "rounds": rounds})
        print(f"{server.name} {n:>3} streams: {best['tok_s']:8.1f} tok/s, TTFT p50 "
              f"{best['ttft_p50_s']:.3f} s, p99 {best['ttft_p99_s']:.3f} s, ITL p99 "
              f"{best['itl_p99_s'] * 1000:.1f} ms (prompt ~{best['prompt_tokens_mean']} tokens)",
              file=sys.stderr, flush=True)
    return levels


def _n_ctx(args: argparse.Namespace) -> int:
    per_stream = 400 + args.tokens + 64  # a ~270-token prompt with room to spare
    return max(args.streams) * per_stream


def run_seekserve(args: argparse.Namespace, workdir: WorkDir) -> list[dict[str, Any]]:
    port = free_port()
    engine: dict[str, Any] = {
        "model_path": str(args.model_path), "n_ctx": _n_ctx(args),
        "max_running": max(args.streams), "n_batch": max(512, args.n_batch),
        "prefix_cache_entries": 8, "max_queued_tokens": 10**6,
    }
    if args.gpu_layers is not None:
        engine["gpu_layers"] = args.gpu_layers
    for item in args.engine_setting:
        key, _, value = item.partition("=")
        engine[key] = json.loads(value)
    config = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
        "engines": {"embedded": engine},
        # No thinking block: every stream decodes answer tokens under no constraint.
        "models": [{"id": MODEL_ID, "engine": "embedded", "thinking": None}],
    }
    path = workdir.path / "seekserve.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = dict(os.environ, SEEKSERVE_API_KEYS="sk-bench", PYTHONUNBUFFERED="1")
    server = start_server("seekserve", [sys.executable, "-m", "seekserve", "serve", "--config",
                                        str(path), "--port", str(port)],
                          env=env, port=port, ready_path="/ready",
                          log_path=workdir.path / "seekserve.log", api_key="sk-bench",
                          timeout=args.ready_timeout)
    try:
        state = httpx.get(f"{server.base_url}/ready", timeout=10).json()["engines"]["embedded"]
        print(f"seekserve engine: {state.get('backend')} on {state.get('devices')}, "
              f"{state.get('gpu_layers')}/{state.get('layers')} layers", file=sys.stderr)
        return _measure(server, args, {"ignore_eos": True} if args.ignore_eos else {})
    finally:
        server.stop()


def run_llama_server(args: argparse.Namespace, workdir: WorkDir) -> list[dict[str, Any]]:
    port = free_port()
    slots = max(args.streams)
    argv = [str(args.llama_server), "-m", str(args.model_path), "--host", "127.0.0.1",
            "--port", str(port), "-np", str(slots), "-c", str(_n_ctx(args)), "-fa", "on",
            "-ngl", "999", "-b", str(max(2048, args.n_batch)), "--no-webui"]
    server = start_server("llama-server", argv, env=dict(os.environ), port=port,
                          ready_path="/health", log_path=workdir.path / "llama-server.log",
                          api_key="unused", timeout=args.ready_timeout)
    try:
        return _measure(server, args, {"ignore_eos": True} if args.ignore_eos else {})
    finally:
        server.stop()


def run_batched_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    """llama-batched-bench's decode (S_TG) and prefill (S_PP) rates at each level."""
    argv = [str(args.batched_bench), "-m", str(args.model_path), "-c", str(_n_ctx(args)),
            "-b", "2048", "-ub", "512", "-npp", str(args.bare_prompt_tokens),
            "-ntg", str(args.tokens), "-npl", ",".join(map(str, args.streams)), "-fa", "on",
            "-ngl", "999", "--output-format", "jsonl"]
    print("running " + " ".join(argv), file=sys.stderr, flush=True)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"llama-batched-bench exited {done.returncode}: {done.stderr[-2000:]}")
    levels = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            levels.append({"streams": row.get("pl"), "tok_s": row.get("speed_tg"),
                           "prefill_tok_s": row.get("speed_pp")})
    if not levels:  # an older build prints only its markdown table
        for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|[^|]*\|[^|]*\|\s*([\d.]+)"
                             r"\s*\|[^|]*\|\s*([\d.]+)", done.stdout, re.M):
            levels.append({"streams": int(m.group(3)), "tok_s": float(m.group(5)),
                           "prefill_tok_s": float(m.group(4))})
    return levels


def _table(results: dict[str, list[dict[str, Any]]], streams: list[int]) -> str:
    head = "| streams |" + "".join(f" {name} |" for name in results)
    lines = [head, "|---|" + "---|" * len(results)]
    for n in streams:
        cells = []
        for levels in results.values():
            level = next((x for x in levels if x.get("streams") == n), None)
            if level is None or level.get("tok_s") is None:
                cells.append(" - |")
            elif "ttft_p50_s" in level:
                cells.append(f" {level['tok_s']:,.0f} tok/s, TTFT p50 {level['ttft_p50_s']:.2f} s"
                             f" p99 {level['ttft_p99_s']:.2f} s, ITL p99 "
                             f"{level['itl_p99_s'] * 1000:.0f} ms |")
            else:
                cells.append(f" {level['tok_s']:,.0f} tok/s (prefill "
                             f"{level['prefill_tok_s']:,.0f}) |")
        lines.append(f"| {n} |" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32, 64])
    parser.add_argument("--tokens", type=positive_int, default=128)
    parser.add_argument("--sentences", type=positive_int, default=8,
                        help="filler sentences per prompt (8 make ~270 tokens with the "
                             "default model's template)")
    parser.add_argument("--bare-prompt-tokens", type=positive_int, default=270)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument("--n-batch", type=positive_int, default=2048)
    parser.add_argument("--gpu-layers", type=int, default=None)
    parser.add_argument("--engine-setting", action="append", default=[], metavar="KEY=JSON")
    parser.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--batched-bench", type=Path)
    parser.add_argument("--skip-seekserve", action="store_true")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--request-timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--keep-server-log", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    workdir = WorkDir("gpu", keep=args.keep_server_log)
    # seekserve first: on a lent machine whose time may run out, its numbers matter most.
    # Each server's numbers are written as soon as they are in.
    runs = []
    if not args.skip_seekserve:
        runs.append(("seekserve", lambda: run_seekserve(args, workdir)))
    if args.llama_server:
        runs.append((f"llama-server -np {max(args.streams)}",
                     lambda: run_llama_server(args, workdir)))
    if args.batched_bench:
        runs.append(("llama.cpp bare decode", lambda: run_batched_bench(args)))
    with cleanup(workdir):
        for name, run in runs:
            results[name] = run()
            if args.json:
                args.json.write_text(json.dumps({"machine": machine_info(),
                                                 "args": sys.argv[1:], "results": results},
                                                indent=2))
            print(_table(results, args.streams), flush=True)


if __name__ == "__main__":
    run_main(main)
