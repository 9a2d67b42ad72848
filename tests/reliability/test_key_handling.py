"""Key handling: a wrong key's rejection time does not depend on how much of a real key it
matches, and no key ever shows up in the server's log, its metrics or its store.

Timing: wrong keys shaped like managed keys (`sk-` and 43 characters) that share the first m
characters of the secret part of a real managed key, m from 0 to 42, sent in rounds (one of
each class per round, in a shuffled order, over one kept-alive connection, so the machine's
noise falls on every class alike). Each class is compared with m = 0 by the median of the
per-round differences, with a bootstrap 99% confidence interval: it must lie within
+-EQUIVALENCE of zero. A control class (a key of another length, which never reaches the
store) must differ from m = 0 by more than that: the measurement can see a difference of the
size it rules out.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import API_KEY, Server, stop_server
from tests.e2e.test_tenancy_e2e import ADMIN, create_key
from tests.reliability.harness import (
    MODEL,
    Row,
    Upstream,
    remote_engine,
    start_in,
    start_paced_upstream,
    stop_process,
)

PREFIX = "sk-"
SECRET_LENGTH = 43
MATCHED = [0, 1, 4, 8, 16, 24, 32, 40, 42]  # characters of the real secret a wrong key shares
ROUNDS = 1500
BOOTSTRAP = 2000
EQUIVALENCE_SHARE = 0.05  # of the median rejection time
EQUIVALENCE_MIN_S = 20e-6
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    workdir = tmp_path_factory.mktemp("keys")
    data_dir = workdir / "data"
    upstream: Upstream | None = None
    server = None
    try:
        upstream = start_paced_upstream(workdir, pieces=2, interval=0.0)
        config = {"server": {"host": "127.0.0.1"}, "admin_key": ADMIN,
                  "engines": {"remote": remote_engine([upstream.url])},
                  "models": [{"id": MODEL, "engine": "remote"}],
                  "store": {"flush_interval_s": 0.2}}
        server = start_in(workdir, config)
        yield server, data_dir
    finally:
        if server is not None:
            stop_server(server)
        if upstream is not None:
            stop_process(upstream.process)


def wrong_key(real: str, matched: int, rng: random.Random) -> str:
    """A managed-key-shaped key sharing `matched` characters of `real`'s secret part."""
    secret = real[len(PREFIX):]
    rest = "".join(rng.choice(ALPHABET.replace(secret[matched], "")) if i == matched
                   else rng.choice(ALPHABET) for i in range(matched, SECRET_LENGTH))
    return PREFIX + secret[:matched] + rest


def rejection_times(server: Server, real: str, rng: random.Random
                    ) -> tuple[dict[str, np.ndarray], set[str]]:
    """Seconds per 401, per class (one try of each class per round); the wrong keys sent."""
    classes = [f"m={m}" for m in MATCHED] + ["control"]
    times: dict[str, list[float]] = {c: [] for c in classes}
    sent: set[str] = set()
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        for _ in range(ROUNDS):
            order = classes[:]
            rng.shuffle(order)
            for name in order:
                key = ("sk-" + "".join(rng.choice(ALPHABET) for _ in range(20))
                       if name == "control" else wrong_key(real, int(name[2:]), rng))
                sent.add(key)
                started = time.perf_counter()
                response = http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                took = time.perf_counter() - started
                assert response.status_code == 401, response.text
                times[name].append(took)
    return {name: np.array(values) for name, values in times.items()}, sent


def median_difference_ci(a: np.ndarray, b: np.ndarray, rng: np.random.Generator
                         ) -> tuple[float, float, float]:
    """The median of the per-round differences a - b, and its bootstrap 99% interval."""
    diffs = a - b
    picks = rng.integers(0, len(diffs), size=(BOOTSTRAP, len(diffs)))
    medians = np.median(diffs[picks], axis=1)
    low, high = np.percentile(medians, [0.5, 99.5])
    return float(np.median(diffs)), float(low), float(high)


