"""Single-stream decode speed through the full HTTP path of a running seekserve.

    python bench/single_stream.py --base-url http://127.0.0.1:8000/v1 [--api-key K] [--runs 5]

Streams a greedy 128-token answer `--runs` times and prints time to first token and decode
tokens/s (completion tokens after the first, over the time after the first) for each run and
their median.
"""

from __future__ import annotations

import argparse
import statistics
import time

import openai

PROMPT = "Write a long story about a lighthouse keeper."


def one_run(client: openai.OpenAI, model: str, max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    assert first is not None, "no content was streamed"
    return first - start, (tokens - 1) / (end - first), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--model", default="deepseek-v4-pro")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    one_run(client, args.model, 8)  # warm-up
    speeds = []
    for i in range(args.runs):
        ttft, speed, tokens = one_run(client, args.model, args.max_tokens)
        speeds.append(speed)
        print(f"run {i + 1}: ttft {ttft * 1000:.0f} ms, {tokens} tokens, {speed:.1f} tok/s")
    print(f"median decode: {statistics.median(speeds):.1f} tok/s over {args.runs} runs")


if __name__ == "__main__":
    main()
