"""Apps with the Files API on the scripted engine, over SQLite or a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from seekserve.tenancy.store import default_url
from tests.api.conftest import asgi_client, build_app
from tests.fakes import FakeEngine
from tests.tenancy.conftest import pg_database as pg_database
from tests.tenancy.conftest import pg_url

KEY_A = "sk-files-test-key-a"
KEY_B = "sk-files-test-key-b"
ADMIN = "sk-files-test-admin"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> URL:
    if request.param == "sqlite":
        return default_url(tmp_path / "data")
    database: str = request.getfixturevalue("pg_database")
    return pg_url(database)


def files_app(engine: FakeEngine, tmp_path: Path, url: URL | None = None,
              **overrides: Any) -> FastAPI:
    """Two static keys and an admin key; the store on `url` (default SQLite in tmp_path)."""
    store: dict[str, Any] = {"journal_dir": str(tmp_path / "journal")}
    if url is not None:
        store["url"] = url.render_as_string(hide_password=False)
    overrides.setdefault("api_keys", [KEY_A, KEY_B])
    overrides.setdefault("admin_key", ADMIN)
    return build_app(engine, data_dir=tmp_path / "data", store=store, **overrides)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine("The code word is in the file.")


@pytest.fixture
def app(engine: FakeEngine, tmp_path: Path, store_url: URL) -> FastAPI:
    return files_app(engine, tmp_path, store_url)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app on each store backend in turn; requests carry key A unless told otherwise."""
    async with asgi_client(app, headers=bearer(KEY_A)) as c:
        yield c


@pytest.fixture
def sqlite_app(engine: FakeEngine, tmp_path: Path) -> FastAPI:
    """The app on SQLite only, for checks that do not depend on the store."""
    return files_app(engine, tmp_path)


@pytest.fixture
async def sqlite_client(sqlite_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(sqlite_app, headers=bearer(KEY_A)) as c:
        yield c
