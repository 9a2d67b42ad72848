"""Shared benchmark plumbing: servers as child processes, a timed SSE client, prompts, reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "deepseek-v4-pro"
DEFAULT_MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
LOG_TAIL_LINES = 40


class BenchError(Exception):
    """The benchmark cannot go on; the message says why (with a server's log tail if relevant)."""


# ----- machine and environment --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def default_model_path() -> Path:
    data_dir = os.environ.get("SEEKSERVE_DATA_DIR")
    if data_dir:
        return Path(data_dir) / "models" / DEFAULT_MODEL_FILE
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "seekserve" / "models" / DEFAULT_MODEL_FILE


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty.strip() else "")


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan


def warn_if_busy() -> None:
    """CPU benchmarks need a quiet machine; say so when something else is using it."""
    load = load_average()
    if load > 0.5:
        print(f"warning: 1-minute load average is {load:.2f} before the benchmark; "
              "other processes will distort the numbers", file=sys.stderr)


def machine_info() -> dict[str, str]:
    try:
        llama_version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        llama_version = "not installed"
    return {
        "machine": f"{cpu_model()}, {cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(),
        "llama_cpp_python": llama_version,
        "git": git_revision(),
        "load_average_at_end": f"{load_average():.2f}",
    }


def command_line() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(REPO)
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(REPO)
    return shlex.join([str(python), str(script), *sys.argv[1:]])


# ----- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def rounded(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else round(value, digits)


# ----- command-line options shared by every benchmark ----------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_args(parser: argparse.ArgumentParser, *, runs: int = 3) -> None:
    parser.add_argument("--runs", type=positive_int, default=runs,
                        help="measured runs (median reported)")
    parser.add_argument("--port", type=int, default=0,
                        help="port for the seekserve server (default: a free one)")
    parser.add_argument("--keep-server-log", action="store_true",
                        help="keep the work directory with the server config and log")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="GGUF file (default: seekserve's default model in its data dir)")
    parser.add_argument("--engine-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="extra engines.embedded setting for seekserve (YAML value), "
                             "repeatable, e.g. --engine-setting max_running=8")
    parser.add_argument("--ready-timeout", type=float, default=300,
                        help="seconds to wait for a server to become ready")
    parser.add_argument("--request-timeout", type=float, default=600,
                        help="seconds one streamed request may take")


def resolve_model_path(args: argparse.Namespace) -> Path:
    path: Path = args.model_path or default_model_path()
    if not path.is_file():
        raise BenchError(f"model file {path} does not exist; run `seekserve serve` once to fetch "
                         "the default model, or pass --model-path")
    return path.resolve()


def engine_settings(args: argparse.Namespace, **defaults: Any) -> dict[str, Any]:
    """engines.embedded for seekserve: this benchmark's defaults, then --engine-setting."""
    settings: dict[str, Any] = {"kind": "llamacpp", "model_path": str(resolve_model_path(args))}
    settings.update(defaults)
    for item in args.engine_setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--engine-setting wants KEY=VALUE, got {item!r}")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


