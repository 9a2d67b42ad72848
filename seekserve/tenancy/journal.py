"""An append-only JSONL file, fsync'd per batch, with a checkpoint: the ledger's write-ahead log.

Each process writes its own journal file and holds an exclusive `flock` on it while it lives.
A journal nobody holds a lock on belongs to a process that died: another process adopts it,
replays what follows its checkpoint and deletes it. Blocking file calls; the ledger runs them in
a thread.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from pathlib import Path

SUFFIX = ".jsonl"
_PATTERN = "journal-*" + SUFFIX


class Journal:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._checkpoint_path = path.with_suffix(".checkpoint")

    @classmethod
    def create(cls, directory: Path) -> Journal:
        """A new journal, locked before it gets the name other processes look for."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"journal-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}"
        path = directory / (name + SUFFIX)
        staging = path.with_name(path.name + ".new")
        fd = os.open(staging, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staging, path)
        _fsync_dir(directory)
        return cls(path, fd)

    @classmethod
    def adopt(cls, path: Path) -> Journal | None:
        """Take over the journal of a dead process; None while its owner is alive."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        journal = cls(path, fd)
        journal._drop_torn_tail()
        return journal

    @staticmethod
    def orphans(directory: Path, *, besides: Path) -> list[Path]:
        return sorted(p for p in directory.glob(_PATTERN) if p != besides)

    def append(self, lines: list[bytes]) -> None:
        """Write whole lines and fsync; once this returns they survive a crash."""
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read_from(self, offset: int, max_lines: int) -> tuple[list[bytes], int]:
        """Up to `max_lines` complete lines after `offset`, and the offset after them."""
        lines: list[bytes] = []
        end = offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            while len(lines) < max_lines:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                lines.append(line)
                end += len(line)
        return lines, end

    def checkpoint(self) -> int:
        try:
            return int(self._checkpoint_path.read_text() or "0")
        except FileNotFoundError:
            return 0

    def set_checkpoint(self, offset: int) -> None:
        staging = self._checkpoint_path.with_name(self._checkpoint_path.name + ".new")
        with open(staging, "w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, self._checkpoint_path)
        _fsync_dir(self.path.parent)

    def reset(self) -> None:
        """Empty a journal whose every line is in the store. The checkpoint goes back first:
        a crash in between replays lines the store already holds, which it ignores."""
        self.set_checkpoint(0)
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._checkpoint_path.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def _drop_torn_tail(self) -> None:
        """A line its writer died in the middle of was never acknowledged: cut it off."""
        size = self.size()
        if size == 0:
            return
        with open(self.path, "rb") as f:
            data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep != size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
