"""KV cell bookkeeping: shared prefixes free only their unshared tails; the prefix cache by salt."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest

from seekserve.engines.llamacpp.kvcache import (
    CellLedger,
    CellPath,
    CellRun,
    PrefixCache,
    common_prefix,
)

TOTAL = 4096


def filled(ledger: CellLedger, n: int, start: int = 0) -> CellPath:
    """A new path with `n` distinct tokens decoded into it."""
    path = ledger.new_path()
    ledger.append(path, list(range(start, start + n)))
    return path


def assert_consistent(ledger: CellLedger, live: list[CellPath]) -> None:
    """Every live path's runs cover its tokens, and each run counts exactly its live holders."""
    holders: dict[int, int] = {}
    runs: dict[int, CellRun] = {}
    for path in live:
        assert sum(run.length for run in path.runs) == len(path.tokens)
        assert len({id(run) for run in path.runs}) == len(path.runs)
        for run in path.runs:
            assert run.length > 0
            holders[id(run)] = holders.get(id(run), 0) + 1
            runs[id(run)] = run
    for key, count in holders.items():
        assert runs[key].holders == count
    assert ledger.used == sum(run.length for run in runs.values())
    assert 0 <= ledger.used <= ledger.total
    assert ledger.free == ledger.total - ledger.used


# ----- append -----


def test_a_new_ledger_has_every_cell_free() -> None:
    ledger = CellLedger(TOTAL)
    assert (ledger.used, ledger.free) == (0, TOTAL)


def test_append_counts_each_new_cell() -> None:
    ledger = CellLedger(TOTAL)
    path = ledger.new_path()
    ledger.append(path, [5, 6, 7])
    ledger.append(path, [8])
    assert ledger.used == 4
    assert ledger.free == TOTAL - 4
    assert path.tokens == [5, 6, 7, 8]
    assert len(path) == 4


def test_appending_nothing_changes_nothing() -> None:
    ledger = CellLedger(TOTAL)
    path = filled(ledger, 3)
    ledger.append(path, [])
    assert ledger.used == 3
    assert path.tokens == [0, 1, 2]


def test_appends_to_an_unshared_path_extend_one_run() -> None:
    ledger = CellLedger(TOTAL)
    path = filled(ledger, 3)
    ledger.append(path, [9, 9])
    assert [run.length for run in path.runs] == [5]
    assert path.runs[0].holders == 1


def test_two_paths_with_equal_tokens_but_no_sharing_use_their_own_cells() -> None:
    ledger = CellLedger(TOTAL)
    a, b = filled(ledger, 10), filled(ledger, 10)
    assert a.tokens == b.tokens
    assert ledger.used == 20
    assert ledger.drop(a) == 10
    assert ledger.used == 10


# ----- share_prefix and drop -----


def test_sharing_a_prefix_uses_no_new_cells() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 60)
    assert ledger.used == 100
    assert b.tokens == a.tokens[:60]
    assert len(b) == 60
    assert_consistent(ledger, [a, b])


def test_dropping_the_source_frees_only_its_unshared_tail() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 60)
    assert ledger.drop(a) == 40
    assert ledger.used == 60
    assert b.tokens == list(range(60))
    assert ledger.drop(b) == 60
    assert ledger.used == 0


def test_dropping_the_sharer_first_frees_nothing_then_the_source_frees_all() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 60)
    assert ledger.drop(b) == 0
    assert ledger.used == 100
    assert ledger.drop(a) == 100
    assert ledger.used == 0


def test_sharing_splits_the_run_in_the_source_too() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 60)
    assert [(r.length, r.holders) for r in a.runs] == [(60, 2), (40, 1)]
    assert [(r.length, r.holders) for r in b.runs] == [(60, 2)]
    assert a.runs[0] is b.runs[0]


def test_sharing_splits_the_run_in_every_path_that_holds_it() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 100)  # b holds a's single run whole
    c = ledger.share_prefix(a, 30)
    assert [r.length for r in b.runs] == [30, 70]
    assert b.runs[0] is a.runs[0] is c.runs[0]
    assert b.runs[1] is a.runs[1]
    assert_consistent(ledger, [a, b, c])
    assert ledger.drop(a) == 0
    assert ledger.drop(b) == 70
    assert ledger.drop(c) == 30
    assert ledger.used == 0


