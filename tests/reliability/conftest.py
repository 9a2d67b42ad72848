"""The reliability suite: options, and the table of what each scenario held.

Not part of the default run (pyproject's `norecursedirs` leaves this folder out); it runs when
named:

    .venv/bin/python -m pytest tests/reliability [--reliability-duration MIN]
        [--reliability-report PATH]

Each scenario adds one row (what load was held, which faults it survived, which bad inputs it
tried, whether anything was lost) to a table printed at the end of the run, and written as JSON
to `--reliability-report`; bench/RELIABILITY.md keeps the rows of the recorded runs.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.reliability.harness import Row


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability")
    group.addoption("--reliability-duration", type=float, default=3.0, metavar="MIN",
                    help="minutes of mixed load in the soak (30 for the recorded run)")
    group.addoption("--reliability-report", type=Path, default=None, metavar="PATH",
                    help="write the scenarios' rows as JSON here")


_ROWS = pytest.StashKey[list[Row]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS] = []


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Row:
    """This scenario's row: the test fills it in; it is reported whether the test passes."""
    config = request.config
    command = ".venv/bin/python -m pytest " + shlex.quote(request.node.nodeid)
    duration = config.getoption("--reliability-duration")
    if "soak" in request.node.nodeid:
        command += f" --reliability-duration {duration:g}"
    row = Row(scenario=request.node.name, command=command)
    config.stash[_ROWS].append(row)
    return row


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        for row in item.config.stash[_ROWS]:
            if row.scenario == item.name and row.result == "":
                row.result = "pass" if report.passed else f"FAIL: {_reason(report)}"
    return report


def _reason(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or str(report.longrepr)
    return message.splitlines()[0][:300]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = terminalreporter.config.stash[_ROWS]
    if not rows:
        return
    terminalreporter.section("reliability")
    for line in Row.table(rows):
        terminalreporter.write_line(line)
    path = terminalreporter.config.getoption("--reliability-report")
    if path is not None:
        path.write_text(json.dumps([row.as_dict() for row in rows], indent=2) + "\n")
