"""A real `seekserve serve` process on the real default model, shared by the e2e tests."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from seekserve.app import default_model_path
from seekserve.settings import default_data_dir
from tests.ports import free_port

API_KEY = "sk-e2e-test-key"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    base_url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # The clients handed out, closed by stop_server (their pooled sockets otherwise leak).
    opened: list[openai.OpenAI | httpx.Client] = field(default_factory=list)

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def client(self, **kwargs: object) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.v1, api_key=self.api_key, max_retries=0,
                               timeout=120, **kwargs)  # type: ignore[arg-type]
        self.opened.append(client)
        return client

    def http(self) -> httpx.Client:
        client = httpx.Client(base_url=self.base_url, timeout=120,
                              headers={"Authorization": f"Bearer {self.api_key}"})
        self.opened.append(client)
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(config: dict[str, object], workdir: Path, *, api_key: str = API_KEY,
                 timeout: float = 300, env: dict[str, str] | None = None,
                 thinking: str | None = "disabled") -> Server:
    """`env` is added to this process's environment (e.g. its own SEEKSERVE_DATA_DIR).

    `thinking` sets the models' default thinking mode: most tests check other features and
    read the answer text, so it is off unless a test asks for the real default (None)."""
    if thinking is not None:
        config = with_thinking_default(config, thinking)
    port = free_port()
    config_path = workdir / "seekserve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "server.log"
    env = dict(os.environ, SEEKSERVE_API_KEYS=api_key, PYTHONUNBUFFERED="1", **(env or {}))
    env.setdefault("SEEKSERVE_DATA_DIR", str(default_data_dir()))
    share_default_model(Path(env["SEEKSERVE_DATA_DIR"]))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "seekserve", "serve", "--config", str(config_path),
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
    server = Server(f"http://127.0.0.1:{port}", api_key, process, log_path)
    wait_until_up(process, f"{server.base_url}/ready", log_path, timeout=timeout)
    return server


def share_default_model(data_dir: Path) -> None:
    """Gives a server's own data directory the default model as links to the one in the default
    data directory (assembled there once per machine), so a test server with a data directory of
    its own starts in seconds: assembling the 469 MiB file anew took 11 s and the disk space."""
    if data_dir.resolve() == default_data_dir().resolve():
        return
    model = default_model_path(default_data_dir(), progress=False)
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    # The file and its verified marker (the marker, no older than the file, spares the hash).
    for source in (model, model.with_name(model.name + ".verified")):
        link = models / source.name
        if not link.exists():
            link.symlink_to(source)


def wait_until_up(process: subprocess.Popen[bytes], url: str, log_path: Path, *,
                  timeout: float) -> None:
    """Poll `url` until it answers 200; the process's log is in the error if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{url} did not answer in {timeout} s:\n"
                       f"{log_path.read_text(errors='replace')}")


def with_thinking_default(config: dict[str, object], default: str) -> dict[str, object]:
    models = config.get("models")
    if models is None:
        models = [{"id": "deepseek-v4-pro", "aliases": ["MaaS_Deepseek_V4_pro_20260424"]}]
    patched = []
    for model in models:  # type: ignore[attr-defined]
        thinking = dict(model.get("thinking") or {})
        thinking.setdefault("default", default)
        patched.append({**model, "thinking": thinking})
    return {**config, "models": patched}


def stop_server(server: Server) -> None:
    for client in server.opened:
        client.close()
    server.opened.clear()
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


SEED_PROVIDERS = REPO / "examples" / "seed-providers.yaml"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shipped example config: all three seed providers' shapes in one server."""
    config = yaml.safe_load(SEED_PROVIDERS.read_text())
    srv = start_server(config, tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return server.client()


def usage_row(data_dir: Path, user_id: str) -> dict[str, Any] | None:
    """The usage row of `user_id` in a server's own SQLite ledger, if it is written yet."""
    with sqlite3.connect(data_dir / "seekserve.db") as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM usage WHERE user_id = ?", (user_id,)).fetchone()
    return dict(found) if found else None


def pytest_unconfigure(config: pytest.Config) -> None:
    """llama-cpp-python opens /dev/null twice when `Llama` is first used (llama_cpp/_utils.py,
    for its output suppression) and never closes it; tests that count tokens with `Llama`
    would end the run with two ResourceWarnings at exit. Closed here, after the last test."""
    utils = sys.modules.get("llama_cpp._utils")
    if utils is not None:
        for name in ("outnull_file", "errnull_file"):
            handle = getattr(utils, name, None)
            if handle is not None:
                handle.close()