def test_sharing_at_a_run_boundary_splits_nothing() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 50)
    b = ledger.share_prefix(a, 50)
    ledger.append(a, list(range(50, 80)))  # a: [50 shared][30 own]
    c = ledger.share_prefix(a, 50)
    assert [r.length for r in a.runs] == [50, 30]
    assert [(r.length, r.holders) for r in c.runs] == [(50, 3)]
    assert ledger.used == 80
    assert_consistent(ledger, [a, b, c])
    assert ledger.drop(a) == 30
    assert ledger.drop(c) == 0
    assert ledger.drop(b) == 50
    assert ledger.used == 0


def test_sharing_zero_cells_gives_an_empty_path_that_frees_nothing() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 20)
    b = ledger.share_prefix(a, 0)
    assert (b.runs, b.tokens, len(b)) == ([], [], 0)
    assert [r.length for r in a.runs] == [20]
    assert ledger.drop(b) == 0
    assert ledger.used == 20
    ledger.append(b, [1, 2])
    assert ledger.used == 22


def test_sharing_from_an_empty_path() -> None:
    ledger = CellLedger(TOTAL)
    empty = ledger.new_path()
    b = ledger.share_prefix(empty, 0)
    assert ledger.used == 0
    ledger.append(b, [7])
    assert ledger.used == 1


def test_sharing_the_whole_path() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 40)
    b = ledger.share_prefix(a, 40)
    assert b.tokens == a.tokens
    assert ledger.used == 40
    assert ledger.exclusive_to(a) == ledger.exclusive_to(b) == 0
    assert ledger.drop(a) == 0
    assert ledger.exclusive_to(b) == 40
    assert ledger.drop(b) == 40
    assert ledger.used == 0


def test_appending_after_a_share_uses_new_cells_for_each_path() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 10)
    b = ledger.share_prefix(a, 10)
    ledger.append(a, [100, 101])
    ledger.append(b, [200, 201, 202])
    assert ledger.used == 15
    assert a.tokens == [*range(10), 100, 101]
    assert b.tokens == [*range(10), 200, 201, 202]
    assert ledger.exclusive_to(a) == 2
    assert ledger.exclusive_to(b) == 3
    # The shared run was not lengthened by either append.
    assert a.runs[0] is b.runs[0] and a.runs[0].length == 10
    assert_consistent(ledger, [a, b])


def test_a_sharer_left_alone_can_grow_its_run() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 10)
    b = ledger.share_prefix(a, 6)
    ledger.drop(a)
    ledger.append(b, [50, 51])
    assert ledger.used == 8
    assert ledger.exclusive_to(b) == 8
    assert ledger.drop(b) == 8
    assert ledger.used == 0


def test_dropping_twice_frees_nothing_the_second_time() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 10)
    b = ledger.share_prefix(a, 5)
    assert ledger.drop(a) == 5
    assert ledger.drop(a) == 0
    assert ledger.used == 5
    assert (a.runs, a.tokens) == ([], [])
    assert ledger.drop(b) == 5
    assert ledger.used == 0


def test_a_dropped_path_is_no_longer_split_by_later_shares() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 10)
    b = ledger.share_prefix(a, 10)
    ledger.drop(a)
    c = ledger.share_prefix(b, 4)
    assert a.runs == []
    assert [r.length for r in b.runs] == [4, 6]
    assert_consistent(ledger, [b, c])


@dataclass
class Generations:
    ledger: CellLedger
    paths: dict[str, CellPath] = field(default_factory=dict)


def three_generations() -> Generations:
    """a: 100 own cells; b: a's first 60 + 25 own; c: b's first 30 (from a) + 10 own."""
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 60)
    ledger.append(b, list(range(1000, 1025)))
    c = ledger.share_prefix(b, 30)
    ledger.append(c, list(range(2000, 2010)))
    return Generations(ledger, {"a": a, "b": b, "c": c})


def test_three_generations_share_one_prefix() -> None:
    g = three_generations()
    a, b, c = g.paths["a"], g.paths["b"], g.paths["c"]
    assert g.ledger.used == 100 + 25 + 10
    assert c.tokens == [*range(30), *range(2000, 2010)]
    assert c.runs[0] is b.runs[0] is a.runs[0]
    assert c.runs[0].holders == 3
    assert g.ledger.exclusive_to(a) == 40
    assert g.ledger.exclusive_to(b) == 25
    assert g.ledger.exclusive_to(c) == 10
    assert_consistent(g.ledger, [a, b, c])


