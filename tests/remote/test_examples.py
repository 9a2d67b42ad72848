"""The shipped remote-engine example configs load through the real settings loader and build
their remote engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekserve.engines.remote.passthrough import build_remote_engines
from seekserve.settings import RemoteEngineSettings, Settings, SettingsError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(("name", "engines", "env"), [
    ("remote-vllm.yaml", {"vllm-pool": 2, "sglang-pool": 1}, ["VLLM_API_KEY"]),
    ("remote-providers.yaml", {"deepseek": 1, "maas": 1, "backend": 1},
     ["DEEPSEEK_API_KEY", "MAAS_AK", "BACKEND_KEY"]),
])
def test_example_config_loads_and_builds(name: str, engines: dict[str, int], env: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for var in env:
        monkeypatch.setenv(var, "sk-example")
    settings = Settings.load(EXAMPLES / name)
    remotes = build_remote_engines(settings.engines)
    assert {n: len(r.replicas) for n, r in remotes.items()} == engines
    for spec in settings.engines.values():
        assert isinstance(spec, RemoteEngineSettings)
    if name == "remote-providers.yaml":
        maas = remotes["maas"].replicas[0].client
        assert maas.chat_path == "/v1/ai/your-endpoint-path/chat/completions"
        assert remotes["deepseek"].replicas[0].client.chat_path == "/chat/completions"


def test_a_missing_credential_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    settings = Settings.load(EXAMPLES / "remote-vllm.yaml")
    with pytest.raises(SettingsError, match=r"\$VLLM_API_KEY, which is not set"):
        build_remote_engines(settings.engines)
