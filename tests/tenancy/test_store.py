"""The store: SQLite in WAL mode in the data dir, PostgreSQL by URL, Alembic migrations that
several replicas may run at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL

from seekserve.settings import Settings
from seekserve.tenancy.store import Store, default_url, store_url
from tests.tenancy.conftest import pg_url

TABLES = {"alembic_version", "api_keys", "budget_reservations", "files", "usage"}


async def _tables(store: Store) -> set[str]:
    async with store.read() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _version(store: Store) -> list[str]:
    async with store.read() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))
                     ).scalars())


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.load(None, data_dir=tmp_path)
    assert store_url(settings) == default_url(tmp_path)
    assert str(store_url(settings)) == f"sqlite+aiosqlite:///{tmp_path}/seekserve.db"
    pg = Settings.load(None, data_dir=tmp_path,
                       store={"url": "postgresql+asyncpg://u:secret@db/seek"})
    assert store_url(pg).get_backend_name() == "postgresql"
    assert "secret" not in Store(store_url(pg)).describe()


def test_store_url_comes_from_the_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEKSERVE_STORE__URL", "postgresql+asyncpg://postgres@127.0.0.1/x")
    assert Settings.load(None, data_dir=tmp_path).store.url == (
        "postgresql+asyncpg://postgres@127.0.0.1/x")


async def test_sqlite_store_is_wal_and_migrates_idempotently(tmp_path: Path) -> None:
    store = Store(default_url(tmp_path / "new" / "dir"))
    try:
        await store.migrate()
        await store.migrate()
        assert (tmp_path / "new" / "dir" / "seekserve.db").exists()
        assert await _tables(store) == TABLES
        assert await _version(store) == ["0002_files"]
        async with store.read() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            busy = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
        assert mode == "wal"
        assert busy == 10_000
    finally:
        await store.aclose()


async def _four_replicas_migrate(url: URL) -> None:
    stores = [Store(url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        assert await _tables(stores[0]) == TABLES
        assert await _version(stores[0]) == ["0002_files"]
    finally:
        for s in stores:
            await s.aclose()


async def test_replicas_migrating_one_sqlite_file_at_once(tmp_path: Path) -> None:
    await _four_replicas_migrate(default_url(tmp_path))


async def test_replicas_migrating_one_postgres_database_at_once(pg_database: str) -> None:
    await _four_replicas_migrate(pg_url(pg_database))
