"""The usage ledger loses nothing: rows are acknowledged once journaled, copied exactly once,
kept through a database outage, replayed after a SIGKILL, drained on shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL

from seekserve.tenancy.journal import Journal
from seekserve.tenancy.ledger import Ledger, UsageRecord
from seekserve.tenancy.schema import usage
from seekserve.tenancy.store import Store, default_url
from tests.api.conftest import asgi_client, build_app
from tests.fakes import FakeEngine
from tests.ports import free_port
from tests.tcp_proxy import TcpProxy
from tests.tenancy.conftest import PG_HOST, PG_PORT, pg_url, store_settings
from tests.tenancy.test_auth import ADMIN, bearer

REPO = Path(__file__).resolve().parents[2]


def record(request_id: str, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": request_id, "key_id": "key_test", "user_id": "u1",
        "model": "deepseek-v4-pro", "deployment": "default", "route": "/v1/chat/completions",
        "prompt_tokens": 11, "completion_tokens": 7, "reasoning_tokens": 2, "cached_tokens": 5,
        "cache_hit_tokens": 5, "cache_miss_tokens": 6, "status": "completed", "queue_s": 0.01,
        "ttft_s": 0.2, "total_s": 1.5, "cost_nanos": 1234, **fields}
    return UsageRecord.model_validate(values)


async def request_ids(store: Store) -> list[str]:
    async with store.read() as conn:
        return list((await conn.execute(select(usage.c.request_id))).scalars())


def journals(directory: Path) -> list[Path]:
    return sorted(directory.glob("journal-*.jsonl"))


async def test_rows_reach_the_store_exactly_once(store: Store, tmp_path: Path) -> None:
    ledger = Ledger(store, tmp_path / "journal", flush_interval_s=3600)
    await ledger.start()
    await asyncio.gather(*(ledger.record(record(f"req-{i}")) for i in range(50)))
    assert await ledger.flush() == 50
    assert await ledger.flush() == 0
    ids = await request_ids(store)
    assert sorted(ids) == sorted(f"req-{i}" for i in range(50))
    async with store.read() as conn:
        row = (await conn.execute(select(usage).where(usage.c.request_id == "req-7"))
               ).mappings().one()
    assert (row["key_id"], row["user_id"], row["prompt_tokens"], row["completion_tokens"],
            row["reasoning_tokens"], row["cached_tokens"], row["cache_hit_tokens"],
            row["cache_miss_tokens"], row["status"], row["ttft_s"], row["cost_nanos"]) == (
        "key_test", "u1", 11, 7, 2, 5, 5, 6, "completed", 0.2, 1234)
    assert row["day"] == datetime.now(UTC).date()
    # The same rows journaled again (a replay after a crash) do not duplicate.
    await asyncio.gather(*(ledger.record(record(f"req-{i}")) for i in range(10)))
    await ledger.stop()
    assert len(await request_ids(store)) == 50
    assert journals(tmp_path / "journal") == []


@pytest.fixture
async def proxied_store(pg_database: str) -> AsyncIterator[tuple[Store, TcpProxy, Store]]:
    """A store reached through a proxy that the test can cut, and a direct one to check."""
    proxy = TcpProxy(free_port(), (PG_HOST, PG_PORT))
    await proxy.start()
    through = Store(pg_url(pg_database, port=proxy.port))
    direct = Store(pg_url(pg_database))
    await direct.migrate()
    try:
        yield through, proxy, direct
    finally:
        await through.aclose()
        await direct.aclose()
        if proxy.serving:
            await proxy.stop()


async def test_a_database_outage_keeps_rows_in_the_journal_until_it_is_back(
        proxied_store: tuple[Store, TcpProxy, Store], tmp_path: Path) -> None:
    through, proxy, direct = proxied_store
    ledger = Ledger(through, tmp_path / "journal", flush_interval_s=0.05, max_retry_s=0.2)
    await ledger.start()
    try:
        await asyncio.gather(*(ledger.record(record(f"before-{i}")) for i in range(10)))
        await ledger.flush()
        await proxy.stop()  # the database goes away
        await asyncio.wait_for(asyncio.gather(
            *(ledger.record(record(f"during-{i}")) for i in range(40))), timeout=5)
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
            await ledger.flush()
        assert len(await request_ids(direct)) == 10
        [journal] = journals(tmp_path / "journal")
        assert journal.read_bytes().count(b"\n") >= 40  # acknowledged = on disk
        await asyncio.sleep(0.5)  # the flusher retries meanwhile, and fails
        await proxy.start()  # the database is back
        for _ in range(200):
            if len(await request_ids(direct)) == 50:
                break
            await asyncio.sleep(0.05)
    finally:
        await ledger.stop()
    ids = await request_ids(direct)
    assert sorted(ids) == sorted([f"before-{i}" for i in range(10)]
                                 + [f"during-{i}" for i in range(40)])


CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from seekserve.tenancy.ledger import Ledger, UsageRecord
    from seekserve.tenancy.store import Store

    async def main() -> None:
        # The store is down for this process: rows only reach the journal.
        store = Store("postgresql+asyncpg://postgres@127.0.0.1:1/none")
        ledger = Ledger(store, Path(sys.argv[1]), flush_interval_s=0.05, max_retry_s=0.1)
        await ledger.start()
        i = 0
        while True:
            batch = [f"child-{i + k}" for k in range(5)]
            await asyncio.gather(*(ledger.record(UsageRecord(
                request_id=r, model="m", deployment="d", route="/r", status="completed",
                prompt_tokens=3)) for r in batch))
            for r in batch:
                print(r, flush=True)
            i += 5

    asyncio.run(main())
""")


