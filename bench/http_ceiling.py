"""How many tokens per second seekserve's HTTP and chat layers can stream when the engine costs
nothing: the ceiling above any engine, GPU or not.

  python bench/http_ceiling.py [--streams 1,8,32,64] [--tokens 128]

The server runs the real app (chat layer, SSE, accounting in SQLite) over tests/fakes.py's
FakeEngine, which yields each token as soon as it is asked; the clients are
bench/gpu_throughput.py's (streaming chat completions, one request per client, distinct
~270-token prompts). Everything the app does per token lands on its one event loop, so this is
what one core delivers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import WorkDir, cleanup, free_port, positive_int, run_main, start_server
from gpu_throughput import _round


def serve(port: int, tokens: int, data_dir: Path) -> None:
    import uvicorn

    from seekserve.app import create_app
    from seekserve.settings import Settings
    from tests.fakes import FakeEngine

    settings = Settings.load(None, data_dir=data_dir,
                             models=[{"id": "deepseek-v4-pro", "engine": "embedded",
                                      "thinking": None}])
    engine = FakeEngine(reply="ab" * tokens, max_sequence_tokens=1 << 20)
    uvicorn.run(create_app(settings, {"embedded": engine}), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32, 64])
    parser.add_argument("--tokens", type=positive_int, default=128)
    parser.add_argument("--sentences", type=positive_int, default=8)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.tokens, args.data_dir)
        return
    args.request_timeout = 600
    workdir = WorkDir("http-ceiling", keep=False)
    with cleanup(workdir):
        port = free_port()
        server = start_server(
            "seekserve (fake engine)",
            [sys.executable, __file__, "--serve", str(port), "--tokens", str(args.tokens),
             "--data-dir", str(workdir.path)],
            env=dict(os.environ, SEEKSERVE_API_KEYS="sk-bench"), port=port, ready_path="/ready",
            log_path=workdir.path / "server.log", api_key="sk-bench", timeout=120)
        asyncio.run(_round(server, 1, args, 999, {}))  # warm-up
        print("| streams | tok/s | TTFT p50 | ITL p99 |")
        print("|---|---|---|---|")
        for n in args.streams:
            r = asyncio.run(_round(server, n, args, 0, {}))
            print(f"| {n} | {r['tok_s']:,.0f} | {r['ttft_p50_s'] * 1000:.0f} ms | "
                  f"{r['itl_p99_s'] * 1000:.1f} ms |", flush=True)


if __name__ == "__main__":
    run_main(main)
