"""Inter-token latency of running streams while a long prompt is admitted (prefill interference).

    .venv/bin/python bench/itl_under_prefill.py [--runs 3] [--streams 4] [--long-tokens 2000]

Each run starts `--streams` greedy streams (long-answer prompts, max_tokens `--max-tokens`).
Once every stream has produced `--tokens-before` content chunks, one request with a
`--long-tokens`-token prompt (fresh each run, so never cached) is submitted. Inter-token
latency (ITL) is the gap between successive content chunks of the running streams (each chunk
is normally one token):

- baseline: gaps lying wholly between the moment every stream has started and the submission;
- admission: gaps overlapping the window from the submission to the long prompt's first token
  (so a stall that the first token ends is counted).

Reported per run and as the median over runs: ITL p50/p99 in both windows, p99 admission /
p99 baseline (goal <= 2), the long prompt's time to first token, and the gap counts.
seekserve runs with max_running = streams + 1, so the long prompt need not queue for a slot.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from typing import Any

from common import (
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
    engine_settings,
    fmt,
    median,
    percentile,
    report,
    resolve_model_path,
    rounded,
    run_async,
    run_main,
    start_seekserve,
    stream_chat,
    warn_if_busy,
)

GOAL_RATIO = 2.0
POLL_S = 0.01


def ms(value: float) -> float | None:
    return rounded(value * 1000, 1)


async def one_run(server: ServerProcess, args: argparse.Namespace, long_prompt: str, run: int,
                  nonce: str) -> dict[str, Any]:
    async with async_client(server, args.request_timeout) as client:
        streams = [StreamResult(label=f"stream {i}") for i in range(args.streams)]
        tasks = []
        for i, result in enumerate(streams):
            topic = STORY_TOPICS[(i + run * args.streams) % len(STORY_TOPICS)]
            body = chat_body([{"role": "user",
                               "content": f"Write a long, detailed story about {topic}."}],
                             args.max_tokens, user_id=f"itl-{nonce}-run{run}-stream{i}")
            tasks.append(asyncio.create_task(stream_chat(client, server, body, result)))

        def failed() -> None:
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]

        # Wait until every stream has produced enough tokens (or ended early).
        deadline = time.monotonic() + args.request_timeout
        while any(len(r.token_times) < args.tokens_before and not t.done()
                  for r, t in zip(streams, tasks, strict=True)):
            failed()
            if time.monotonic() > deadline:
                raise server.failure("the streams did not reach --tokens-before in time")
            await asyncio.sleep(POLL_S)
        failed()
        if any(t.done() for t in tasks):
            print("warning: a stream finished before the long prompt was submitted",
                  file=sys.stderr)
        long = StreamResult(label="long prompt")
        long_body = chat_body([{"role": "user", "content": long_prompt}], args.long_max_tokens,
                              user_id=f"itl-{nonce}-run{run}-long")
        await stream_chat(client, server, long_body, long)
        await asyncio.gather(*tasks)

    all_started = max(r.first_token_at for r in streams)
    submitted, first = long.sent_at, long.first_token_at
    base = [g for r in streams for g in r.gaps_within(all_started, submitted)]
    during = [g for r in streams for g in r.gaps_overlapping(submitted, first)]
    base_p99, during_p99 = percentile(base, 99), percentile(during, 99)
    record = {
        "baseline_gaps": len(base), "baseline_p50_ms": ms(percentile(base, 50)),
        "baseline_p99_ms": ms(base_p99),
        "admission_gaps": len(during), "admission_p50_ms": ms(percentile(during, 50)),
        "admission_p99_ms": ms(during_p99),
        "admission_max_ms": ms(max(during)) if during else None,
        "p99_ratio": rounded(during_p99 / base_p99, 2),
        "long_ttft_s": round(long.ttft, 2),
        "long_prompt_tokens": long.prompt_tokens,
        "long_cache": long.cached_tokens(),
        "stream_tokens": [r.completion_tokens for r in streams],
        "streams_finished_before_long_first_token":
            sum(1 for r in streams if r.token_times[-1] < first),
    }
    print(f"run {run + 1}: baseline p99 {record['baseline_p99_ms']} ms "
          f"({len(base)} gaps), admission p99 {record['admission_p99_ms']} ms "
          f"({len(during)} gaps, max {record['admission_max_ms']} ms), ratio "
          f"{record['p99_ratio']}, long TTFT {record['long_ttft_s']} s", file=sys.stderr)
    if not during:
        print("warning: no stream produced a token during admission", file=sys.stderr)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=200, help="per running stream")
    parser.add_argument("--tokens-before", type=int, default=20,
                        help="tokens every stream produces before the long prompt is sent")
    parser.add_argument("--long-tokens", type=int, default=2000)
    parser.add_argument("--long-max-tokens", type=int, default=8)
    add_common_args(parser)
    args = parser.parse_args()
    if args.tokens_before >= args.max_tokens:
        raise BenchError("--tokens-before must be below --max-tokens")
    warn_if_busy()
    model_path = resolve_model_path(args)
    tokenizer = Tokenizer(model_path)
    nonce = secrets.token_hex(4)
    ask = "\n\nSummarise the notes above in one sentence."
    long_prompts = [tokenizer.text_of_tokens(7000 + run, args.long_tokens - tokenizer.count(ask))
                    + ask for run in range(args.runs)]
    tokenizer.close()
    workdir = WorkDir("itl", args.keep_server_log)
    engine = engine_settings(args, max_running=args.streams + 1)

    async def measure() -> list[dict[str, Any]]:
        server = start_seekserve(args, workdir, engine)
        try:
            async with async_client(server, args.request_timeout) as client:
                await stream_chat(client, server, chat_body(
                    [{"role": "user", "content": "Say hello."}], 4))  # warm-up
            return [await one_run(server, args, long_prompts[run], run, nonce)
                    for run in range(args.runs)]
        finally:
            server.stop()

    with cleanup(workdir):
        runs: list[dict[str, Any]] = run_async(measure())

    def med(key: str) -> float:
        return median([float(r[key]) for r in runs if r[key] is not None])

    ratio = med("p99_ratio")
    met = ratio <= GOAL_RATIO
    summary = {
        "model_path": str(model_path), "streams": args.streams, "max_tokens": args.max_tokens,
        "tokens_before": args.tokens_before, "long_tokens_target": args.long_tokens,
        "seekserve_engine": engine,
        "median_baseline_p50_ms": rounded(med("baseline_p50_ms"), 1),
        "median_baseline_p99_ms": rounded(med("baseline_p99_ms"), 1),
        "median_admission_p50_ms": rounded(med("admission_p50_ms"), 1),
        "median_admission_p99_ms": rounded(med("admission_p99_ms"), 1),
        "median_p99_ratio": rounded(ratio, 2),
        "median_long_ttft_s": rounded(med("long_ttft_s"), 2),
        "goal": f"p99 ITL during admission <= {GOAL_RATIO:g} x baseline p99",
        "goal_met": met,
        "per_run": runs,
    }
    report("itl_under_prefill", summary, [
        ("baseline ITL p50 / p99 ms",
         f"{fmt(med('baseline_p50_ms'), 0)} / {fmt(med('baseline_p99_ms'), 0)}"),
        ("admission ITL p50 / p99 ms",
         f"{fmt(med('admission_p50_ms'), 0)} / {fmt(med('admission_p99_ms'), 0)}"),
        ("p99 ratio", fmt(ratio, 2)),
        ("long prompt TTFT s", fmt(med("long_ttft_s"), 1)),
        ("goal <= 2", "met" if met else "NOT met"),
    ])


if __name__ == "__main__":
    run_main(main)
