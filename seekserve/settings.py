"""Server settings: one YAML/TOML file plus SEEKSERVE_* environment overrides, validated."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MODEL_ID = "deepseek-v4-pro"
DEFAULT_MODEL_ALIASES = ("MaaS_Deepseek_V4_pro_20260424",)

Dialect = Literal["openai", "maas", "output_text"]


class SettingsError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "seekserve"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to bind (0 picks a free one).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    system_fingerprint: str = Field(
        "fp_seekserve", description="Reported as system_fingerprint in every response."
    )

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class LimitSettings(_Section):
    """Explicit request limits; each violation is a 400/413 that names the limit."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_messages: int = Field(2048, ge=1, description="Most messages in one request.")
    max_message_chars: int = Field(
        1_000_000, ge=1, description="Longest text of one message (all its parts together)."
    )
    max_content_parts: int = Field(256, ge=1, description="Most content parts in one message.")
    max_stop_chars: int = Field(256, ge=1, description="Longest single stop string.")
    max_tools: int = Field(128, ge=0, description="Most tools in one request.")
    max_model_chars: int = Field(256, ge=1, description="Longest model id.")


class LlamaCppEngineSettings(_Section):
    kind: Literal["llamacpp"] = "llamacpp"
    model_path: Path | None = Field(
        None, description="A GGUF file; unset means the default model assembled from PyPI."
    )
    n_ctx: int = Field(
        16384, ge=256, description="KV cells in the context, shared by all running sequences."
    )
    max_sequence_tokens: int | None = Field(
        None, ge=64, description="Longest prompt+completion of one sequence (default: n_ctx, "
        "capped by the model's training context)."
    )
    n_batch: int = Field(512, ge=32, description="Most tokens in one llama_decode call.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores).")
    max_running: int = Field(4, ge=1, le=256, description="Sequences decoded together.")
    chat_template: str | None = Field(
        None, description="A Jinja chat template that replaces the one in the GGUF file."
    )

    @_model_validator(mode="after")
    def _batch_holds_a_step(self) -> LlamaCppEngineSettings:
        # Every running sequence puts one token into each decode step's batch.
        if self.max_running > self.n_batch:
            raise ValueError(f"max_running ({self.max_running}) cannot exceed n_batch "
                             f"({self.n_batch}): each step decodes one token per sequence")
        return self


class ModelSettings(_Section):
    id: str = Field(..., min_length=1, description="The model id clients send.")
    aliases: list[str] = Field(default_factory=list, description="Other ids for the same model.")
    engine: str = Field("embedded", description="Name of the engine (key of `engines`).")
    owned_by: str = "seekserve"


class DeploymentSettings(_Section):
    """Binds a route (and optionally a Host) to a response shape and the models it serves."""

    name: str = Field(..., min_length=1)
    endpoint_path: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._\-]+$",
        description="Serve POST /v1/ai/{endpoint_path}/chat/completions.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="Serve POST /v1/chat/completions for requests whose Host header is one of "
        "these (case-insensitive, with or without port as written).",
    )
    dialect: Dialect = "openai"
    models: list[str] | None = Field(
        None, description="Model ids (or aliases) this deployment serves; unset means all."
    )


def _default_models() -> list[ModelSettings]:
    return [ModelSettings(id=DEFAULT_MODEL_ID, aliases=list(DEFAULT_MODEL_ALIASES))]


def _default_engines() -> dict[str, LlamaCppEngineSettings]:
    return {"embedded": LlamaCppEngineSettings()}


def _default_deployments() -> list[DeploymentSettings]:
    return [DeploymentSettings(name="default")]


class Settings(BaseSettings):
    """Everything the server is configured with; `Settings.load` reads file + environment."""

    model_config = SettingsConfigDict(
        env_prefix="SEEKSERVE_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Static API keys (SEEKSERVE_API_KEYS, comma-separated)."
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    engines: dict[str, LlamaCppEngineSettings] = Field(default_factory=_default_engines)
    models: list[ModelSettings] = Field(default_factory=_default_models)
    deployments: list[DeploymentSettings] = Field(default_factory=_default_deployments)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @_model_validator(mode="after")
    def _check_references(self) -> Settings:
        seen: dict[str, str] = {}
        for model in self.models:
            if model.engine not in self.engines:
                raise ValueError(
                    f"model {model.id!r} uses engine {model.engine!r}, which is not in engines "
                    f"({', '.join(sorted(self.engines)) or 'none'})"
                )
            for name in (model.id, *model.aliases):
                if name in seen:
                    raise ValueError(f"model id or alias {name!r} is used twice")
                seen[name] = model.id
        endpoint_paths: set[str] = set()
        hosts: set[str] = set()
        plain_defaults = 0
        for dep in self.deployments:
            if dep.endpoint_path is not None:
                if dep.endpoint_path in endpoint_paths:
                    raise ValueError(f"endpoint_path {dep.endpoint_path!r} is used twice")
                endpoint_paths.add(dep.endpoint_path)
            for host in dep.hosts:
                if host.lower() in hosts:
                    raise ValueError(f"host {host!r} is bound to two deployments")
                hosts.add(host.lower())
            if dep.endpoint_path is None and not dep.hosts:
                plain_defaults += 1
            for name in dep.models or []:
                if name not in seen:
                    raise ValueError(f"deployment {dep.name!r} names unknown model {name!r}")
        if plain_defaults > 1:
            raise ValueError(
                "more than one deployment has neither endpoint_path nor hosts; "
                "only one can answer plain /v1/chat/completions"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the config file, which is passed in as init values.
        return (env_settings, init_settings)

    @classmethod
    def load(cls, config_path: Path | None = None, **overrides: Any) -> Settings:
        """Read the config file (if any), apply the environment, validate; SettingsError if bad."""
        data: dict[str, Any] = {}
        if config_path is not None:
            data = read_config_file(config_path)
        data.update(overrides)
        try:
            return cls(**data)
        except ValidationError as exc:
            raise SettingsError(format_validation_error(exc, config_path)) from None

    def api_key_hashes(self) -> list[bytes]:
        import hashlib

        return [hashlib.sha256(k.get_secret_value().encode()).digest() for k in self.api_keys]


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise SettingsError(f"config file {path} must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping at the top level")
    return data


def format_validation_error(exc: ValidationError, source: Path | None) -> str:
    where = f" in {source}" if source else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
