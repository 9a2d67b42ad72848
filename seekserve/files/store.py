"""Rows of the `files` table; every query is scoped to one owner, so no key sees another's."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from seekserve.files.schema import files
from seekserve.protocol.errors import InvalidRequestError, ServiceUnavailableError
from seekserve.tenancy.keys import utc
from seekserve.tenancy.store import Store

log = logging.getLogger(__name__)

Order = Literal["asc", "desc"]
# The first half of a two-int advisory lock (a space apart from the migrations' one-int lock).
_UPLOAD_LOCK_SPACE = 0x5EE4F11E
_METADATA = (files.c.id, files.c.owner, files.c.filename, files.c.purpose, files.c.bytes,
             files.c.created_at, files.c.kind, files.c.content_type)


@dataclass(frozen=True)
class StoredFile:
    """A file's metadata (its bytes and text are read only where they are needed)."""

    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: datetime
    kind: str
    content_type: str

    def wire(self) -> dict[str, Any]:
        """The OpenAI file object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": int(self.created_at.timestamp()), "filename": self.filename,
                "purpose": self.purpose, "status": "processed"}

    @classmethod
    def of(cls, row: Any) -> StoredFile:
        return cls(id=row.id, owner=row.owner, filename=row.filename, purpose=row.purpose,
                   bytes=row.bytes, created_at=utc(row.created_at), kind=row.kind,
                   content_type=row.content_type)


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileStore:
    """Adds, finds, lists and deletes one owner's files in the tenancy store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, *, owner: str, filename: str, purpose: str, kind: str,
                  content_type: str, data: bytes, extracted: str,
                  max_files: int | None = None) -> StoredFile:
        stored = StoredFile(id=new_file_id(), owner=owner, filename=filename, purpose=purpose,
                            bytes=len(data), created_at=datetime.now(UTC), kind=kind,
                            content_type=content_type)
        async with self._write() as conn:
            if max_files is not None:
                await self._lock_owner(conn, owner)
                count = (await conn.execute(
                    select(func.count()).select_from(files).where(files.c.owner == owner)
                )).scalar_one()
                if count >= max_files:
                    raise InvalidRequestError(
                        f"This API key already keeps {count} files; files.max_files_per_owner "
                        f"allows {max_files}. Delete some first.", param="file",
                        code="too_many_files")
            await conn.execute(files.insert().values(
                id=stored.id, owner=owner, filename=filename, purpose=purpose,
                bytes=stored.bytes, created_at=stored.created_at, kind=kind,
                content_type=content_type, data=data, text=extracted))
        return stored

    async def get(self, owner: str, file_id: str) -> StoredFile | None:
        async with self._read() as conn:
            row = (await conn.execute(select(*_METADATA).where(
                files.c.id == file_id, files.c.owner == owner))).first()
        return StoredFile.of(row) if row is not None else None

    async def content(self, owner: str, file_id: str) -> tuple[StoredFile, bytes] | None:
        async with self._read() as conn:
            row = (await conn.execute(select(*_METADATA, files.c.data).where(
                files.c.id == file_id, files.c.owner == owner))).first()
        return (StoredFile.of(row), bytes(row.data)) if row is not None else None

    async def texts(self, owner: str, file_ids: Sequence[str]
                    ) -> dict[str, tuple[StoredFile, str]]:
        """The extracted text of those of `file_ids` that exist and belong to `owner`."""
        async with self._read() as conn:
            rows = (await conn.execute(select(*_METADATA, files.c.text).where(
                files.c.id.in_(sorted(set(file_ids))), files.c.owner == owner))).all()
        return {row.id: (StoredFile.of(row), row.text) for row in rows}

    async def page(self, owner: str, *, purpose: str | None = None, limit: int = 10_000,
                   order: Order = "desc", after: str | None = None
                   ) -> tuple[list[StoredFile], bool]:
        """One page, newest first by default; `after` is the last id of the previous page.
        Returns the page and whether more follow."""
        query = select(*_METADATA).where(files.c.owner == owner)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        async with self._read() as conn:
            if after is not None:
                cursor = (await conn.execute(select(files.c.created_at).where(
                    files.c.id == after, files.c.owner == owner))).scalar_one_or_none()
                if cursor is None:
                    raise InvalidRequestError(f"No such file: {after!r}.", param="after",
                                              code="file_not_found")
                # (created_at, id) orders rows uniquely, so a page boundary never skips one.
                if order == "desc":
                    query = query.where(or_(files.c.created_at < cursor, and_(
                        files.c.created_at == cursor, files.c.id < after)))
                else:
                    query = query.where(or_(files.c.created_at > cursor, and_(
                        files.c.created_at == cursor, files.c.id > after)))
            if order == "desc":
                query = query.order_by(files.c.created_at.desc(), files.c.id.desc())
            else:
                query = query.order_by(files.c.created_at.asc(), files.c.id.asc())
            rows = (await conn.execute(query.limit(limit + 1))).all()
        return [StoredFile.of(r) for r in rows[:limit]], len(rows) > limit

    async def delete(self, owner: str, file_id: str) -> bool:
        async with self._write() as conn:
            result = await conn.execute(delete(files).where(
                files.c.id == file_id, files.c.owner == owner))
        return bool(result.rowcount)

    async def _lock_owner(self, conn: AsyncConnection, owner: str) -> None:
        """Serialise one owner's uploads so a file count cannot be raced past its limit.
        SQLite needs nothing: a write transaction there already holds the database lock."""
        if self._store.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)
            await conn.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"),
                               {"space": _UPLOAD_LOCK_SPACE, "key": key})

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._store.write() as conn:
                yield conn
        except (OSError, SQLAlchemyError) as exc:
            raise _unavailable(exc) from None

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._store.read() as conn:
                yield conn
        except (OSError, SQLAlchemyError) as exc:
            raise _unavailable(exc) from None


def _unavailable(exc: BaseException) -> ServiceUnavailableError:
    log.warning("the file store is unreachable: %s", exc)
    return ServiceUnavailableError("The file store is unreachable; please retry.",
                                   code="file_store_unavailable", headers={"Retry-After": "5"})