# ----- child processes ----------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server started by this benchmark; stop() ends it and anything it started."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> BenchError:
        status = self.process.poll()
        state = "running" if status is None else f"exited with {status}"
        return BenchError(f"{what}\n--- {self.name} ({state}), last lines of {self.log_path}:\n"
                          f"{self.log_tail()}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise self.failure(f"{self.name} died")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(name: str, argv: list[str], *, env: dict[str, str], port: int, ready_path: str,
                 log_path: Path, api_key: str, timeout: float) -> ServerProcess:
    """Starts `argv` in its own process group and waits until GET ready_path answers 200."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
    server = ServerProcess(name, f"http://127.0.0.1:{port}", process, log_path, api_key)
    _live.append(server)
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {api_key}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise server.failure(f"{name} exited before it was ready")
        try:
            response = httpx.get(server.base_url + ready_path, timeout=2, headers=headers)
            if response.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise server.failure(f"{name} was not ready within {timeout:.0f} s")


_live: list[ServerProcess] = []


def stop_all_servers() -> None:
    while _live:
        _live.pop().stop()


class WorkDir:
    """A scratch directory for configs and logs; removed at the end unless kept."""

    def __init__(self, bench: str, keep: bool) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"seekserve-{bench}-"))
        self.keep = keep

    def close(self) -> None:
        if self.keep:
            print(f"server config and logs kept in {self.path}", file=sys.stderr)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def start_seekserve(args: argparse.Namespace, workdir: WorkDir, engine: dict[str, Any], *,
                    api_keys: Sequence[str] = ("sk-bench",), label: str = "seekserve"
                    ) -> ServerProcess:
    port = args.port or free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "info"},
        "engines": {"embedded": engine},
        # No thinking block (models think by default, as V4 does): the engine benchmarks time
        # answer tokens of the plain chat template, as the bare loops they compare with do.
        "models": [{"id": MODEL_ID, "engine": "embedded", "thinking": None}],
    }
    config_path = workdir.path / f"{label}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, SEEKSERVE_API_KEYS=",".join(api_keys), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "seekserve", "serve", "--config", str(config_path),
            "--port", str(port)]
    print(f"starting {label}: {shlex.join(argv)}", file=sys.stderr)
    return start_server(label, argv, env=env, port=port, ready_path="/ready",
                        log_path=workdir.path / f"{label}.log", api_key=api_keys[0],
                        timeout=args.ready_timeout)


@contextlib.contextmanager
def cleanup(workdir: WorkDir) -> Iterator[None]:
    """Stops every server this process started (also on Ctrl-C or SIGTERM); then the workdir."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except BaseException:
        workdir.keep = True  # the error message points at the logs in it
        raise
    finally:
        stop_all_servers()
        workdir.close()
        signal.signal(signal.SIGTERM, previous)


def run_main(main: Any) -> None:
    """Runs a benchmark's main(); a BenchError is printed without a traceback and exits 1."""
    try:
        main()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


# ----- streaming client ---------------------------------------------------------------------


@dataclass
class StreamResult:
    """Client-side timings of one streamed chat completion (time.perf_counter seconds)."""

    label: str = ""
    sent_at: float = math.nan
    first_token_at: float = math.nan
    token_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    finished_at: float = math.nan
    usage: dict[str, Any] | None = None
    text: str = ""
    finish_reason: str | None = None

    @property
    def ttft(self) -> float:
        return self.first_token_at - self.sent_at

    @property
    def completion_tokens(self) -> int | None:
        return None if self.usage is None else int(self.usage.get("completion_tokens", 0))

    @property
    def prompt_tokens(self) -> int | None:
        return None if self.usage is None else int(self.usage.get("prompt_tokens", 0))

    def cached_tokens(self) -> dict[str, Any]:
        """The prompt-cache fields of the usage, as the server sent them (None when absent)."""
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        return {"cached_tokens": details.get("cached_tokens"),
                "prompt_cache_hit_tokens": usage.get("prompt_cache_hit_tokens")}

    def gaps_within(self, start: float, end: float) -> list[float]:
        """Gaps between successive content chunks, both of which arrived in [start, end]."""
        return [b - a for a, b in itertools.pairwise(self.token_times) if start <= a and b <= end]

    def gaps_overlapping(self, start: float, end: float) -> list[float]:
        """Gaps between successive content chunks that overlap the window (start, end)."""
        return [b - a for a, b in itertools.pairwise(self.token_times) if b > start and a < end]

    def decode_rate(self) -> float:
        """Completion tokens after the first over the time after the first content chunk."""
        tokens = self.completion_tokens
        if tokens is None or tokens < 2 or len(self.token_times) < 2:
            return math.nan
        return (tokens - 1) / (self.token_times[-1] - self.first_token_at)


def chat_body(messages: list[dict[str, str]], max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}


def async_client(server: ServerProcess, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=httpx.Timeout(timeout, connect=10),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def stream_chat(client: httpx.AsyncClient, server: ServerProcess, body: dict[str, Any],
                      result: StreamResult | None = None) -> StreamResult:
    """POSTs a streaming chat completion and fills `result` as chunks arrive.

    `result` is updated in place, so another task can watch its progress.
    """
    result = result if result is not None else StreamResult()
    result.sent_at = time.perf_counter()
    try:
        async with (asyncio.timeout(client.timeout.read),
                    client.stream("POST", "/v1/chat/completions", json=body) as response):
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:500]
                raise server.failure(f"{result.label or 'request'} got HTTP "
                                     f"{response.status_code}: {detail}")
            async for line in response.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise server.failure(f"{result.label or 'request'} got an in-stream error: "
                                         f"{json.dumps(chunk['error'])}")
                if chunk.get("usage"):
                    result.usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if not result.token_times:
                            result.first_token_at = now
                        result.token_times.append(now)
                        result.text += content
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
    except httpx.HTTPError as exc:
        raise server.failure(f"{result.label or 'request'} failed: {exc!r}") from None
    except TimeoutError:
        raise server.failure(f"{result.label or 'request'} took longer than "
                             f"{client.timeout.read} s (--request-timeout)") from None
    result.finished_at = time.perf_counter()
    if not result.token_times:
        raise server.failure(f"{result.label or 'request'} streamed no content "
                             f"(finish_reason {result.finish_reason}, usage {result.usage})")
    return result


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


