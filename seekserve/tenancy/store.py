"""The tenancy store: one SQLAlchemy async engine (SQLite in WAL mode or PostgreSQL) + migrations.

SQLite: pysqlite's own transaction handling is switched off and every transaction is opened by
us, so DDL is transactional and a write transaction starts `BEGIN IMMEDIATE` (it takes the write
lock first instead of failing to upgrade a read lock under WAL). PostgreSQL: migrations run under
a transaction-scoped advisory lock, so replicas starting together upgrade one after the other.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from seekserve.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS = "seekserve.tenancy:migrations"
# Any constant works; it only has to be the same in every replica.
_MIGRATION_LOCK_ID = 0x5EE45E4E
_SQLITE_BEGIN = "seekserve_sqlite_begin"
_SQLITE_BUSY_TIMEOUT_MS = 10_000


def default_url(data_dir: Path) -> URL:
    return URL.create("sqlite+aiosqlite", database=str(data_dir / "seekserve.db"))


def store_url(settings: Settings) -> URL:
    if settings.store.url:
        return make_url(settings.store.url)
    return default_url(settings.data_dir)


class Store:
    """The shared database; `write()` and `read()` hand out connections in a transaction."""

    def __init__(self, url: URL | str) -> None:
        self.url = make_url(url)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=True)
        if self.is_sqlite:
            _install_sqlite_transactions(self.engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        return cls(store_url(settings))

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def describe(self) -> str:
        """The URL without its password, for logs and the CLI."""
        return self.url.render_as_string(hide_password=True)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction that will write; committed on a clean exit."""
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                await conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    async def migrate(self) -> None:
        """Upgrade the schema to the newest revision (safe to run from several replicas)."""
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with self.write() as conn:
            if self.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"),
                                   {"id": _MIGRATION_LOCK_ID})
            await conn.run_sync(_upgrade_to_head)
        log.info("store %s is at the newest schema", self.describe())

    async def aclose(self) -> None:
        await self.engine.dispose()


def _upgrade_to_head(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _use_wal(cursor: Any) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself, and SQLite
    may answer "database is locked" at once, without its busy handler, while another process
    opens it (replicas starting together: a fresh-clone test run saw it under load), so a new
    file is retried for up to `_SQLITE_BUSY_TIMEOUT_MS`."""
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # connecting, once per connection of a new file


def _install_sqlite_transactions(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from opening (and committing) transactions on its own; see `_on_begin`.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_SQLITE_BEGIN) == "IMMEDIATE"
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