@pytest.mark.parametrize("order", list(itertools.permutations("abc")))
def test_three_generations_free_everything_in_any_drop_order(order: tuple[str, ...]) -> None:
    g = three_generations()
    live = dict(g.paths)
    total_freed = 0
    for name in order:
        expected = g.ledger.exclusive_to(live[name])
        freed = g.ledger.drop(live.pop(name))
        assert freed == expected
        total_freed += freed
        assert g.ledger.used >= 0
        assert g.ledger.used == g.ledger.held_by(list(live.values()))
        assert_consistent(g.ledger, list(live.values()))
    assert total_freed == 135
    assert g.ledger.used == 0
    assert g.ledger.free == TOTAL


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_a_chain_of_whole_and_partial_shares_frees_everything_in_any_order(
        order: tuple[int, ...]) -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 64)
    b = ledger.share_prefix(a, 64)       # whole
    c = ledger.share_prefix(b, 32)       # half, splits the run held by a and b
    ledger.append(c, [9] * 8)
    d = ledger.share_prefix(c, 40)       # all of c, at a boundary
    paths = [a, b, c, d]
    assert ledger.used == 72
    for i in order:
        ledger.drop(paths[i])
        assert ledger.used >= 0
    assert ledger.used == 0


@pytest.mark.parametrize("n", [-1, 101, 1000])
def test_sharing_out_of_range_is_a_value_error(n: int) -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    with pytest.raises(ValueError, match="cannot share"):
        ledger.share_prefix(a, n)
    assert ledger.used == 100
    assert [(r.length, r.holders) for r in a.runs] == [(100, 1)]


# ----- exclusive_to and held_by -----


def test_exclusive_to_counts_cells_no_one_else_holds() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    assert ledger.exclusive_to(a) == 100
    b = ledger.share_prefix(a, 60)
    assert ledger.exclusive_to(a) == 40
    assert ledger.exclusive_to(b) == 0
    assert ledger.exclusive_to(ledger.new_path()) == 0


def test_held_by_counts_overlapping_cells_once() -> None:
    ledger = CellLedger(TOTAL)
    a = filled(ledger, 100)
    b = ledger.share_prefix(a, 60)
    ledger.append(b, [1] * 15)
    c = ledger.share_prefix(a, 80)
    other = filled(ledger, 7)
    assert ledger.held_by([a]) == 100
    assert ledger.held_by([b]) == 75
    assert ledger.held_by([c]) == 80
    assert ledger.held_by([a, b]) == 115
    assert ledger.held_by([b, c]) == 95
    assert ledger.held_by([a, c]) == 100
    assert ledger.held_by([a, b, c, other]) == 122 == ledger.used
    assert ledger.held_by([a, a]) == 100
    assert ledger.held_by([]) == 0


# ----- randomized against a brute-force model -----


