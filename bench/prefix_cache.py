"""Prefix cache: time to first token for requests that share a long system prompt.

    .venv/bin/python bench/prefix_cache.py [--runs 3] [--system-tokens 1500] [--rounds 4]

Every run uses fresh system prompts (a per-invocation nonce and the run number are in them), so
nothing is warm from an earlier run. One API key throughout.

1. Cold vs warm: a request with a ~`--system-tokens`-token system prompt and a short user
   message (cold), then the same system prompt, same `user_id`, another short user message
   (warm). Goal: median warm TTFT <= median cold TTFT / 10.
2. Isolation (first run only): the same system prompt again under another `user_id`, which the
   cache must not serve (its TTFT should look cold and report no cached tokens).
3. Alternation: two other system prompts under two `user_id`s, A,B,A,B,... for `--rounds`
   rounds, each request with a new short user message. TTFT per round (median over runs):
   from round 2 on both must stay warm (<= cold / 10).

Every request prints the usage fields `prompt_tokens_details.cached_tokens` and
`prompt_cache_hit_tokens` as the server returns them (null when absent). max_tokens is small.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

from common import (
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
    report,
    resolve_model_path,
    rounded,
    run_async,
    run_main,
    start_seekserve,
    stream_chat,
    warn_if_busy,
)

GOAL_FACTOR = 10.0


def system_prompt(tokenizer: Tokenizer, nonce: str, seed: int, n_tokens: int) -> str:
    head = (f"You are the archive assistant of session {nonce}-{seed}. Answer questions using "
            "only the reference notes below; be brief.\n\nReference notes:\n")
    return head + tokenizer.text_of_tokens(seed, max(1, n_tokens - tokenizer.count(head)))


def describe(result: StreamResult) -> dict[str, Any]:
    return {"ttft_s": round(result.ttft, 3), "prompt_tokens": result.prompt_tokens,
            **result.cached_tokens()}


async def measure(args: argparse.Namespace, workdir: WorkDir, tokenizer: Tokenizer
                  ) -> list[dict[str, Any]]:
    engine = engine_settings(args, n_ctx=args.n_ctx)
    server = start_seekserve(args, workdir, engine)
    nonce = secrets.token_hex(4)
    runs: list[dict[str, Any]] = []
    try:
        async with async_client(server, args.request_timeout) as client:

            async def ask(system: str, question: str, user_id: str, label: str) -> StreamResult:
                body = chat_body([{"role": "system", "content": system},
                                  {"role": "user", "content": question}],
                                 args.max_tokens, user_id=user_id)
                result = await stream_chat(client, server, body, StreamResult(label=label))
                print(f"  {label}: ttft {result.ttft:.3f} s, prompt {result.prompt_tokens}, "
                      f"cache {result.cached_tokens()}", file=sys.stderr)
                return result

            await stream_chat(client, server, chat_body(
                [{"role": "user", "content": "Say hello."}], 4, user_id=f"warmup-{nonce}"))
            for run in range(args.runs):
                print(f"run {run + 1}", file=sys.stderr)
                user = f"bench-{nonce}-run{run}"
                shared = system_prompt(tokenizer, nonce, 100 * run + 1, args.system_tokens)
                cold = await ask(shared, "Question 1: what does the first note say?", user,
                                 "cold")
                warm = await ask(shared, "Question 2: which place is named most often?", user,
                                 "warm")
                record: dict[str, Any] = {"cold": describe(cold), "warm": describe(warm)}
                if run == 0:
                    other = await ask(shared, "Question 2: which place is named most often?",
                                      f"{user}-other", "same prompt, other user_id")
                    record["other_user"] = describe(other)
                prompts = {who: system_prompt(tokenizer, nonce, 100 * run + seed,
                                              args.system_tokens)
                           for who, seed in (("A", 2), ("B", 3))}
                rounds = []
                for k in range(args.rounds):
                    row = {}
                    for who in ("A", "B"):
                        result = await ask(prompts[who], f"Round {k + 1}: what does note "
                                           f"{k + 2} say?", f"{user}-{who}",
                                           f"round {k + 1} {who}")
                        row[who] = describe(result)
                    rounds.append(row)
                record["rounds"] = rounds
                runs.append(record)
    finally:
        server.stop()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system-tokens", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=4, help="A,B alternation rounds")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--n-ctx", type=int, default=16384, help="seekserve n_ctx")
    add_common_args(parser)
    args = parser.parse_args()
    warn_if_busy()
    model_path = resolve_model_path(args)
    tokenizer = Tokenizer(model_path)
    workdir = WorkDir("prefix", args.keep_server_log)
    with cleanup(workdir):
        runs: list[dict[str, Any]] = run_async(measure(args, workdir, tokenizer))
    tokenizer.close()

    cold = median([r["cold"]["ttft_s"] for r in runs])
    warm = median([r["warm"]["ttft_s"] for r in runs])
    limit = cold / GOAL_FACTOR
    per_round = [{who: rounded(median([r["rounds"][k][who]["ttft_s"] for r in runs]))
                  for who in ("A", "B")} for k in range(args.rounds)]
    later = [v for row in per_round[1:] for v in row.values() if v is not None]
    stays_warm = bool(later) and max(later) <= limit
    warm_met = warm <= limit
    other = runs[0]["other_user"]
    # Isolated means the other user_id reused nothing: no cached tokens reported (or, where the
    # server reports none, a TTFT that looks cold).
    if other["cached_tokens"] is not None:
        isolated = other["cached_tokens"] == 0
    else:
        isolated = other["ttft_s"] > cold / 2
    summary = {
        "model_path": str(model_path), "system_tokens_target": args.system_tokens,
        "max_tokens": args.max_tokens, "runs": args.runs,
        "median_cold_ttft_s": rounded(cold), "median_warm_ttft_s": rounded(warm),
        "warm_over_cold": rounded(warm / cold, 4),
        "other_user": other,
        "other_user_isolated": isolated,
        "alternation_median_ttft_s_per_round": per_round,
        "alternation_stays_warm_after_round_1": stays_warm,
        "goal": f"warm <= cold / {GOAL_FACTOR:g}; alternation warm from round 2; "
                "no reuse across user_ids",
        "goal_met": warm_met and stays_warm and isolated,
        "per_run": runs,
    }
    worst_later = max(later) if later else None
    report("prefix_cache", summary, [
        ("cold TTFT s", fmt(cold, 2)),
        ("warm TTFT s", fmt(warm, 3)),
        ("warm / cold", fmt(warm / cold, 4)),
        ("other user_id TTFT s (isolated?)",
         f"{fmt(other['ttft_s'], 2)} ({'yes' if isolated else 'NO'})"),
        ("alternation worst TTFT from round 2 s", fmt(worst_later, 3)),
        ("cached_tokens (warm, run 1)", str(runs[0]["warm"]["cached_tokens"])),
        ("goal", "met" if warm_met and stays_warm and isolated else "NOT met"),
    ])


if __name__ == "__main__":
    run_main(main)