async def test_rows_acknowledged_before_a_sigkill_are_replayed(store: Store, tmp_path: Path
                                                               ) -> None:
    directory = tmp_path / "journal"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(directory), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        while len(acknowledged) < 100:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
            assert line, "the child process ended early"
            acknowledged.append(line.decode().strip())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()
    assert len(journals(directory)) == 1

    ledger = Ledger(store, directory, flush_interval_s=3600)
    await ledger.start()  # a restart: the dead process's journal is adopted and replayed
    await ledger.flush()
    await ledger.stop()
    ids = await request_ids(store)
    assert set(acknowledged) <= set(ids)
    assert len(ids) == len(set(ids))
    assert journals(directory) == []


def append_torn_line(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


async def test_a_torn_last_line_is_dropped_and_the_rest_replayed(store: Store, tmp_path: Path
                                                                 ) -> None:
    directory = tmp_path / "journal"
    dead = Journal.create(directory)
    dead.append([record("whole-1").model_dump_json().encode(),
                 record("whole-2").model_dump_json().encode()])
    append_torn_line(dead.path, record("torn").model_dump_json().encode()[:40])
    dead.close()  # its process "died" mid-write
    ledger = Ledger(store, directory, flush_interval_s=3600)
    await ledger.start()
    assert await ledger.flush() == 2
    await ledger.stop()
    assert sorted(await request_ids(store)) == ["whole-1", "whole-2"]


async def test_a_live_process_journal_is_left_alone(store: Store, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    a = Ledger(store, directory, flush_interval_s=3600)
    b = Ledger(store, directory, flush_interval_s=3600)
    await a.start()
    await b.start()
    await a.record(record("from-a"))
    assert await b.flush() == 0  # a's journal is locked: a is alive
    assert await a.flush() == 1
    await a.stop()
    await b.stop()
    assert await request_ids(store) == ["from-a"]


async def test_shutdown_drains_the_journal_and_usage_is_reported(tmp_path: Path,
                                                                  store_url: URL) -> None:
    settings = store_settings(store_url, tmp_path, flush_interval_s=60)
    app = build_app(FakeEngine(), admin_key=ADMIN, **settings)
    async with asgi_client(app) as client:
        key = (await client.post("/admin/keys", headers=bearer(ADMIN),
                                 json={"name": "u"})).json()
        ledger: Ledger = app.state.services.tenancy.ledger
        day1 = datetime(2030, 3, 1, 23, 59, tzinfo=UTC)
        day2 = datetime(2030, 3, 2, 0, 1, tzinfo=UTC)
        rows = [record(f"a{i}", key_id=key["id"], created_at=day1) for i in range(3)]
        rows += [record("b0", key_id=key["id"], model="other", created_at=day1,
                        cost_nanos=5_000_000)]
        rows += [record("c0", key_id=key["id"], created_at=day2, status="cancelled")]
        rows += [record("z0", key_id="key_someone_else", created_at=day1)]
        for r in rows:
            await ledger.record(r)
    # The lifespan is over: everything journaled was drained into the store.
    store = Store(store_url)
    try:
        assert len(await request_ids(store)) == 6
    finally:
        await store.aclose()
    assert journals(tmp_path / "journal") == []

    app = build_app(FakeEngine(), admin_key=ADMIN, **settings)
    async with asgi_client(app) as client:
        response = await client.get("/v1/usage", headers=bearer(key["key"]))
        assert response.status_code == 200, response.text
        per = {(d["day"], d["model"]): d for d in response.json()["data"]}
        assert set(per) == {("2030-03-01", "deepseek-v4-pro"), ("2030-03-01", "other"),
                            ("2030-03-02", "deepseek-v4-pro")}
        first = per[("2030-03-01", "deepseek-v4-pro")]
        assert (first["requests"], first["prompt_tokens"], first["completion_tokens"],
                first["cached_tokens"], first["total_tokens"], first["cost"]) == (
            3, 33, 21, 15, 54, "0.000003702")
        assert per[("2030-03-01", "other")]["cost"] == "0.005"
        only_day2 = await client.get("/v1/usage", params={"start": "2030-03-02"},
                                     headers=bearer(key["key"]))
        assert [(d["day"], d["requests"]) for d in only_day2.json()["data"]] == [
            ("2030-03-02", 1)]
        bad = await client.get("/v1/usage", params={"start": "2030-03-02", "end": "2030-03-01"},
                               headers=bearer(key["key"]))
        assert bad.status_code == 400
        assert (await client.get("/v1/usage", params={"start": "March"},
                                 headers=bearer(key["key"]))).status_code == 400


async def test_the_cli_reports_usage_and_manages_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from seekserve.cli import main

    monkeypatch.setenv("SEEKSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SEEKSERVE_STORE__URL", raising=False)
    assert await asyncio.to_thread(main, ["keys", "create", "--name", "cli", "--rpm", "5",
                                          "--budget-usd", "1.5", "--expires", "30d",
                                          "--models", "deepseek-v4-pro"]) == 0
    out = capsys.readouterr().out
    plaintext = out.splitlines()[1]
    assert plaintext.startswith("sk-") and len(plaintext) == 46
    assert await asyncio.to_thread(main, ["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert plaintext[:10] + "…" in listed and plaintext not in listed
    assert "active  cli  rpm=5 budget_usd=1.5 models=deepseek-v4-pro" in listed

    store = Store(default_url(tmp_path / "data"))  # the same store the CLI found
    ledger = Ledger(store, tmp_path / "journal", flush_interval_s=3600)
    await ledger.start()
    for i in range(4):
        await ledger.record(record(f"r{i}", model="m1" if i % 2 else "m2"))
    await ledger.stop()
    await store.aclose()
    assert await asyncio.to_thread(main, ["usage", "--by", "model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "requests", "prompt_tokens", "completion_tokens",
                                "cached_tokens", "cost"]
    assert [line.split() for line in lines[1:]] == [
        ["m1", "2", "22", "14", "10", "0.000002468"], ["m2", "2", "22", "14", "10",
                                                       "0.000002468"]]
    assert await asyncio.to_thread(main, ["keys", "revoke", plaintext[:10]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["keys", "list"]) == 0
    assert "  revoked  cli" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["keys", "revoke", "' OR 1=1 --"]) == 1
    assert "no key has the id or prefix" in capsys.readouterr().err


async def test_the_cli_budget_short_form_takes_tokens_or_dollars(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from seekserve.cli import main

    monkeypatch.setenv("SEEKSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SEEKSERVE_STORE__URL", raising=False)
    for name, budget in (("tok", "100000"), ("usd", "$2.5"), ("usd2", "3 USD")):
        assert await asyncio.to_thread(
            main, ["keys", "create", "--name", name, "--budget", budget]) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "tok  budget_tokens=100000" in listed
    assert "usd  budget_usd=2.5" in listed
    assert "usd2  budget_usd=3" in listed
    with pytest.raises(SystemExit):
        main(["keys", "create", "--name", "bad", "--budget", "five dollars"])
