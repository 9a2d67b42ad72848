"""Real stores for the tenancy tests: a SQLite file in tmp_path, a fresh PostgreSQL database."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from seekserve.tenancy.store import Store, default_url

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_MAINTENANCE_DB = "test"


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER,
                                     database=PG_MAINTENANCE_DB, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable: {exc}")


def pg_url(database: str, port: int = PG_PORT) -> URL:
    return URL.create("postgresql+asyncpg", username=PG_USER, host=PG_HOST, port=port,
                      database=database)


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A database of its own for one test, dropped after it."""
    name = "seekserve_test_" + secrets.token_hex(6)
    admin = await _pg_admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    if request.param == "sqlite":
        return default_url(tmp_path / "data")
    database: str = request.getfixturevalue("pg_database")
    return pg_url(database)


@pytest.fixture
async def store(store_url: URL) -> AsyncIterator[Store]:
    """A migrated store, on each backend in turn."""
    s = Store(store_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.aclose()


def store_settings(url: URL, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Settings overrides that put an app on `url` with its journal in tmp_path."""
    return {
        "data_dir": tmp_path / "data",
        "store": {"url": url.render_as_string(hide_password=False),
                  "journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05,
                  **overrides},
    }
