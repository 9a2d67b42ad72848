"""What the embedded engine spends per decode step outside llama_decode, at 1/8/32/64 streams.

At 64 streams a GPU decodes a step of the default model's shape in ~4 ms (shared/gpu/README.md),
so the engine's own work per step (reading logits, sampling, log-probabilities, bookkeeping,
handing events to the event loop) has to stay a small fraction of that.

  python bench/step_overhead.py                    # sampling only: synthetic logits, seconds
  python bench/step_overhead.py --engine           # + the engine's steps on the real model
  python bench/step_overhead.py --engine --model M.gguf --streams 64 --tokens 64

Sampling: a (streams x 151,936) float32 logits matrix per step, sampled by the per-sequence
float64 sampler the engine had before (`before`) and by `sample_step` (`now`): ms per step for
greedy, temperature 1, and greedy with top-5 log-probabilities.
Engine: N streams at temperature 0 through LlamaCppEngine; for steps where all N decode, the
median of (the step's wall time - its llama_decode time), and the same for the mailbox flush and
state publishing that follow each step.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seekserve.engines.base import SamplingParams, TokenEvent, TopToken
from seekserve.engines.llamacpp.sampling import Pick, Sampler, sample_step

VOCAB = 151_936


class BeforeSampler:
    """The per-sequence sampler the engine ran until this bench (float64, whole row)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng = np.random.Generator(np.random.PCG64(params.seed or 0))

    def sample(self, logits: npt.NDArray[np.float32]) -> TokenEvent:
        p = self.params
        if p.temperature == 0.0:
            token = int(np.argmax(logits))
        else:
            scaled = logits.astype(np.float64) / p.temperature
            scaled -= scaled.max()
            probs = np.exp(scaled)
            probs /= probs.sum()
            cumulative = np.cumsum(probs)
            token = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1],
                                        side="right").clip(0, len(probs) - 1))
        if not p.logprobs:
            return TokenEvent(token_id=token)
        row = logits.astype(np.float64)
        peak = row.max()
        log_total = peak + np.log(np.exp(row - peak).sum())
        n = p.top_logprobs
        best = np.argpartition(-row, n - 1)[:n]
        best = best[np.argsort(-row[best], kind="stable")]
        return TokenEvent(token_id=token, logprob=float(row[token] - log_total),
                          top=tuple(TopToken(int(t), float(row[t] - log_total)) for t in best))


