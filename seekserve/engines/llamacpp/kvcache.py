"""KV cell bookkeeping for a unified llama.cpp cache: shared prefixes and the isolated prefix cache.

With `kv_unified`, `llama_memory_seq_cp` does not copy cells: it tags the source's cells with the
destination sequence too. Two sequences that share a prefix therefore share its cells, and a cell
is free only when no sequence holds it any more. llama.cpp does not report how many cells are in
use, so this module mirrors it: each sequence's cells are a list of runs, a run is shared by every
sequence that holds it, and a run's cells are freed when its last holder lets go.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


class CellRun:
    """Consecutive positions of cells held by the same set of sequences."""

    __slots__ = ("holders", "length")

    def __init__(self, length: int) -> None:
        self.length = length
        self.holders = 0


@dataclass(eq=False)
class CellPath:
    """The cells one llama.cpp sequence holds, in position order, and the tokens they encode."""

    runs: list[CellRun] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


class CellLedger:
    """Counts the distinct cells held by all live paths."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._paths: set[CellPath] = set()

    @property
    def free(self) -> int:
        return self.total - self.used

    def new_path(self) -> CellPath:
        path = CellPath()
        self._paths.add(path)
        return path

    def share_prefix(self, source: CellPath, n: int) -> CellPath:
        """A new path holding the first `n` cells of `source` (no new cells are used)."""
        if not 0 <= n <= len(source):
            raise ValueError(f"cannot share {n} cells of a {len(source)}-cell path")
        self._split_at(source, n)
        path = self.new_path()
        covered = 0
        for run in source.runs:
            if covered == n:
                break
            run.holders += 1
            path.runs.append(run)
            covered += run.length
        path.tokens = source.tokens[:n]
        return path

    def append(self, path: CellPath, tokens: list[int]) -> None:
        """Record that `tokens` were decoded into new cells at the end of `path`."""
        if not tokens:
            return
        last = path.runs[-1] if path.runs else None
        if last is not None and last.holders == 1:
            last.length += len(tokens)
        else:
            run = CellRun(len(tokens))
            run.holders = 1
            path.runs.append(run)
        path.tokens.extend(tokens)
        self.used += len(tokens)

    def drop(self, path: CellPath) -> int:
        """Let go of every cell of `path`; returns how many cells became free."""
        freed = 0
        for run in path.runs:
            run.holders -= 1
            if run.holders == 0:
                freed += run.length
        self.used -= freed
        path.runs.clear()
        path.tokens.clear()
        self._paths.discard(path)
        return freed

    def held_by(self, paths: list[CellPath]) -> int:
        """Distinct cells held by any of `paths`."""
        seen: dict[int, int] = {}
        for path in paths:
            for run in path.runs:
                seen[id(run)] = run.length
        return sum(seen.values())

    def exclusive_to(self, path: CellPath) -> int:
        """Cells that would be freed by dropping `path`."""
        return sum(run.length for run in path.runs if run.holders == 1)

    def _split_at(self, source: CellPath, n: int) -> None:
        """Make a run boundary at position `n` of `source`, in every path holding that run."""
        covered = 0
        for run in source.runs:
            if covered + run.length <= n:
                covered += run.length
                continue
            k = n - covered
            if k == 0:
                return
            head, tail = CellRun(k), CellRun(run.length - k)
            head.holders = tail.holders = run.holders
            for path in self._paths:
                for i, held in enumerate(path.runs):
                    if held is run:
                        path.runs[i:i + 1] = [head, tail]
                        break
            return


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)
class CacheEntry:
    """A finished sequence's cells, kept for the next request of the same isolation salt."""

    seq_id: int
    salt: bytes
    path: CellPath
    last_used: int


class PrefixCache:
    """Finished sequences kept by salt, matched by longest common prefix, evicted LRU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: dict[int, CacheEntry] = {}
        self._clock = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[CacheEntry]:
        return list(self._entries.values())

    def longest_match(self, salt: bytes, tokens: list[int]) -> tuple[CacheEntry | None, int]:
        best: CacheEntry | None = None
        best_n = 0
        for entry in self._entries.values():
            if entry.salt != salt:
                continue
            n = common_prefix(entry.path.tokens, tokens)
            if n > best_n:
                best, best_n = entry, n
        if best is not None:
            best.last_used = next(self._clock)
        return best, best_n

    def insert(self, seq_id: int, salt: bytes, path: CellPath) -> list[CacheEntry]:
        """Keep `path` under `seq_id`; returns the entries it makes redundant (now removed).

        An entry of the same salt whose tokens are a prefix of the new path can never give a
        longer match than the new one, so it only holds a sequence id.
        """
        redundant = [e for e in self._entries.values()
                     if e.salt == salt and len(e.path) <= len(path)
                     and common_prefix(e.path.tokens, path.tokens) == len(e.path)]
        for entry in redundant:
            del self._entries[entry.seq_id]
        self._entries[seq_id] = CacheEntry(seq_id, salt, path, next(self._clock))
        return redundant

    def pop_lru(self) -> CacheEntry | None:
        if not self._entries:
            return None
        entry = min(self._entries.values(), key=lambda e: e.last_used)
        del self._entries[entry.seq_id]
        return entry

    def pop(self, seq_id: int) -> CacheEntry:
        return self._entries.pop(seq_id)
