"""The seekserve command: refusing an open bind without keys (and allowing one with any kind of
key), the key sources in the start banner, listing models."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekserve.app import check_bind_safety
from seekserve.cli import _banner, main
from seekserve.settings import Settings
from seekserve.tenancy.keys import KeyStore
from seekserve.tenancy.service import count_managed_keys
from seekserve.tenancy.store import Store, default_url


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir of the test's own, with no key configured in the environment."""
    for name in ("SEEKSERVE_API_KEYS", "SEEKSERVE_ADMIN_KEY", "SEEKSERVE_STORE__URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEEKSERVE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_serve_refuses_a_public_bind_without_keys_and_names_every_way(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert "no API keys are configured" in err and "0.0.0.0" in err
    for way in ("SEEKSERVE_API_KEYS", "seekserve keys create", "SEEKSERVE_ADMIN_KEY",
                "127.0.0.1"):
        assert way in err, way


async def test_a_managed_key_in_the_store_allows_any_address(data_dir: Path) -> None:
    settings = Settings.load(None, server={"host": "0.0.0.0"})
    assert await count_managed_keys(settings) == 0
    store = Store(default_url(data_dir))
    await KeyStore(store).create("ops")
    await store.aclose()
    assert await count_managed_keys(settings) == 1
    assert check_bind_safety(settings, 1) is None
    assert check_bind_safety(Settings.load(None, server={"host": "0.0.0.0"},
                                           admin_key="adm"), 0) is None
    assert check_bind_safety(Settings.load(None, server={"host": "0.0.0.0"},
                                           api_keys=["sk-a"]), 0) is None
    assert "keys create" in (check_bind_safety(Settings.load(None), 0) or "")


def test_the_banner_lists_the_active_key_sources(data_dir: Path) -> None:
    open_banner = _banner(Settings.load(None), 0)
    assert "  keys: none required (open to local processes)" in open_banner
    assert "Authorization" not in open_banner
    every = _banner(Settings.load(None, api_keys=["sk-a", "sk-b"], admin_key="adm"), 3)
    assert ("  keys required: 2 static keys (SEEKSERVE_API_KEYS); 3 managed keys in the store "
            "(`seekserve keys list`); the admin key (SEEKSERVE_ADMIN_KEY)") in every
    assert "Authorization: Bearer" in every
    assert "  keys required: 1 managed key in the store" in _banner(Settings.load(None), 1)


def test_models_lists_ids_aliases_and_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-v4-pro (aliases: MaaS_Deepseek_V4_pro_20260424)" in out
    assert "engine=embedded" in out


def test_bad_config_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--config", "/nonexistent/seekserve.yaml"]) == 2
    assert "cannot read config file" in capsys.readouterr().err

