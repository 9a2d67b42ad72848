"""Concurrent streaming clients: seekserve vs llama-cpp-python's own server, one after the other.

    .venv/bin/python bench/concurrent_vs_peer.py [--runs 3] [--clients 8] [--prompt-tokens 250]

Each of `--clients` clients streams one greedy chat completion (max_tokens `--max-tokens`) with
its own prompt of about `--prompt-tokens` tokens (counted with the model's tokenizer; prompts
differ in every run, so no run reuses another's prefix). All requests are sent at once.
Reported per run, and as the median over runs: aggregate output tokens/s (sum of completion
tokens over the wall time from the first request sent to the last stream finished), time to
first token p50 and max, and each client's completion tokens.

The peer is `python -m llama_cpp.server` from bench/.venv-peer (made by bench/setup_peer.sh
from the same llama-cpp-python wheel when missing) on the same GGUF file, with
`--interrupt_requests False` (its default lets each new request abort the running one) and
`--n_threads` = all CPUs (its default is half of them). It sends no usage in streams, so its
completion tokens are counted by tokenizing the streamed text with the model's tokenizer.
Goal: seekserve >= 3x the peer's aggregate tok/s and TTFT p50 <= 1/4 of the peer's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    REPO,
    STORY_TOPICS,
    BenchError,
    ServerProcess,
    StreamResult,
    Tokenizer,
    WorkDir,
    add_common_args,
    async_client,
    chat_body,
    cleanup,
    cpu_count,
    engine_settings,
    fmt,
    free_port,
    median,
    percentile,
    report,
    resolve_model_path,
    rounded,
    run_async,
    run_main,
    start_seekserve,
    start_server,
    stream_chat,
    warn_if_busy,
)

PEER_VENV = REPO / "bench" / ".venv-peer"
SETUP_PEER = REPO / "bench" / "setup_peer.sh"
GOAL_THROUGHPUT = 3.0
GOAL_TTFT = 0.25


def build_prompts(tokenizer: Tokenizer, run: int, clients: int, target: int, shared: int = 0
                  ) -> list[list[dict[str, str]]]:
    """`clients` prompts of about `target` tokens each, distinct for every run. With `shared`,
    the first `shared` tokens are one system message common to all clients (an app's system
    prompt); the rest is each client's own."""
    system = (tokenizer.text_of_tokens(500 * (run + 1), shared) if shared else "")
    prompts = []
    for client in range(clients):
        topic = STORY_TOPICS[(client + run) % len(STORY_TOPICS)]
        ask = (f"\n\nUsing the notes above only as background, write a long, detailed story "
               f"about {topic}.")
        notes = tokenizer.text_of_tokens(1000 * (run + 1) + client,
                                         max(1, target - shared - tokenizer.count(ask)))
        messages = [{"role": "user", "content": notes + ask}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        prompts.append(messages)
    return prompts


@dataclass
class LoadRun:
    wall: float
    results: list[StreamResult]
    tokens: list[int]

    @property
    def throughput(self) -> float:
        return sum(self.tokens) / self.wall

    @property
    def ttfts(self) -> list[float]:
        return [r.ttft for r in self.results]

    def summary(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall, 2),
            "tok_s": round(self.throughput, 2),
            "ttft_p50_s": round(percentile(self.ttfts, 50), 2),
            "ttft_max_s": round(max(self.ttfts), 2),
            "completion_tokens": self.tokens,
            "prompt_tokens": [r.prompt_tokens for r in self.results],
        }


async def load_run(server: ServerProcess, prompts: list[list[dict[str, str]]],
                   args: argparse.Namespace, tokenizer: Tokenizer, run: int) -> LoadRun:
    async with async_client(server, args.request_timeout) as client:
        results = [StreamResult(label=f"{server.name} client {i}") for i in range(len(prompts))]
        # Distinct prompts come from distinct end users; a shared system prompt from one app
        # calling without user_id (one cache salt), as an app behind one key does.
        bodies = [chat_body(p, args.max_tokens,
                            **({} if args.shared_prefix_tokens
                               else {"user_id": f"bench-run{run}-client{i}"}))
                  for i, p in enumerate(prompts)]
        start = time.perf_counter()
        await asyncio.gather(*(stream_chat(client, server, body, result)
                               for body, result in zip(bodies, results, strict=True)))
        wall = max(r.finished_at for r in results) - start
    # The peer sends no usage; its tokens are counted by tokenizing what it streamed.
    tokens = [r.completion_tokens if r.completion_tokens is not None
              else tokenizer.count(r.text) for r in results]
    return LoadRun(wall, results, tokens)


def measure(server: ServerProcess, args: argparse.Namespace, tokenizer: Tokenizer
            ) -> list[LoadRun]:
    async def go() -> list[LoadRun]:
        async with async_client(server, args.request_timeout) as client:
            await stream_chat(client, server, chat_body(
                [{"role": "user", "content": "Say hello."}], 4))  # warm-up
        runs = []
        for run in range(args.runs):
            prompts = build_prompts(tokenizer, run, args.clients, args.prompt_tokens,
                                    args.shared_prefix_tokens)
            result = await load_run(server, prompts, args, tokenizer, run)
            runs.append(result)
            s = result.summary()
            print(f"{server.name} run {run + 1}: {s['tok_s']} tok/s aggregate, TTFT p50 "
                  f"{s['ttft_p50_s']} s max {s['ttft_max_s']} s, wall {s['wall_s']} s, "
                  f"tokens {s['completion_tokens']}", file=sys.stderr)
        return runs

    result: list[LoadRun] = run_async(go())
    return result


