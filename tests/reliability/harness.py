"""What the reliability scenarios share: their report row, a server process's resources and
engine state, the usage ledger's rows, waiting on conditions, and streamed requests."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil

from tests.e2e.conftest import REPO, Server, start_server, wait_until_up
from tests.e2e.test_remote_e2e import stop_process as stop_process
from tests.e2e.test_tenancy_e2e import PG
from tests.ports import free_port

MODEL = "deepseek-v4-pro"
# Greedy and long-winded: a stream that is still going when its client leaves.
STORY = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and "
                                     "the sea, in many chapters."}]


@dataclass
class Row:
    """One scenario's line in bench/RELIABILITY.md."""

    scenario: str
    command: str
    held: str = ""  # the load held
    faults: str = ""  # faults survived
    inputs: str = ""  # bad inputs tried
    lost: str = ""  # what was lost (the ledger against the clients' view)
    measured: str = ""  # the numbers behind the verdict
    result: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @staticmethod
    def table(rows: list[Row]) -> list[str]:
        columns = ["scenario", "held", "faults", "inputs", "lost", "measured", "result",
                   "command"]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = [getattr(row, c).replace("|", "\\|") or "-" for c in columns]
            cells[-1] = f"`{row.command}`"
            lines.append("| " + " | ".join(cells) + " |")
        return lines


# ----- a server process -----


@dataclass
class Resources:
    rss: int
    fds: int


def resources(pid: int) -> Resources:
    process = psutil.Process(pid)
    return Resources(rss=process.memory_info().rss, fds=process.num_fds())


def open_fds(pid: int) -> list[str]:
    """What a process's file descriptors point at (files, sockets with their peers)."""
    process = psutil.Process(pid)
    described = [f"file {f.path}" for f in process.open_files()]
    described += [f"socket {c.laddr} -> {c.raddr} {c.status}"
                  for c in process.net_connections(kind="all")]
    return described


def decode_steps(server: Server) -> tuple[float, float]:
    """(seconds, count) of every gap between two tokens of a stream so far, from /metrics:
    their mean is the time of one engine step."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in total:
            if line.startswith(f"seekserve_inter_token_latency_seconds_{part}"):
                total[part] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def engine_state(base_url: str, engine: str = "embedded") -> dict[str, Any]:
    response = httpx.get(f"{base_url}/ready", timeout=30)
    state: dict[str, Any] = response.json()["engines"][engine]
    return state


def cells_in_use(state: dict[str, Any]) -> int:
    """KV cells held by running sequences (the prefix cache's own cells are not)."""
    return int(state["kv_cells_used"]) - int(state["cache_cells"])


def is_idle(state: dict[str, Any]) -> bool:
    return state["running"] == 0 and state["queued"] == 0 and cells_in_use(state) == 0


def idle_state(base_url: str) -> dict[str, Any] | None:
    """The engine's state if nothing runs, waits or holds cells; else None."""
    state = engine_state(base_url)
    return state if is_idle(state) else None


def eventually(check: Callable[[], Any], within: float, every: float = 0.1) -> tuple[Any, float]:
    """`check()`'s first truthy value (or its last value after `within` s), and when it came."""
    started = time.monotonic()
    while True:
        value = check()
        elapsed = time.monotonic() - started
        if value or elapsed > within:
            return value, elapsed
        time.sleep(every)


# ----- the usage ledger -----


def sqlite_usage(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "seekserve.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM usage")]


