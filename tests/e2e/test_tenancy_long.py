"""Tenancy under load and failure, on the real model in real server processes: a budget at
its edge under 20 concurrent requests; a usage ledger that keeps exactly the acknowledged rows
through client disconnects and a SIGKILL of the server; and through a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e import test_tenancy_e2e as tenancy
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_tenancy_e2e import (
    MODEL,
    PG,
    QUESTION,
    create_key,
    eventually,
    sqlite_rows,
    tenancy_config,
)
from tests.ports import free_port
from tests.tcp_proxy import ThreadedTcpProxy

pytestmark = pytest.mark.model

# The module-scoped fixtures of the tenancy e2e tests (instantiated again for this module): the
# default model, a fresh PostgreSQL database, a Redis key prefix, two replicas sharing them.
model_path = tenancy.model_path
pg_database = tenancy.pg_database
redis_prefix = tenancy.redis_prefix
replicas = tenancy.replicas

# Greedy and long-winded: a stream that is still going when the client (or the server) goes away.
STORY = [{"role": "user", "content": "Write a very long story about a lighthouse keeper and "
                                     "the sea, in many chapters."}]
STATUS_OF_FINISH = {"length": "length", "stop": "completed"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(messages: list[dict[str, str]] = QUESTION, *, max_tokens: int,
              stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream}


def complete(http: httpx.Client, max_tokens: int = 4) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=chat_body(max_tokens=max_tokens))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def sse_chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line.removeprefix("data: "))


def read_some(response: httpx.Response, contents: int) -> tuple[str, Iterator[dict[str, Any]]]:
    """Read a stream until `contents` chunks of text arrived: its request id, and the rest."""
    assert response.status_code == 200, response.read()
    chunks = sse_chunks(response)
    first = next(chunks)
    for _ in range(contents):
        choice = next(chunks)["choices"][0]
        assert choice["delta"].get("content") and choice["finish_reason"] is None, choice
    request_id: str = first["id"]
    assert request_id.startswith("chatcmpl-")
    return request_id, chunks


def journaled(directory: Path) -> set[str]:
    """The request ids in the usage journals under `directory` (complete lines only)."""
    ids = set()
    for path in directory.glob("journal-*.jsonl"):
        for line in path.read_bytes().split(b"\n")[:-1]:
            ids.add(json.loads(line)["request_id"])
    return ids


def pg_fetch(database: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database=database, timeout=5, **PG)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(fetch())


# ----- two replicas sharing Redis and PostgreSQL -----
# (A key's rpm offered three times over at full scale, minutes of it, is a reliability scenario:
# tests/reliability/test_rpm_at_scale.py.)

def test_a_budget_at_its_edge_admits_exactly_what_fits(replicas: list[Server],
                                                       pg_database: str) -> None:
    max_tokens = 4
    with httpx.Client(base_url=replicas[0].base_url, timeout=60,
                      headers=bearer(create_key(replicas[0])["key"])) as http:
        worst = complete(http, max_tokens)["usage"]["prompt_tokens"] + max_tokens
    fits = 5
    budget = fits * worst + worst - 1  # one token short of a sixth request's worst case
    key = create_key(replicas[0], budget_tokens=budget)
    clients = [httpx.Client(base_url=replicas[i % 2].base_url, timeout=120,
                            headers=bearer(key["key"])) for i in range(20)]
    barrier = threading.Barrier(len(clients))

    def fire(client: httpx.Client) -> httpx.Response:
        barrier.wait()
        return client.post("/v1/chat/completions", json=chat_body(max_tokens=max_tokens))

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            responses = list(pool.map(fire, clients))
    finally:
        for client in clients:
            client.close()

    answers = [r.json() for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(answers) == fits, [r.text for r in refused if r.status_code != 402]
    assert {r.status_code for r in refused} == {402}
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_balance"}
    # Every admitted request used exactly its worst case, so nothing was left for a sixth.
    used = [a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"] for a in answers]
    assert used == [worst] * fits

    def balance() -> str | None:
        response = httpx.get(f"{replicas[1].base_url}/user/balance", timeout=10,
                             headers=bearer(key["key"]))
        assert response.status_code == 200, response.text
        [tokens] = [i for i in response.json()["balance_infos"] if i["currency"] == "TOKENS"]
        left: str = tokens["total_balance"]
        return left if left == str(worst - 1) else None

    assert eventually(balance, within=5) == str(worst - 1)
    [row] = pg_fetch(pg_database, "SELECT spent_tokens, reserved_tokens FROM api_keys "
                                  "WHERE id = $1", key["id"])
    assert (row["spent_tokens"], row["reserved_tokens"]) == (fits * worst, 0)
    assert row["spent_tokens"] <= budget

    def ledger() -> list[str] | None:
        ids = [r["request_id"] for r in pg_fetch(
            pg_database, "SELECT request_id FROM usage WHERE key_id = $1", key["id"])]
        return ids if len(ids) == fits else None

    assert sorted(eventually(ledger, within=5) or []) == sorted(a["id"] for a in answers)


# ----- one server: its ledger through disconnects, a SIGKILL, a database outage -----

def test_after_a_sigkill_exactly_the_acknowledged_requests_have_rows(
        model_path: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    journal_dir = data_dir / "ledger"
    env = {"SEEKSERVE_DATA_DIR": str(data_dir)}
    # Rows go from the journal to the SQLite store only every 60 s: at the kill they are in the
    # journal alone, and the replay after the restart is what has to bring them in.
    config = tenancy_config(model_path, ratelimit={"backend": "memory"},
                            store={"flush_interval_s": 60})
    (tmp_path / "first").mkdir()
    server = start_server(config, tmp_path / "first", env=env)
    try:
        key = create_key(server)

        def client() -> httpx.Client:
            return httpx.Client(base_url=server.base_url, timeout=120,
                                headers=bearer(key["key"]))

        def one(leaves: bool) -> tuple[str, str]:
            """A request and the status its row must have."""
            with client() as http:
                if not leaves:
                    answer = complete(http)
                    return answer["id"], STATUS_OF_FINISH[answer["choices"][0]["finish_reason"]]
                with http.stream("POST", "/v1/chat/completions",
                                 json=chat_body(STORY, max_tokens=500, stream=True)) as response:
                    return read_some(response, contents=3)[0], "cancelled"

        with ThreadPoolExecutor(3) as pool:
            expected = dict(pool.map(one, [i % 2 == 1 for i in range(12)]))
        assert sorted(expected.values()) == ["cancelled"] * 6 + ["length"] * 6

        assert eventually(lambda: set(expected) <= journaled(journal_dir), within=10), \
            "rows were not journaled in 10 s"
        assert sqlite_rows(data_dir, key["id"]) == []  # the journal alone holds them
        with client() as http, http.stream(
                "POST", "/v1/chat/completions",
                json=chat_body(STORY, max_tokens=500, stream=True)) as response:
            killed, rest = read_some(response, contents=3)
            server.process.send_signal(signal.SIGKILL)
            assert server.process.wait(timeout=10) == -signal.SIGKILL
            with pytest.raises(httpx.HTTPError):  # the stream breaks off
                list(rest)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    (tmp_path / "second").mkdir()
    restarted = start_server(tenancy_config(model_path, ratelimit={"backend": "memory"},
                                            store={"flush_interval_s": 0.1}),
                             tmp_path / "second", env=env)
    try:
        def replayed() -> list[dict[str, Any]] | None:
            rows = sqlite_rows(data_dir, key["id"])
            return rows if set(expected) <= {r["request_id"] for r in rows} else None

        rows = eventually(replayed, within=10)
        assert rows, f"the journal was not replayed in 10 s:\n{restarted.log()}"
        ids = [r["request_id"] for r in rows]
        assert len(ids) == len(set(ids))
        assert set(ids) - {killed} == set(expected)
        assert {r["request_id"]: r["status"] for r in rows if r["request_id"] != killed} == \
            expected
        for row in rows:
            if row["status"] == "cancelled":
                assert 3 <= row["completion_tokens"] < 500, row
            else:
                assert row["completion_tokens"] == 4, row
        # The dead process's journal was replayed and removed; only the new one's is left.
        assert eventually(lambda: len(list(journal_dir.glob("journal-*.jsonl"))) == 1,
                          within=5), sorted(journal_dir.iterdir())
    finally:
        stop_server(restarted)


@pytest.fixture
def pg_proxy() -> Iterator[ThreadedTcpProxy]:
    """PostgreSQL through a forwarder that the test can cut."""
    proxy = ThreadedTcpProxy(free_port(), ("127.0.0.1", 5432))
    proxy.start()
    yield proxy
    proxy.stop()
    proxy.close()


def test_a_database_outage_loses_no_row_and_duplicates_none(
        model_path: Path, pg_database: str, pg_proxy: ThreadedTcpProxy, tmp_path: Path) -> None:
    proxy = pg_proxy
    journal_dir = tmp_path / "journal"
    config = tenancy_config(
        model_path, ratelimit={"backend": "memory"},
        store={"url": f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{pg_database}",
               "journal_dir": str(journal_dir), "flush_interval_s": 0.1})
    server = start_server(config, tmp_path, env={"SEEKSERVE_DATA_DIR": str(tmp_path / "data")})

    def stored(ids: list[str]) -> dict[str, list[str]]:
        rows = pg_fetch(pg_database, "SELECT request_id, status FROM usage "
                                     "WHERE request_id = ANY($1)", ids)
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["request_id"], []).append(row["status"])
        return found

    try:
        with server.http() as http:  # the static key: nothing to look up in the store
            before = [complete(http, max_tokens=2)["id"] for _ in range(2)]
            assert eventually(lambda: len(stored(before)) == 2, within=5)
            proxy.stop()
            during = [complete(http, max_tokens=2)["id"] for _ in range(6)]
        assert eventually(lambda: set(during) <= journaled(journal_dir), within=5)
        assert eventually(lambda: "usage rows stay journaled" in server.log(), within=5), \
            "the server never noticed the outage"
        assert stored(during) == {}
        proxy.start()
        everything = before + during
        assert eventually(lambda: len(stored(everything)) == len(everything), within=30), \
            f"rows missing after the database came back:\n{server.log()}"
        assert stored(everything) == {request_id: ["length"] for request_id in everything}
    finally:
        stop_server(server)