def ensure_peer_venv() -> Path:
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import llama_cpp.server.app"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"{PEER_VENV} is missing or broken: running {SETUP_PEER}", file=sys.stderr)
    setup = subprocess.run(["bash", str(SETUP_PEER)], cwd=REPO)
    if setup.returncode != 0:
        raise BenchError(f"{SETUP_PEER} failed with {setup.returncode}")
    return python


def start_peer(args: argparse.Namespace, workdir: WorkDir, model_path: Path) -> ServerProcess:
    python = ensure_peer_venv()
    port = free_port()
    argv = [str(python), "-m", "llama_cpp.server", "--model", str(model_path),
            "--n_ctx", str(args.peer_n_ctx), "--interrupt_requests", "False",
            "--n_threads", str(args.peer_threads), "--n_threads_batch", str(args.peer_threads),
            "--host", "127.0.0.1", "--port", str(port)]
    print(f"starting llama_cpp.server: {' '.join(argv)}", file=sys.stderr)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return start_server("llama_cpp.server", argv, env=env, port=port, ready_path="/v1/models",
                        log_path=workdir.path / "peer.log", api_key="unused",
                        timeout=args.ready_timeout)


def aggregate(runs: list[LoadRun]) -> dict[str, Any]:
    return {
        "median_tok_s": rounded(median([r.throughput for r in runs]), 2),
        "median_ttft_p50_s": rounded(median([percentile(r.ttfts, 50) for r in runs]), 2),
        "median_ttft_max_s": rounded(median([max(r.ttfts) for r in runs]), 2),
        "runs": [r.summary() for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=250)
    parser.add_argument("--shared-prefix-tokens", type=int, default=0,
                        help="make the first N prompt tokens a system prompt shared by all "
                        "clients, sent without user_id (default 0: all distinct)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-running", type=int, default=None,
                        help="seekserve engines.embedded.max_running (default: --clients)")
    parser.add_argument("--peer-threads", type=int, default=cpu_count())
    parser.add_argument("--peer-n-ctx", type=int, default=4096)
    parser.add_argument("--skip-peer", action="store_true", help="measure seekserve only")
    add_common_args(parser)
    args = parser.parse_args()
    warn_if_busy()
    model_path = resolve_model_path(args)
    tokenizer = Tokenizer(model_path)
    workdir = WorkDir("concurrent", args.keep_server_log)
    peer_runs: list[LoadRun] = []
    with cleanup(workdir):
        engine = engine_settings(args, max_running=max(args.max_running or args.clients, 1))
        server = start_seekserve(args, workdir, engine)
        try:
            ours = measure(server, args, tokenizer)
        finally:
            server.stop()
        if not args.skip_peer:
            peer = start_peer(args, workdir, model_path)
            try:
                peer_runs = measure(peer, args, tokenizer)
            finally:
                peer.stop()

    ours_summary = aggregate(ours)
    summary: dict[str, Any] = {
        "model_path": str(model_path), "clients": args.clients,
        "prompt_tokens_target": args.prompt_tokens, "max_tokens": args.max_tokens,
        "shared_prefix_tokens": args.shared_prefix_tokens,
        "seekserve_engine": engine, "seekserve": ours_summary,
    }
    columns = [
        ("seekserve tok/s", fmt(ours_summary["median_tok_s"])),
        ("seekserve TTFT p50 / max s", f"{fmt(ours_summary['median_ttft_p50_s'])} / "
                                       f"{fmt(ours_summary['median_ttft_max_s'])}"),
    ]
    if peer_runs:
        peer_summary = aggregate(peer_runs)
        speedup = ours_summary["median_tok_s"] / peer_summary["median_tok_s"]
        ttft_ratio = ours_summary["median_ttft_p50_s"] / peer_summary["median_ttft_p50_s"]
        met = speedup >= GOAL_THROUGHPUT and ttft_ratio <= GOAL_TTFT
        summary.update({
            "peer": {"threads": args.peer_threads, "n_ctx": args.peer_n_ctx,
                     "token_count": "tokenized streamed text (no usage in its streams)",
                     **peer_summary},
            "throughput_ratio": round(speedup, 2),
            "ttft_p50_ratio": round(ttft_ratio, 3),
            "goal": f"tok/s >= {GOAL_THROUGHPUT}x peer and TTFT p50 <= {GOAL_TTFT}x peer",
            "goal_met": met,
        })
        columns += [
            ("peer tok/s", fmt(peer_summary["median_tok_s"])),
            ("peer TTFT p50 / max s", f"{fmt(peer_summary['median_ttft_p50_s'])} / "
                                      f"{fmt(peer_summary['median_ttft_max_s'])}"),
            ("tok/s ratio", fmt(speedup, 2)),
            ("TTFT p50 ratio", fmt(ttft_ratio, 3)),
            ("goal", "met" if met else "NOT met"),
        ]
    tokenizer.close()
    report("concurrent_vs_peer", summary, columns)


if __name__ == "__main__":
    run_main(main)