# ----- prompts ------------------------------------------------------------------------------

STORY_TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "a cartographer mapping a city that changes every night",
    "a retired astronaut who opens a bakery in a mountain village",
    "two rival clockmakers forced to repair the same tower clock",
    "a young botanist searching for a flower that blooms once a century",
    "a ship's cook who becomes captain during a storm",
    "a librarian who discovers a book that writes itself",
    "a violinist travelling across a desert to play at a wedding",
    "a beekeeper whose bees start building strange shapes",
    "a train conductor on the last night train before the line closes",
    "a glassblower apprenticed to a master who never speaks",
    "a detective investigating the disappearance of a town's bells",
]

_ADJECTIVES = ["quiet", "ancient", "bright", "narrow", "restless", "golden", "hidden", "broken",
               "northern", "patient", "curious", "silver", "distant", "careful", "heavy"]
_NOUNS = ["harbour", "engine", "garden", "ledger", "bridge", "market", "lantern", "archive",
          "orchard", "workshop", "river", "tower", "caravan", "observatory", "mill"]
_VERBS = ["records", "protects", "crosses", "rebuilds", "inspects", "measures", "remembers",
          "supplies", "connects", "watches", "repairs", "describes"]
_PLACES = ["the old quarter", "the eastern valley", "the coast road", "the high plateau",
           "the river delta", "the border town", "the salt flats", "the pine forest"]


def filler_text(seed: int, n_sentences: int) -> str:
    """Deterministic, readable, seed-specific prose (distinct seeds give distinct text)."""
    rng = random.Random(seed)
    sentences = []
    for i in range(n_sentences):
        sentences.append(
            f"Note {seed}.{i}: the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} "
            f"{rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} near "
            f"{rng.choice(_PLACES)}, and {rng.randint(2, 999)} people rely on it."
        )
    return " ".join(sentences)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silences file descriptor 2 (C libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Tokenizer:
    """The model's own tokenizer (vocabulary only, no weights in memory)."""

    def __init__(self, model_path: Path) -> None:
        from llama_cpp import Llama

        with quiet_stderr():  # llama.cpp warns about the context even with verbose=False
            self._llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def text_of_tokens(self, seed: int, n_tokens: int) -> str:
        """Filler text of exactly `n_tokens` tokens (cut at a token boundary)."""
        n_sentences = max(1, n_tokens // 20)
        text = filler_text(seed, n_sentences)
        while self.count(text) < n_tokens:
            n_sentences *= 2
            text = filler_text(seed, n_sentences)
        tokens = self._llm.tokenize(text.encode(), add_bos=False, special=False)[:n_tokens]
        return bytes(self._llm.detokenize(tokens)).decode("utf-8", errors="ignore")

    def close(self) -> None:
        self._llm.close()


# ----- reports ------------------------------------------------------------------------------


def report(bench: str, summary: dict[str, Any], columns: list[tuple[str, str]]) -> None:
    """Prints the JSON summary and a Markdown table (header + one row) for bench/RESULTS.md.

    `columns` are (header, cell) pairs for the benchmark's own numbers.
    """
    info = machine_info()
    command = command_line()
    full = {"benchmark": bench, "command": command, **info, **summary}
    print("\n=== JSON summary ===")
    print(json.dumps(full, indent=2, default=str))
    headers = ["date", "machine", "llama-cpp-python", "git", *(h for h, _ in columns), "command"]
    cells = [info["date"], info["machine"], info["llama_cpp_python"], info["git"],
             *(c for _, c in columns), f"`{command}`"]
    print("\n=== Markdown row for bench/RESULTS.md ===")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    print("| " + " | ".join(cells) + " |")


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{unit}"