def pg_query(database: str, query: str, *args: Any, port: int = 5432) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database=database, timeout=5, **{**PG, "port": port})
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def by_user(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return grouped(rows, "user_id")


def by_request(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return grouped(rows, "request_id")


def grouped(rows: list[dict[str, Any]], column: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault(row[column], []).append(row)
    return found


# ----- requests -----


@dataclass
class Outcome:
    """What one client saw of one request."""

    kind: str
    user_id: str
    status: int = 0
    request_id: str | None = None  # the completion id, from the body or the first chunk
    finish: str | None = None  # the finish_reason it saw, if it saw the end
    error: str | None = None  # an error code, in the body or in-band
    left: bool = False  # the client went away before the end
    started: float = 0.0
    ended: float = 0.0
    cached_tokens: int = 0
    chunks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def sse_payloads(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines
            if line.startswith("data: ") and line != "data: [DONE]"]


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code") or body["error"].get("type"))
    return None


async def chat(client: httpx.AsyncClient, outcome: Outcome, body: dict[str, Any], *,
               leave_after: int | None = None) -> Outcome:
    """Send `body` (streamed when it says so); with `leave_after`, a streamed request's client
    goes away after that many content chunks (its first chunk, with the id, always read)."""
    outcome.started = time.monotonic()
    try:
        if not body.get("stream"):
            response = await client.post("/v1/chat/completions", json=body)
            outcome.status = response.status_code
            answer = response.json()
            outcome.error = error_code(answer)
            if response.status_code == 200 and outcome.error is None:
                outcome.request_id = answer["id"]
                outcome.finish = answer["choices"][0]["finish_reason"]
                details = answer["usage"].get("prompt_tokens_details") or {}
                outcome.cached_tokens = details.get("cached_tokens") or 0
            return outcome
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                outcome.error = error_code(json.loads(await response.aread()))
                return outcome
            async for event in sse_events(response):
                if "error" in event:
                    outcome.error = error_code(event)
                    break
                outcome.request_id = outcome.request_id or event.get("id")
                if event.get("usage"):
                    details = event["usage"].get("prompt_tokens_details") or {}
                    outcome.cached_tokens = details.get("cached_tokens") or 0
                for choice in event.get("choices") or []:
                    if choice.get("finish_reason"):
                        outcome.finish = choice["finish_reason"]
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content") \
                            or delta.get("tool_calls"):
                        outcome.chunks += 1
                if leave_after is not None and outcome.chunks >= leave_after \
                        and outcome.finish is None:
                    outcome.left = True
                    break
            return outcome
    finally:
        outcome.ended = time.monotonic()


STATUS_OF_FINISH = {"stop": "completed", "length": "length", "tool_calls": "completed",
                    "content_filter": "filtered",
                    "insufficient_system_resource": "insufficient_resource"}


def expected_status(outcome: Outcome) -> str:
    """The ledger status this client's view of its request implies."""
    if outcome.finish is not None:
        return STATUS_OF_FINISH[outcome.finish]
    if outcome.left:
        return "cancelled"
    return "failed"


# ----- fake upstreams and gateways in front of them -----


@dataclass
class Upstream:
    url: str
    process: subprocess.Popen[bytes]


def start_paced_upstream(workdir: Path, *, pieces: int = 10, interval: float = 0.05,
                         hold: bool = False, port: int | None = None) -> Upstream:
    """tests/reliability/paced_upstream.py as a process of its own, once it answers."""
    port = port or free_port()
    log_path = workdir / f"upstream-{port}.log"
    args = [sys.executable, "-m", "tests.reliability.paced_upstream", "--port", str(port),
            "--pieces", str(pieces), "--interval", str(interval), *(["--hold"] if hold else [])]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    upstream = Upstream(f"http://127.0.0.1:{port}", process)
    wait_until_up(process, f"{upstream.url}/health", log_path, timeout=60)
    return upstream


def remote_engine(urls: list[str], **settings: Any) -> dict[str, Any]:
    """A remote engine of protocol `chat` over the paced upstreams at `urls`."""
    return {"kind": "remote", "upstream": "openai", "health_interval_s": 1,
            "replicas": [{"base_url": u, "model": "paced"} for u in urls], **settings}


def start_in(workdir: Path, config: dict[str, Any]) -> Server:
    """A `seekserve serve` process on `config` (keys required: the static test key), with its
    data directory (store, journals) in `workdir`/data."""
    return start_server(config, workdir, env={"SEEKSERVE_DATA_DIR": str(workdir / "data")})


def embedded_config(model_path: Path, **engine: Any) -> dict[str, Any]:
    """The default model on the embedded engine, `engine` settings added."""
    return {"server": {"host": "127.0.0.1"},
            "engines": {"embedded": {"model_path": str(model_path), **engine}},
            "models": [{"id": MODEL, "engine": "embedded"}],
            "store": {"flush_interval_s": 0.2}}