class CellModel:
    """Each cell has an id; a shared prefix reuses the source's ids; a cell is used while held."""

    def __init__(self) -> None:
        self.next_id = 0
        self.cells: dict[int, list[int]] = {}         # path key -> its cell ids in order
        self.holders: dict[int, set[int]] = {}        # cell id -> path keys holding it

    def new(self, key: int) -> None:
        self.cells[key] = []

    def append(self, key: int, n: int) -> None:
        for _ in range(n):
            self.holders[self.next_id] = {key}
            self.cells[key].append(self.next_id)
            self.next_id += 1

    def share(self, source: int, n: int, key: int) -> None:
        self.cells[key] = self.cells[source][:n]
        for cell in self.cells[key]:
            self.holders[cell].add(key)

    def drop(self, key: int) -> int:
        freed = 0
        for cell in self.cells.pop(key):
            self.holders[cell].discard(key)
            if not self.holders[cell]:
                freed += 1
        return freed

    @property
    def used(self) -> int:
        return sum(1 for keys in self.holders.values() if keys)

    def exclusive(self, key: int) -> int:
        return sum(1 for cell in self.cells[key] if self.holders[cell] == {key})

    def held_by(self, keys: list[int]) -> int:
        return len({cell for key in keys for cell in self.cells[key]})


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_operations_match_a_cell_by_cell_model(seed: int) -> None:
    rng = random.Random(seed)
    ledger = CellLedger(1_000_000)
    model = CellModel()
    paths: dict[int, CellPath] = {}
    keys = itertools.count()
    token = itertools.count()

    for step in range(400):
        op = rng.choices(["new", "append", "share", "drop"], weights=[1, 4, 3, 2])[0]
        if op == "new" or not paths:
            key = next(keys)
            paths[key] = ledger.new_path()
            model.new(key)
            n = rng.randint(0, 30)
            ledger.append(paths[key], [next(token) for _ in range(n)])
            model.append(key, n)
        elif op == "append":
            key = rng.choice(list(paths))
            n = rng.randint(0, 12)
            before = paths[key].tokens[:]
            new_tokens = [next(token) for _ in range(n)]
            ledger.append(paths[key], new_tokens)
            model.append(key, n)
            assert paths[key].tokens == before + new_tokens
        elif op == "share":
            source = rng.choice(list(paths))
            length = len(paths[source])
            n = rng.choice([0, length, rng.randint(0, length)])
            key = next(keys)
            paths[key] = ledger.share_prefix(paths[source], n)
            model.share(source, n, key)
            assert paths[key].tokens == paths[source].tokens[:n]
        else:
            key = rng.choice(list(paths))
            expected_exclusive = model.exclusive(key)
            assert ledger.exclusive_to(paths[key]) == expected_exclusive
            assert ledger.drop(paths.pop(key)) == model.drop(key) == expected_exclusive

        assert ledger.used == model.used, f"seed {seed}, step {step}: after {op}"
        for key, path in paths.items():
            assert len(path) == len(model.cells[key])
        if step % 20 == 0:
            assert_consistent(ledger, list(paths.values()))
            for key, path in paths.items():
                assert ledger.exclusive_to(path) == model.exclusive(key)
            sample = rng.sample(list(paths), min(len(paths), 4))
            assert ledger.held_by([paths[k] for k in sample]) == model.held_by(sample)

    for key in rng.sample(list(paths), len(paths)):
        ledger.drop(paths.pop(key))
        model.drop(key)
        assert ledger.used == model.used >= 0
    assert ledger.used == 0


# ----- common_prefix -----


@pytest.mark.parametrize(("a", "b", "n"), [
    ([], [], 0),
    ([1, 2, 3], [], 0),
    ([1, 2, 3], [1, 2, 3], 3),
    ([1, 2, 3], [1, 2], 2),
    ([1, 2], [1, 2, 3, 4], 2),
    ([1, 2, 3], [1, 9, 3], 1),
    ([5], [6], 0),
])
def test_common_prefix(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix(a, b) == n


# ----- PrefixCache -----


def cached_path(tokens: list[int]) -> CellPath:
    return CellPath(tokens=list(tokens))


SALT_A = b"salt-a"
SALT_B = b"salt-b"


def test_an_empty_cache_matches_nothing() -> None:
    cache = PrefixCache(4)
    assert cache.longest_match(SALT_A, [1, 2, 3]) == (None, 0)
    assert cache.pop_lru() is None
    assert len(cache) == 0


def test_longest_match_picks_the_longest_common_prefix() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1, 2, 9]))
    cache.insert(2, SALT_A, cached_path([1, 2, 3, 4, 8]))
    cache.insert(3, SALT_A, cached_path([1, 7]))
    entry, n = cache.longest_match(SALT_A, [1, 2, 3, 4, 5, 6])
    assert entry is not None
    assert (entry.seq_id, n) == (2, 4)


def test_longest_match_of_a_prompt_shorter_than_the_entry() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1, 2, 3, 4, 5]))
    entry, n = cache.longest_match(SALT_A, [1, 2])
    assert entry is not None and (entry.seq_id, n) == (1, 2)


def test_longest_match_with_no_common_token_is_none() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1, 2, 3]))
    assert cache.longest_match(SALT_A, [2, 2, 3]) == (None, 0)


def test_longest_match_never_crosses_salts() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1, 2]))
    cache.insert(2, SALT_B, cached_path([1, 2, 3, 4, 5]))
    entry, n = cache.longest_match(SALT_A, [1, 2, 3, 4, 5])
    assert entry is not None and (entry.seq_id, entry.salt, n) == (1, SALT_A, 2)
    assert cache.longest_match(b"salt-c", [1, 2, 3, 4, 5]) == (None, 0)
    entry, n = cache.longest_match(SALT_B, [1, 2, 3])
    assert entry is not None and (entry.seq_id, n) == (2, 3)


def test_a_match_makes_the_entry_most_recently_used() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1]))
    cache.insert(2, SALT_A, cached_path([2]))
    cache.insert(3, SALT_B, cached_path([3]))
    entry, _ = cache.longest_match(SALT_A, [1, 5])
    assert entry is not None and entry.seq_id == 1
    popped = [cache.pop_lru() for _ in range(3)]
    assert [e.seq_id for e in popped if e is not None] == [2, 3, 1]
    assert cache.pop_lru() is None