def _logits(rows: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A language model's shape of row: a few strong tokens over a long low tail."""
    out = rng.standard_normal((rows, VOCAB), dtype=np.float32) * 2.0
    for r in range(rows):
        out[r, rng.choice(VOCAB, 8, replace=False)] += 10.0
    return out


def _ms_per_step(fn: Any, matrices: list[npt.NDArray[np.float32]]) -> float:
    began = time.perf_counter()
    for m in matrices:
        fn(m)
    return (time.perf_counter() - began) / len(matrices) * 1000


def bench_sampling(streams: list[int], steps: int) -> None:
    import os
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    pool_size = min(8, (os.cpu_count() or 1) // 2)  # as the engine sizes its pool
    pool = ThreadPoolExecutor(pool_size) if pool_size > 1 else None
    modes = {
        "greedy": SamplingParams(temperature=0.0, seed=1),
        "temperature 1": SamplingParams(temperature=1.0, seed=1),
        "greedy + top-5 logprobs": SamplingParams(temperature=0.0, seed=1, logprobs=True,
                                                  top_logprobs=5),
    }
    print(f"sampling, ms per step (before -> now; now on {max(pool_size, 1)} thread(s) for "
          "big steps, as the engine does):")
    print(f"| streams | {' | '.join(modes)} |")
    print(f"|---|{'---|' * len(modes)}")
    for n in streams:
        matrices = [_logits(n, rng) for _ in range(steps)]
        cells = []
        for params in modes.values():
            before = [BeforeSampler(params) for _ in range(n)]
            now = [Sampler(params) for _ in range(n)]
            old = _ms_per_step(lambda m, b=before: [s.sample(m[i]) for i, s in enumerate(b)],
                               matrices)
            new = _ms_per_step(
                lambda m, s=now: sample_step(m, [Pick(i, x) for i, x in enumerate(s)],
                                             pool=pool, pool_size=pool_size),
                matrices)
            cells.append(f"{old:.2f} -> {new:.2f}")
        print(f"| {n} | {' | '.join(cells)} |", flush=True)


async def _engine_run(model: Path, n: int, tokens: int, settings: dict[str, Any]
                      ) -> dict[str, float]:
    import llama_cpp as lc

    from seekserve.engines.base import FinishEvent, GenerationRequest
    from seekserve.engines.llamacpp.engine import LlamaCppEngine
    from seekserve.settings import LlamaCppEngineSettings

    spec = LlamaCppEngineSettings(**{"n_ctx": max(4096, n * (tokens + 64)), "max_running": n,
                                     "n_batch": max(512, n), "prefix_cache_entries": 0,
                                     **settings})
    engine = LlamaCppEngine(spec, model)
    await engine.start()
    decode_s = [0.0]
    real_decode = lc.llama_decode

    def timed_decode(ctx: Any, batch: Any) -> int:
        began = time.perf_counter()
        try:
            return int(real_decode(ctx, batch))
        finally:
            decode_s[0] += time.perf_counter() - began

    outside: list[float] = []
    decode: list[float] = []
    after: list[float] = []
    real_step, real_publish = engine._step, engine._publish

    def timed_step() -> None:
        full = sum(s.decoding for s in engine._running) == n
        decode_s[0] = 0.0
        began = time.perf_counter()
        real_step()
        if full:
            outside.append(time.perf_counter() - began - decode_s[0])
            decode.append(decode_s[0])

    def timed_publish() -> None:
        began = time.perf_counter()
        real_publish()
        engine._mailbox.flush()
        after.append(time.perf_counter() - began)

    lc.llama_decode = timed_decode
    engine._step = timed_step  # type: ignore[method-assign]
    engine._publish = timed_publish  # type: ignore[method-assign]
    try:
        tok = engine.tokenizer

        async def one(i: int) -> int:
            prompt = tok.encode(f"Stream {i}: count from one to a hundred, in words.")
            request = GenerationRequest(request_id=f"bench-{i}", prompt=prompt,
                                        max_tokens=tokens,
                                        sampling=SamplingParams(temperature=0.0))
            last = None
            async for event in engine.generate(request):
                last = event
            assert isinstance(last, FinishEvent)
            return last.completion_tokens

        began = time.perf_counter()
        produced = sum(await asyncio.gather(*(one(i) for i in range(n))))
        wall = time.perf_counter() - began
    finally:
        lc.llama_decode = real_decode
        await engine.aclose()
    ms = 1000.0
    return {
        "outside_ms": statistics.median(outside) * ms if outside else float("nan"),
        "decode_ms": statistics.median(decode) * ms if decode else float("nan"),
        "after_ms": statistics.median(after) * ms if after else float("nan"),
        "tok_s": produced / wall,
        "steps": len(outside),
    }


def bench_engine(model: Path, streams: list[int], tokens: int, settings: dict[str, Any]) -> None:
    print(f"\nengine on {model.name}, {tokens} tokens per stream, temperature 0 (median per "
          "step with every stream decoding):")
    print("| streams | step outside llama_decode | publish + hand-off | llama_decode | "
          "tok/s | steps |")
    print("|---|---|---|---|---|---|")
    for n in streams:
        r = asyncio.run(_engine_run(model, n, tokens, settings))
        print(f"| {n} | {r['outside_ms']:.2f} ms | {r['after_ms']:.2f} ms | "
              f"{r['decode_ms']:.1f} ms | {r['tok_s']:.0f} | {r['steps']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per size")
    parser.add_argument("--engine", action="store_true", help="also run the real engine")
    parser.add_argument("--model", type=Path, help="GGUF (default: the default model)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per stream (--engine)")
    parser.add_argument("--gpu-layers", type=int, help="engines.<name>.gpu_layers")
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    bench_sampling(streams, args.steps)
    if args.engine:
        model = args.model
        if model is None:
            from seekserve.app import default_model_path
            from seekserve.settings import Settings
            model = default_model_path(Settings().data_dir)
        settings = {} if args.gpu_layers is None else {"gpu_layers": args.gpu_layers}
        bench_engine(model, streams, args.tokens, settings)


if __name__ == "__main__":
    main()
