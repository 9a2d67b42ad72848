"""Fuzzing with schemathesis, bounded (a fixed number of examples per operation, a fixed seed,
max_tokens capped by tests/reliability/fuzz_hooks.py): our own OpenAPI description
(`GET /openapi.json`, every route) and the first seed's (tests/data/seed_openapi.yaml, the
chat route as the seed document describes it), against a server on the real model.

Held: no answer is a 5xx, and the server never crashes (it answers /health after the run, and
its log has no traceback).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import test_tenancy_e2e as tenancy
from tests.e2e.conftest import API_KEY, REPO, Server, stop_server
from tests.reliability.harness import Row, embedded_config, start_in

model_path = tenancy.model_path

EXAMPLES = 25
SEED_SPEC = REPO / "tests" / "data" / "seed_openapi.yaml"


@pytest.fixture(scope="module")
def fuzzed(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("fuzz")
    server = start_in(workdir, embedded_config(model_path, n_ctx=2048, max_running=2))
    yield server
    stop_server(server)


def schemathesis_run(location: str, base_url: str, report: Path
                     ) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", location, "--url", base_url,
        "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES), "--seed", "16",
        "--workers", "1", "--request-timeout", "300", "--no-color",
        "--header", f"Authorization: Bearer {API_KEY}",
        "--generation-database", "none", "--report", "junit", "--report-junit-path", str(report),
    ]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="tests.reliability.fuzz_hooks")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=3600)


def junit_counts(report: Path) -> tuple[int, int]:
    """(operations tested, operations with a failure or an error)."""
    cases = ET.parse(report).getroot().iter("testcase")
    tested = failed = 0
    for case in cases:
        tested += 1
        failed += any(child.tag in ("failure", "error") for child in case)
    return tested, failed


@pytest.mark.parametrize("spec", ["own", "seed"])
def test_fuzz_openapi(fuzzed: Server, spec: str, record: Row, tmp_path: Path) -> None:
    location = f"{fuzzed.base_url}/openapi.json" if spec == "own" else str(SEED_SPEC)
    report = tmp_path / "junit.xml"
    run = schemathesis_run(location, fuzzed.base_url, report)
    tested, failed = junit_counts(report) if report.exists() else (0, -1)
    summary = [line for line in run.stdout.splitlines() if "test cases" in line.lower()
               or "passed" in line.lower() or "failed" in line.lower()][-3:]
    alive = httpx.get(f"{fuzzed.base_url}/health", timeout=10).status_code
    tracebacks = [line for line in fuzzed.log().splitlines() if "Traceback" in line]
    record.inputs = (f"schemathesis on {'our /openapi.json' if spec == 'own' else 'the seed spec'}"
                     f": {tested} operations, {EXAMPLES} examples each (seed 16)")
    record.measured = (f"{failed} operations with a server error; /health {alive} after; "
                       f"{len(tracebacks)} tracebacks in the log; {' / '.join(summary)}")
    assert run.returncode == 0 and failed == 0, run.stdout[-6000:]
    assert tested > 0
    assert alive == 200
    assert not tracebacks, fuzzed.log()[-4000:]