def test_rejection_time_does_not_depend_on_the_matched_prefix(
        keyed: tuple[Server, Path], record: Row) -> None:
    server, _ = keyed
    real = create_key(server)["key"]
    assert real.startswith(PREFIX) and len(real) == len(PREFIX) + SECRET_LENGTH
    times, _ = rejection_times(server, real, random.Random(16))
    reference = times["m=0"]
    median_s = float(np.median(reference))
    bound = max(EQUIVALENCE_SHARE * median_s, EQUIVALENCE_MIN_S)
    generator = np.random.default_rng(16)
    compared = {name: median_difference_ci(values, reference, generator)
                for name, values in times.items() if name != "m=0"}
    outside = {name: ci for name, ci in compared.items()
               if name != "control" and not (-bound <= ci[1] and ci[2] <= bound)}
    control = compared["control"]
    record.held = (f"{ROUNDS} rounds x {len(times)} classes = {ROUNDS * len(times)} wrong keys "
                   f"(matching m = {MATCHED} characters of a real key's 43-character secret)")
    record.inputs = "wrong keys sharing a prefix of a real managed key"
    record.measured = (f"median 401 {median_s * 1e6:.0f} us; per-round median difference to "
                       f"m=0 (99% CI) within +-{bound * 1e6:.0f} us: "
                       + ", ".join(f"{n} {d * 1e6:+.0f} [{lo * 1e6:+.0f}, {hi * 1e6:+.0f}]"
                                   for n, (d, lo, hi) in compared.items()))
    assert not outside, outside
    # The control (no store lookup) shows the measurement can see a difference of this size.
    assert control[2] < -bound or control[1] > bound, (control, bound)


KEY_SHAPED = re.compile(r"sk-[A-Za-z0-9_-]{8,}")


def everything_stored(data_dir: Path) -> str:
    """Every row of every table of the SQLite store, and the usage journals, as text."""
    parts = []
    with sqlite3.connect(data_dir / "seekserve.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            parts += [repr(row) for row in db.execute(f'SELECT * FROM "{table}"')]
    for journal in (data_dir / "ledger").glob("*"):
        parts.append(journal.read_text(errors="replace"))
    return "\n".join(parts)


def test_keys_never_appear_in_logs_metrics_or_the_store(
        keyed: tuple[Server, Path], record: Row) -> None:
    server, data_dir = keyed
    managed = [create_key(server, rpm=1000)["key"] for _ in range(2)]
    rng = random.Random(7)
    wrong = {wrong_key(managed[0], rng.randrange(SECRET_LENGTH), rng) for _ in range(200)}
    used = [API_KEY, *managed]
    for key in used:
        for stream in (False, True):
            response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                                  headers={"Authorization": f"Bearer {key}"},
                                  json={"model": MODEL, "stream": stream, "user_id": "leak",
                                        "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 200, response.text
    for key in wrong:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                              headers={"Authorization": f"Bearer {key}"}, json={"model": MODEL})
        assert response.status_code == 401
    time.sleep(1)  # the ledger's flush interval is 0.2 s
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    sources = {"server log": server.log(), "/metrics": metrics,
               "store and journals": everything_stored(data_dir)}
    secrets = [API_KEY, ADMIN, *managed, *wrong]
    # A key's tail too: a leak need not start where the key does.
    needles = {s: s for s in secrets} | {s[-16:]: s for s in secrets}
    found = {name: sorted({needles[n] for n in needles if n in text})
             for name, text in sources.items()}
    shaped = {name: sorted(set(KEY_SHAPED.findall(text)) & set(secrets))
              for name, text in sources.items()}
    record.inputs = f"{len(used)} working keys (static, 2 managed), the admin key, " \
                    f"{len(wrong)} wrong keys"
    record.measured = "; ".join(f"{name}: {len(text)} characters, {len(found[name])} keys found"
                                for name, text in sources.items())
    assert not any(found.values()), found
    assert not any(shaped.values()), shaped
