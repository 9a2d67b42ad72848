"""The usage ledger: one row per admitted request, acknowledged once it is in the local journal.

`Ledger.record` appends the row to this process's journal (group commit: the rows that arrive
while one fsync runs share the next) and returns once it is on disk. A background task copies
journaled rows into the store in batches, idempotently (the request id is unique), and advances
the journal's checkpoint. A database outage only leaves rows in the journal until the database
is back; journals of processes that died are replayed at the next start (and by any live
replica sharing the directory); a graceful stop drains everything it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from seekserve.tenancy.journal import Journal
from seekserve.tenancy.schema import usage
from seekserve.tenancy.store import Store

log = logging.getLogger(__name__)

UsageStatus = Literal[
    "completed", "length", "cancelled", "failed", "filtered", "insufficient_resource"]


class UsageRecord(BaseModel):
    """What one admitted request used, and how it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(..., min_length=1, max_length=64, description="Unique per request.")
    key_id: str | None = Field(None, description="The managed key; None for a static key.")
    user_id: str | None = Field(None, description="The request's user_id.")
    model: str = Field(..., description="Canonical model id.")
    deployment: str = Field(..., description="Deployment name.")
    route: str = Field(..., description="The HTTP path that was called.")
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    reasoning_tokens: int = Field(0, ge=0)
    cached_tokens: int = Field(0, ge=0)
    cache_hit_tokens: int = Field(0, ge=0)
    cache_miss_tokens: int = Field(0, ge=0)
    status: UsageStatus
    queue_s: float | None = Field(None, ge=0, description="Admission to first scheduling.")
    ttft_s: float | None = Field(None, ge=0, description="Arrival to first token.")
    total_s: float | None = Field(None, ge=0, description="Arrival to the end.")
    cost_nanos: int = Field(0, ge=0, description="Cost in nano-units of `currency`.")
    currency: str = "USD"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def row(self) -> dict[str, Any]:
        created = self.created_at.astimezone(UTC)
        return {**self.model_dump(), "created_at": created, "day": created.date()}


class LedgerClosedError(RuntimeError):
    """`record` was called before `start` or after `stop`."""


_Pending = tuple[bytes, "asyncio.Future[None]"]
_ORPHAN_SCAN_S = 30.0


class Ledger:
    def __init__(self, store: Store, directory: Path, *, flush_interval_s: float = 0.5,
                 batch_size: int = 500, max_retry_s: float = 10.0) -> None:
        self._store = store
        self.directory = directory
        self._flush_interval = flush_interval_s
        self._dirty = False  # rows were journaled since the last copy into the store
        self._batch_size = batch_size
        self._max_retry = max_retry_s
        self._journal: Journal | None = None
        self._orphans: dict[Path, Journal] = {}
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._journal_lock = asyncio.Lock()  # appends vs. emptying a fully copied journal
        self._flush_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._accepting = False

    async def start(self) -> None:
        """Open this process's journal and start copying (old journals first)."""
        self._journal = await asyncio.to_thread(Journal.create, self.directory)
        self._accepting = True
        self._writer = asyncio.create_task(self._write_loop(), name="ledger-journal")
        self._flusher = asyncio.create_task(self._flush_loop(), name="ledger-flush")

    async def record(self, rec: UsageRecord) -> None:
        """Returns once the row is durable in the journal (it reaches the store later)."""
        if not self._accepting:
            raise LedgerClosedError("the usage ledger is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((rec.model_dump_json().encode(), done))
        await done

    async def flush(self, *, adopt_orphans: bool = True) -> int:
        """Copy every journaled row into the store now; returns the rows read from journals.

        Raises the store's error if it cannot be reached (the rows stay journaled)."""
        async with self._flush_lock:
            copied = 0
            assert self._journal is not None
            orphans = (Journal.orphans(self.directory, besides=self._journal.path)
                       if adopt_orphans else [])
            for path in orphans:
                if path not in self._orphans:
                    adopted = await asyncio.to_thread(Journal.adopt, path)
                    if adopted is not None:
                        log.info("replaying usage journal %s left by a stopped process", path)
                        self._orphans[path] = adopted
            for path, orphan in list(self._orphans.items()):
                copied += await self._copy(orphan)
                await asyncio.to_thread(orphan.remove)
                del self._orphans[path]
            copied += await self._copy(self._journal)
            journal = self._journal
            async with self._journal_lock:
                size = await asyncio.to_thread(journal.size)
                if size and size == await asyncio.to_thread(journal.checkpoint):
                    await asyncio.to_thread(journal.reset)
            return copied

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking rows, write out the journal, drain it into the store (for `timeout_s`)."""
        if self._journal is None:
            return
        self._accepting = False
        self._queue.put_nowait(None)
        if self._writer is not None:
            await self._writer
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        drained = False
        while not drained:
            try:
                await self.flush()
                drained = True
            except Exception as exc:  # any store failure: the rows stay journaled
                if loop.time() >= deadline:
                    log.warning("usage rows stay in %s until the next start: %s",
                                self.directory, exc)
                    break
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
        for orphan in self._orphans.values():
            orphan.close()
        self._orphans.clear()
        if drained:
            await asyncio.to_thread(self._journal.remove)
        else:
            self._journal.close()
        self._journal = None

    async def _write_loop(self) -> None:
        assert self._journal is not None
        journal = self._journal
        stopping = False
        while not stopping:
            item = await self._queue.get()
            batch: list[_Pending] = []
            while item is not None:
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            stopping = item is None
            if not batch:
                continue
            try:
                async with self._journal_lock:
                    await asyncio.to_thread(journal.append, [line for line, _ in batch])
            except OSError as exc:
                log.error("cannot write the usage journal %s: %s", journal.path, exc)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            self._dirty = True
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _flush_loop(self) -> None:
        # Idle servers do no work here: the journal is copied only when rows were written, and
        # journals of stopped processes are looked for every _ORPHAN_SCAN_S.
        delay = self._flush_interval
        since_scan = _ORPHAN_SCAN_S  # the first pass replays what stopped processes left
        while True:
            await asyncio.sleep(delay)
            since_scan += delay
            scan = since_scan >= _ORPHAN_SCAN_S
            if not (self._dirty or self._orphans or scan):
                continue
            try:
                self._dirty = False
                await self.flush(adopt_orphans=scan)
                if scan:
                    since_scan = 0.0
                delay = self._flush_interval
            except Exception as exc:  # any store failure: the rows stay journaled
                self._dirty = True
                delay = min(self._max_retry, delay * 2)
                log.warning("usage rows stay journaled, the store cannot be written (retry in "
                            "%.1fs): %s", delay, exc)

    async def _copy(self, journal: Journal) -> int:
        copied = 0
        while True:
            offset = await asyncio.to_thread(journal.checkpoint)
            lines, end = await asyncio.to_thread(journal.read_from, offset, self._batch_size)
            if not lines:
                return copied
            rows = []
            for line in lines:
                try:
                    rows.append(UsageRecord.model_validate_json(line).row())
                except ValidationError:
                    log.error("skipping a malformed line of %s: %r", journal.path, line[:200])
            if rows:
                await self._insert(rows)
            await asyncio.to_thread(journal.set_checkpoint, end)
            copied += len(lines)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        dialect_insert = postgresql.insert if self._store.dialect == "postgresql" else sqlite.insert
        statement = dialect_insert(usage).on_conflict_do_nothing(index_elements=["request_id"])
        async with self._store.write() as conn:
            await conn.execute(statement, rows)
