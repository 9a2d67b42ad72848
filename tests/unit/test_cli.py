"""The seekserve command: refusing an open bind without keys, listing models."""

from __future__ import annotations

import pytest

from seekserve.cli import main


def test_serve_refuses_a_public_bind_without_keys(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SEEKSERVE_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8999"]) == 2
    err = capsys.readouterr().err
    assert "no API keys are configured" in err and "0.0.0.0" in err


def test_models_lists_ids_aliases_and_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-v4-pro (aliases: MaaS_Deepseek_V4_pro_20260424)" in out
    assert "engine=embedded" in out


def test_bad_config_is_reported_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--config", "/nonexistent/seekserve.yaml"]) == 2
    assert "cannot read config file" in capsys.readouterr().err
