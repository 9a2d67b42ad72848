"""Settings: file + environment, validated with messages that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekserve.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_serve_the_default_model_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEEKSERVE_API_KEYS", raising=False)
    s = Settings.load(None)
    assert s.server.host == "127.0.0.1" and s.server.port == 8000
    assert s.server.is_loopback()
    assert [m.id for m in s.models] == ["deepseek-v4-pro"]
    assert s.models[0].aliases == ["MaaS_Deepseek_V4_pro_20260424"]
    assert s.engines["embedded"].model_path is None
    assert s.api_keys == []


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 9001\n  host: 127.0.0.1\n")
    monkeypatch.setenv("SEEKSERVE_SERVER__PORT", "9002")
    monkeypatch.setenv("SEEKSERVE_API_KEYS", "k1, k2,")
    monkeypatch.setenv("SEEKSERVE_DATA_DIR", str(tmp_path / "data"))
    s = Settings.load(config)
    assert s.server.port == 9002
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert s.data_dir == tmp_path / "data"
    assert len(s.api_key_hashes()) == 2 and all(len(h) == 32 for h in s.api_key_hashes())


def test_toml_is_read_too(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nport = 7000\n[engines.embedded]\nn_ctx = 4096\n')
    s = Settings.load(config)
    assert s.server.port == 7000 and s.engines["embedded"].n_ctx == 4096


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  prot: 1\n", "server.prot"),
        ("models:\n  - id: m\n    engine: missing\n", "engine 'missing'"),
        ("models:\n  - id: a\n  - id: a\n", "used twice"),
        ("deployments:\n  - name: a\n  - name: b\n", "only one can answer"),
        ("deployments:\n  - name: a\n    endpoint_path: 'bad path'\n", "endpoint_path"),
        ("deployments:\n  - name: a\n    models: [nope]\n", "unknown model 'nope'"),
        ("engines:\n  embedded:\n    n_ctx: 10\n", "engines.embedded.n_ctx"),
        ("engines:\n  embedded:\n    n_batch: 32\n    max_running: 64\n", "cannot exceed n_batch"),
        ("- just a list\n", "mapping"),
        ("server: [\n", "not valid"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError) as err:
        Settings.load(config)
    assert needle in str(err.value)


def test_missing_file_and_wrong_suffix(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.load(tmp_path / "absent.yaml")
    other = tmp_path / "c.json"
    other.write_text("{}")
    with pytest.raises(SettingsError, match=r"\.yaml, \.yml or \.toml"):
        Settings.load(other)


def test_shipped_example_is_valid() -> None:
    s = Settings.load(REPO / "examples" / "seed-providers.yaml")
    dialects = {d.name: d.dialect for d in s.deployments}
    assert dialects == {"deepseek": "openai", "maas-deepseek": "maas", "backend": "output_text"}
