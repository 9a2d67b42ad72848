"""The shipped remote-engine example configs load through the real settings loader and build
their remote engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekserve.app import default_model_path
from seekserve.chat.passthrough import build_passthroughs
from seekserve.engines.remote.tokens import RemoteTokenEngine
from seekserve.settings import (
    LimitSettings,
    RemoteEngineSettings,
    Settings,
    SettingsError,
    default_data_dir,
)

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
    remotes = build_passthroughs(settings.engines, LimitSettings())
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
        build_passthroughs(settings.engines, LimitSettings())


def test_the_token_protocol_example_loads_and_builds_its_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-example")
    settings = Settings.load(EXAMPLES / "remote-tokens.yaml")
    spec = settings.engines["v4-tokens"]
    assert isinstance(spec, RemoteEngineSettings)
    assert (spec.protocol, spec.upstream, spec.max_sequence_tokens) == ("tokens", "vllm", 393216)
    # A token engine, not a pass-through:
    assert build_passthroughs(settings.engines, LimitSettings()) == {}
    # Built as the app builds it, with the default model's vocabulary in place of the example's
    # (absent here) V4 vocabulary file.
    engine = RemoteTokenEngine("v4-tokens", spec.model_copy(update={"tokenizer": None}),
                               default_model_path(default_data_dir(), progress=False))
    assert [r.client.model for r in engine.pool.replicas] == ["deepseek-ai/DeepSeek-V4-Pro"] * 2
    assert engine.max_sequence_tokens == 393216 and engine.chat_template
