"""Single-stream decode tokens/s: seekserve over streaming HTTP vs a bare llama-cpp-python loop.

    .venv/bin/python bench/decode_vs_bare.py [--runs 3] [--tokens 128]

Both sides use the same GGUF file, the same llama-cpp-python build and the same prompt rendered
by the model's chat template. The bare loop (in this process, before the server starts; never
both at once) loads the model with n_ctx 4096, n_batch 512 and one thread per CPU, prefills the
prompt, then times greedy decode steps with llama.cpp's greedy sampler. Both sides report
tokens after the first over the time after the first, so prefill is never timed. The median
of `--runs` runs (after one short warm-up each) is compared; the goal is HTTP >= 0.95 x bare.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    STORY_TOPICS,
    BenchError,
    StreamResult,
    WorkDir,
    add_common_args,
    async_client,
    chat_body,
    cleanup,
    cpu_count,
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

GOAL_RATIO = 0.95
N_CTX = 4096
N_BATCH = 512


def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long, detailed story about {STORY_TOPICS[0]}."}]


@dataclass
class BareRun:
    tokens: int
    seconds_after_first: float
    text: str

    @property
    def rate(self) -> float:
        return (self.tokens - 1) / self.seconds_after_first


class BareLoop:
    """llama-cpp-python with nothing on top: load, prefill, greedy decode one token per step."""

    def __init__(self, model_path: Path, threads: int) -> None:
        import llama_cpp as lc
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._lc = lc
        self.llm = Llama(model_path=str(model_path), n_ctx=N_CTX, n_batch=N_BATCH,
                         n_threads=threads, n_threads_batch=threads, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BenchError(f"{model_path} has no chat template; this benchmark needs one")
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm.detokenize([self.llm.token_eos()], special=True).decode(),
            bos_token=self.llm.detokenize([self.llm.token_bos()], special=True).decode(),
        )
        self.prompt_text = formatter(messages=messages()).prompt  # type: ignore[arg-type]
        self.prompt = self.llm.tokenize(self.prompt_text.encode(), add_bos=True, special=True)
        self._vocab = lc.llama_model_get_vocab(self.llm.model)
        self._sampler = lc.llama_sampler_init_greedy()

    def _decode(self, tokens: list[int]) -> None:
        lc = self._lc
        array = (lc.llama_token * len(tokens))(*tokens)
        status = lc.llama_decode(self.llm.ctx, lc.llama_batch_get_one(array, len(tokens)))
        if status != 0:
            raise BenchError(f"bare loop: llama_decode returned {status}")

    def run(self, n_tokens: int) -> BareRun:
        lc = self._lc
        lc.llama_memory_clear(lc.llama_get_memory(self.llm.ctx), True)
        for start in range(0, len(self.prompt), N_BATCH):
            self._decode(self.prompt[start:start + N_BATCH])
        token = lc.llama_sampler_sample(self._sampler, self.llm.ctx, -1)
        first = time.perf_counter()
        out = [token]
        while len(out) < n_tokens and not lc.llama_vocab_is_eog(self._vocab, token):
            self._decode([token])
            token = lc.llama_sampler_sample(self._sampler, self.llm.ctx, -1)
            if lc.llama_vocab_is_eog(self._vocab, token):
                break
            out.append(token)
        elapsed = time.perf_counter() - first
        text = self.llm.detokenize(out).decode("utf-8", errors="replace")
        return BareRun(len(out), elapsed, text)

    def close(self) -> None:
        self._lc.llama_sampler_free(self._sampler)
        self.llm.close()


def measure_bare(model_path: Path, args: argparse.Namespace) -> tuple[list[BareRun], int]:
    loop = BareLoop(model_path, args.threads)
    try:
        loop.run(8)  # warm-up
        runs = []
        for i in range(args.runs):
            result = loop.run(args.tokens)
            runs.append(result)
            print(f"bare run {i + 1}: {result.tokens} tokens, {result.rate:.2f} tok/s",
                  file=sys.stderr)
        return runs, len(loop.prompt)
    finally:
        loop.close()


async def measure_http(args: argparse.Namespace, workdir: WorkDir) -> list[StreamResult]:
    engine = engine_settings(args, n_ctx=N_CTX, n_batch=N_BATCH, n_threads=args.threads)
    server = start_seekserve(args, workdir, engine)
    try:
        async with async_client(server, args.request_timeout) as client:
            await stream_chat(client, server, chat_body(messages(), 8))  # warm-up
            results = []
            for i in range(args.runs):
                result = await stream_chat(client, server, chat_body(messages(), args.tokens),
                                           StreamResult(label=f"http run {i + 1}"))
                results.append(result)
                print(f"http run {i + 1}: ttft {result.ttft * 1000:.0f} ms, "
                      f"{result.completion_tokens} tokens, {result.decode_rate():.2f} tok/s",
                      file=sys.stderr)
            return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per run (N)")
    parser.add_argument("--threads", type=int, default=cpu_count(),
                        help="llama.cpp threads on both sides (default: all CPUs)")
    add_common_args(parser)
    args = parser.parse_args()
    warn_if_busy()
    model_path = resolve_model_path(args)
    workdir = WorkDir("decode", args.keep_server_log)
    with cleanup(workdir):
        print("bare llama-cpp-python loop (no server running)", file=sys.stderr)
        bare, bare_prompt_tokens = measure_bare(model_path, args)
        print("seekserve over HTTP", file=sys.stderr)
        http = run_async(measure_http(args, workdir))

    bare_rate = median([r.rate for r in bare])
    http_rate = median([r.decode_rate() for r in http])
    ratio = http_rate / bare_rate
    http_prompt_tokens = http[0].prompt_tokens
    same_text = all(r.text.strip() == bare[0].text.strip() for r in http)
    if http_prompt_tokens != bare_prompt_tokens:
        print(f"note: the server counted {http_prompt_tokens} prompt tokens, the bare loop "
              f"{bare_prompt_tokens} (different rendering?)", file=sys.stderr)
    summary = {
        "model_path": str(model_path),
        "threads": args.threads,
        "runs": args.runs,
        "tokens_requested": args.tokens,
        "prompt_tokens": {"bare": bare_prompt_tokens, "http": http_prompt_tokens},
        "bare": {"tok_s": [round(r.rate, 2) for r in bare], "tokens": [r.tokens for r in bare],
                 "median_tok_s": rounded(bare_rate, 2)},
        "http": {"tok_s": [round(r.decode_rate(), 2) for r in http],
                 "tokens": [r.completion_tokens for r in http],
                 "ttft_ms": [round(r.ttft * 1000) for r in http],
                 "median_tok_s": rounded(http_rate, 2)},
        "same_text_as_bare": same_text,
        "ratio_http_over_bare": rounded(ratio, 3),
        "goal": f"http >= {GOAL_RATIO} x bare",
        "goal_met": bool(ratio >= GOAL_RATIO),
    }
    report("decode_vs_bare", summary, [
        ("bare tok/s", fmt(bare_rate, 1)),
        ("HTTP tok/s", fmt(http_rate, 1)),
        ("HTTP / bare", fmt(ratio, 3)),
        ("tokens", str(http[0].completion_tokens)),
        ("goal >= 0.95", "met" if ratio >= GOAL_RATIO else "NOT met"),
    ])


if __name__ == "__main__":
    run_main(main)