def test_a_miss_does_not_touch_lru_order() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1]))
    cache.insert(2, SALT_A, cached_path([2]))
    before = [e.last_used for e in cache.entries]
    assert cache.longest_match(SALT_A, [9]) == (None, 0)
    assert cache.longest_match(SALT_B, [1]) == (None, 0)
    assert [e.last_used for e in cache.entries] == before
    first = cache.pop_lru()
    assert first is not None and first.seq_id == 1


def test_pop_lru_follows_insertion_order_without_matches() -> None:
    cache = PrefixCache(8)
    for seq_id in (4, 2, 7, 1):
        cache.insert(seq_id, SALT_A, cached_path([seq_id, 100 + seq_id]))
    order = []
    while (entry := cache.pop_lru()) is not None:
        order.append(entry.seq_id)
    assert order == [4, 2, 7, 1]
    assert len(cache) == 0


def test_insert_removes_same_salt_prefixes_of_the_new_tokens() -> None:
    cache = PrefixCache(8)
    # Inserted so that none of these makes another redundant.
    cache.insert(4, SALT_A, cached_path([1, 2, 3, 4, 5]))   # longer than new: kept
    cache.insert(3, SALT_A, cached_path([1, 2, 5]))         # diverges: kept
    cache.insert(2, SALT_A, cached_path([1, 2, 3, 4]))      # equal to new: redundant
    cache.insert(1, SALT_A, cached_path([1, 2]))            # prefix: redundant
    cache.insert(5, SALT_B, cached_path([1, 2]))            # other salt: kept
    assert len(cache) == 5
    new = cached_path([1, 2, 3, 4])
    redundant = cache.insert(6, SALT_A, new)
    assert sorted(e.seq_id for e in redundant) == [1, 2]
    assert sorted(e.seq_id for e in cache.entries) == [3, 4, 5, 6]
    assert len(cache) == 4
    assert cache.pop(6).path is new
    with pytest.raises(KeyError):
        cache.pop(1)


def test_insert_treats_an_empty_entry_as_a_prefix_of_anything() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([]))
    cache.insert(2, SALT_B, cached_path([]))
    redundant = cache.insert(3, SALT_A, cached_path([1]))
    assert [e.seq_id for e in redundant] == [1]
    assert sorted(e.seq_id for e in cache.entries) == [2, 3]


def test_insert_with_nothing_redundant_returns_an_empty_list() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1, 2, 3]))
    assert cache.insert(2, SALT_A, cached_path([1, 2])) == []
    assert len(cache) == 2


def test_inserted_entries_carry_their_fields() -> None:
    cache = PrefixCache(8)
    path = cached_path([3, 1, 4])
    cache.insert(11, SALT_B, path)
    (entry,) = cache.entries
    assert (entry.seq_id, entry.salt, entry.path) == (11, SALT_B, path)
    assert cache.capacity == 8


def test_pop_removes_one_entry_by_sequence_id() -> None:
    cache = PrefixCache(8)
    cache.insert(1, SALT_A, cached_path([1]))
    cache.insert(2, SALT_A, cached_path([2]))
    entry = cache.pop(1)
    assert (entry.seq_id, entry.path.tokens) == (1, [1])
    assert [e.seq_id for e in cache.entries] == [2]
    assert cache.longest_match(SALT_A, [1]) == (None, 0)
    with pytest.raises(KeyError):
        cache.pop(1)


def test_cache_entries_hold_ledger_paths_that_can_be_shared_and_freed() -> None:
    ledger = CellLedger(TOTAL)
    cache = PrefixCache(4)
    first = filled(ledger, 50)
    cache.insert(1, SALT_A, first)
    prompt = [*range(30), 999, 998]
    entry, n = cache.longest_match(SALT_A, prompt)
    assert entry is not None and n == 30
    second = ledger.share_prefix(entry.path, n)
    ledger.append(second, prompt[n:])
    assert ledger.used == 52
    redundant = cache.insert(2, SALT_A, second)
    assert redundant == []  # [0..49] is not a prefix of [0..29, 999, 998]
    lru = cache.pop_lru()
    assert lru is not None and lru.seq_id == 1
    assert ledger.drop(lru.path) == 20
    assert ledger.used == 32
