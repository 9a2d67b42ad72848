"""Server settings: one YAML/TOML file plus SEEKSERVE_* environment overrides, validated."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from seekserve.protocol.chat_dialects import Dialect

DEFAULT_MODEL_ID = "deepseek-v4-pro"
DEFAULT_MODEL_ALIASES = ("MaaS_Deepseek_V4_pro_20260424",)


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
    keepalive_interval_s: float = Field(
        5.0, gt=0, description="While a request waits, a stream gets a `: keep-alive` comment "
        "and a non-streamed response an empty line this often."
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On shutdown, running requests get this long to finish; what "
        "is still running then ends with an in-band error."
    )
    max_in_flight: int = Field(
        1024, ge=1, description="Most requests this process serves at once (chat, completions "
        "and every other generating route, streams until they end); one more is refused at once "
        "with 503 server_overloaded and Retry-After, before its body is read.")
    cache_secret: SecretStr | None = Field(
        None, description="HMAC key that derives prefix-cache isolation salts from the API key "
        "and user_id (default: random per process, which is enough for an in-process cache)."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="A request line and headers must arrive within this "
        "of the connection opening (or of the request's first byte on a kept-alive "
        "connection); otherwise a 408 and the connection closes (slow clients cannot hold "
        "sockets open).")
    body_timeout_s: float = Field(
        60.0, gt=0, le=86400, description="A request body must arrive within this of its "
        "headers; otherwise a 408 and the connection closes.")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Largest request line and "
        "headers together; a larger head is a 431 and the connection closes.")

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
    grammar_cache_entries: int = Field(
        256, ge=1, description="Compiled grammars (JSON schemas, tool sets) kept per engine.")
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
    max_running: int = Field(8, ge=1, le=128, description="Sequences decoded together.")
    prefix_cache_entries: int = Field(
        32, ge=0, le=127, description="Finished sequences kept for prefix reuse (0 turns the "
        "prefix cache off); each is matched only by requests of the same key and user_id."
    )
    max_queued: int = Field(
        128, ge=1, description="Requests waiting for a sequence slot; more get 503."
    )
    max_queued_tokens: int = Field(
        65536, ge=1, description="Prompt tokens waiting in the queue; more get 503 (the default "
        "is about ten minutes of prefill on a 2-core machine)."
    )
    queue_deadline_s: float = Field(
        600.0, gt=0, description="A request not started within this many seconds gets an error."
    )
    flash_attn: bool = Field(
        True, description="llama.cpp's flash attention, which skips the cells of other "
        "sequences and cache entries in the shared KV cache: with 3,000 cached cells a decode "
        "step of 8 streams took 130 ms with it, 249 ms without; on an empty cache it is ~3% "
        "slower for a single stream."
    )
    long_prompt_tokens: int = Field(
        512, ge=1, description="While other streams are decoding, a prompt with more uncached "
        "tokens than this is prefilled a few tokens per step (see prefill_per_decode) instead "
        "of in whole chunks, so running streams keep their pace."
    )
    prefill_per_decode: float = Field(
        0.5, gt=0, description="Prompt tokens of a long prompt added to each decode step, per "
        "running stream (at least 1): 0.5 kept inter-token latency under 2x on a 2-core CPU; "
        "higher admits long prompts sooner and slows running streams more."
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template that replaces the one in the GGUF file."
    )
    gpu_layers: int | None = Field(
        None, ge=0, description="Layers offloaded to the GPU (default: all of them when "
        "llama.cpp was built with a GPU backend, none otherwise; 0 keeps the model on the CPU). "
        "/ready and the start banner say where they went."
    )
    main_gpu: int = Field(
        0, ge=0, description="The GPU, counted among the GPUs llama.cpp lists (CUDA0 is 0), "
        "that holds the model with split_mode none, or its scratch buffers with layer."
    )
    split_mode: Literal["none", "layer", "row"] = Field(
        "layer", description="With several GPUs: none keeps the model on main_gpu, layer "
        "spreads the layers across them, row splits each matrix across them."
    )

    @_model_validator(mode="after")
    def _batch_holds_a_step(self) -> LlamaCppEngineSettings:
        # Every running sequence puts one token into each decode step's batch.
        if self.max_running > self.n_batch:
            raise ValueError(f"max_running ({self.max_running}) cannot exceed n_batch "
                             f"({self.n_batch}): each step decodes one token per sequence")
        if self.max_running + self.prefix_cache_entries + 1 > 256:
            raise ValueError("max_running + prefix_cache_entries must stay under 256, "
                             "llama.cpp's limit on sequence ids")
        return self


UpstreamKind = Literal["openai", "vllm", "sglang", "llamacpp", "seekserve", "deepseek", "maas",
                       "output_text", "anthropic", "responses"]


# Upstream kinds that take token ids and a grammar (protocol `tokens`).
TOKEN_UPSTREAMS: tuple[UpstreamKind, ...] = ("vllm", "sglang", "seekserve")


class ReplicaSettings(_Section):
    """One upstream server of a remote engine."""

    base_url: str = Field(
        ..., pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="The server's root URL, "
        "e.g. http://10.0.0.5:8000 or https://api.deepseek.com (paths are added per upstream "
        "kind; a path prefix here is kept).")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Name of the environment "
        "variable that holds this replica's API key (sent as a Bearer token); the key itself "
        "never goes in the config. Unset sends no Authorization header.")
    model: str = Field(..., min_length=1, max_length=256,
                       description="The model name the upstream serves (sent as `model`).")
    endpoint_path: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._\-]+$", description="Upstream kind `maas` only: the "
        "{endpointPath} of /v1/ai/{endpointPath}/chat/completions.")


class RemoteEngineSettings(_Section):
    """An OpenAI-compatible server or hosted provider that runs the chat itself; seekserve
    translates the request and the answer, routes among replicas and keeps tenancy."""

    kind: Literal["remote"] = "remote"
    upstream: UpstreamKind = Field(
        ..., description="What the replicas speak: `openai`, `vllm`, `sglang`, `llamacpp` "
        "(llama.cpp's server or llama-cpp-python's), `seekserve`, `deepseek` (the DeepSeek "
        "API), `maas` (/v1/ai/{endpointPath}/chat/completions), `output_text` (the "
        "{\"output\": {\"text\"}} envelope), `anthropic` (the Messages API under base_url, "
        "e.g. https://api.deepseek.com/anthropic) or `responses` (OpenAI's Responses API under "
        "base_url, stateless: e.g. https://api.deepseek.com or http://host:8000/v1).")
    replicas: list[ReplicaSettings] = Field(
        ..., min_length=1, max_length=256, description="Servers that serve the same model.")
    protocol: Literal["chat", "tokens"] = Field(
        "chat", description="`chat`: requests are passed through to the upstream's chat "
        "endpoint and translated. `tokens` (upstreams vllm, sglang and seekserve): seekserve "
        "runs its own chat layer (template, thinking budget, tools, JSON mode, stop strings, "
        "logprobs) and sends the upstream token ids and llguidance grammars (vLLM's "
        "/v1/completions, SGLang's /generate), reading token ids back.")
    tokenizer: Path | None = Field(
        None, description="Protocol `tokens`: a GGUF file with the upstream model's vocabulary "
        "and chat template (a vocab-only GGUF is enough: llama.cpp's convert_hf_to_gguf.py "
        "--vocab-only). Unset: the default model's.")
    chat_template: str | None = Field(
        None, description="Protocol `tokens`: a Jinja chat template that replaces the GGUF's.")
    max_sequence_tokens: int = Field(
        32768, ge=64, description="Protocol `tokens`: the longest prompt + completion the "
        "upstream takes in one sequence (its max model length).")
    default_thinking: bool | None = Field(
        None, description="Thinking mode for a request that does not choose: true or false is "
        "sent explicitly, null leaves it to the upstream's own default.")
    connect_timeout_s: float = Field(5.0, gt=0, le=120,
                                     description="Most seconds to open a connection.")
    read_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Most seconds between two reads of an answer (the "
        "first byte included, so it bounds the upstream's queue and prefill time).")
    total_timeout_s: float = Field(
        900.0, gt=0, le=86400, description="Most seconds one upstream request may take in all.")
    retries: int = Field(
        2, ge=0, le=10, description="Further attempts (on the next replica in routing order) "
        "after a connect error, a timeout before any answer, a 5xx or a 429; never once the "
        "upstream has started answering.")
    backoff_base_s: float = Field(0.1, ge=0, le=30,
                                  description="Wait before the first retry; doubles each time.")
    backoff_max_s: float = Field(2.0, ge=0, le=60, description="Longest wait between retries "
                                 "(each wait is jittered: a random 50-100% of it).")
    health_interval_s: float = Field(
        5.0, ge=0, le=3600, description="Seconds between active health checks of each replica "
        "(0 turns them off; the circuit breaker still ejects failing replicas).")
    health_path: str | None = Field(
        None, pattern=r"^/[^\s]*$", description="GET this path for a health check; 2xx is "
        "healthy. Default per upstream kind: /health (vllm, sglang, llamacpp with /v1/models "
        "tried after a 404), /ready (seekserve), /v1/models (openai, maas, output_text, "
        "anthropic), /models (deepseek, responses).")
    health_timeout_s: float = Field(2.0, gt=0, le=60,
                                    description="Most seconds one health check may take.")
    breaker_failures: int = Field(
        3, ge=1, le=1000, description="Consecutive failures (connect errors, timeouts, 5xx) "
        "that eject a replica.")
    breaker_cooldown_s: float = Field(
        10.0, gt=0, le=3600, description="How long an ejected replica is left alone before "
        "one trial request may test it (half-open).")
    max_in_flight: int = Field(
        64, ge=1, le=100_000, description="Most requests one gateway process sends one replica "
        "at once; a user whose replica is full goes to the next one (and every replica full is "
        "a 503). Also the size of the replica's connection pool.")
    keepalive_expiry_s: float = Field(30.0, ge=0, le=3600,
                                      description="Idle pooled connections close after this.")
    default_max_tokens: int = Field(
        8192, ge=1, description="What admission reserves (rate limits, budget) for a request "
        "that sets no max_tokens; nothing is sent upstream for it, and settlement uses the "
        "upstream's real usage.")

    @_model_validator(mode="after")
    def _consistent(self) -> RemoteEngineSettings:
        for i, replica in enumerate(self.replicas):
            if (self.upstream == "maas") != (replica.endpoint_path is not None):
                raise ValueError(f"replicas[{i}].endpoint_path is required for upstream `maas` "
                                 "and allowed for no other kind")
        if len({r.base_url.rstrip("/") for r in self.replicas}) != len(self.replicas):
            raise ValueError("two replicas have the same base_url")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s cannot be less than backoff_base_s")
        if self.protocol == "tokens" and self.upstream not in TOKEN_UPSTREAMS:
            raise ValueError(f"protocol `tokens` needs an upstream that generates from token "
                             f"ids ({', '.join(TOKEN_UPSTREAMS)}), not `{self.upstream}`")
        return self


def _engine_kind(value: Any) -> str:
    # `kind` may be left out of an embedded engine's section: configs written before remote
    # engines existed stay valid.
    if isinstance(value, dict):
        return str(value.get("kind", "llamacpp"))
    return str(getattr(value, "kind", "llamacpp"))


EngineSettings = Annotated[
    Annotated[LlamaCppEngineSettings, Tag("llamacpp")]
    | Annotated[RemoteEngineSettings, Tag("remote")],
    Discriminator(_engine_kind),
]


class ModelPricing(_Section):
    """What one model's tokens cost, per million, as DeepSeek prices them (cache hits apart)."""

    input: Decimal = Field(..., ge=0, description="Price of 1M prompt tokens (cache miss).")
    cached_input: Decimal | None = Field(
        None, ge=0, description="Price of 1M prompt tokens served from the prefix cache "
        "(default: the input price).")
    output: Decimal = Field(..., ge=0, description="Price of 1M completion tokens.")
    currency: Literal["USD"] = Field("USD", description="Budgets are kept in USD.")


class ThinkingBudgets(_Section):
    """Most reasoning tokens per effort before the thinking block is forced closed."""

    low: int = Field(48, ge=1, le=65536, description="Effort low (and minimal).")
    high: int = Field(160, ge=1, le=65536, description="Effort high (the default; also "
                      "medium and xhigh).")
    max: int = Field(384, ge=1, le=65536, description="Effort max.")


class ThinkingSettings(_Section):
    """Thinking mode of one model (DeepSeek-V4 semantics)."""

    default: Literal["enabled", "disabled"] = Field(
        "enabled", description="Whether a request without `thinking.type` thinks (V4 models do).")
    default_effort: Literal["low", "high", "max"] = Field(
        "high", description="Effort of a request that names none.")
    budgets: ThinkingBudgets = Field(default_factory=ThinkingBudgets)
    temperature: float = Field(
        0.6, ge=0, le=2, description="Sampling temperature in thinking mode (the request's "
        "temperature, top_p and penalties have no effect there, as DeepSeek documents).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus mass in thinking mode.")


class ModelSettings(_Section):
    id: str = Field(..., min_length=1, description="The model id clients send.")
    aliases: list[str] = Field(default_factory=list, description="Other ids for the same model.")
    engine: str = Field("embedded", description="Name of the engine (key of `engines`).")
    owned_by: str = "seekserve"
    pricing: ModelPricing | None = Field(
        None, description="Token prices, charged to money budgets; unset means free.")
    thinking: ThinkingSettings | None = Field(
        default_factory=ThinkingSettings, description="Thinking mode; null for a model that "
        "never thinks (a request asking for it is then a 400).")


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


def _default_engines() -> dict[str, EngineSettings]:
    return {"embedded": LlamaCppEngineSettings()}


def _default_deployments() -> list[DeploymentSettings]:
    return [DeploymentSettings(name="default")]


class RateLimitSettings(_Section):
    """Per-key request, token and concurrency limits, in this process or shared through Redis."""

    backend: Literal["memory", "redis"] = Field(
        "memory", description="`memory` counts in this process; `redis` shares the counts "
        "between replicas (atomic scripts).")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for backend `redis`.")
    redis_prefix: str = Field("seekserve:rl:", description="Prefix of every Redis key written.")
    redis_timeout_s: float = Field(0.5, gt=0, le=30, description="Redis connect/command timeout.")
    on_redis_error: Literal["fail_open", "fail_closed"] = Field(
        "fail_open", description="When Redis cannot be reached: admit without limits "
        "(`fail_open`) or refuse with 503 (`fail_closed`); logged and counted either way.")
    lease_ttl_s: float = Field(
        30.0, ge=1, le=3600, description="A concurrency slot expires this long after its last "
        "renewal (renewed every third of it while the request runs), so a crashed replica's "
        "slots come back.")
    default_rpm: int | None = Field(
        None, ge=1, description="Requests per minute for a key that carries no limits.")
    default_tpm: int | None = Field(
        None, ge=1, description="Tokens per minute (prompt + max_tokens reserved, settled to "
        "the real count) for a key that carries no limits.")
    default_max_concurrency: int | None = Field(
        None, ge=1, description="Concurrent requests per key for a key that carries no limits.")
    default_user_max_concurrency: int | None = Field(
        None, ge=1, description="Concurrent requests per user_id under one key.")


class RegexRuleSettings(_Section):
    pattern: str = Field(..., min_length=1, description="A Python regular expression.")
    max_length: int = Field(
        ..., ge=1, le=4096, description="The longest text a match (lookarounds included) can "
        "span; streamed output holds back this many characters minus one.")
    ignore_case: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ModerationRuleSettings(_Section):
    words: list[str] = Field(
        default_factory=list, description="Whole words or phrases, matched case-insensitively.")
    patterns: list[RegexRuleSettings] = Field(default_factory=list)


class ClassifierSettings(_Section):
    """An OpenAI-compatible `/v1/moderations` endpoint asked about each prompt."""

    url: str = Field(..., description="Full URL of the moderations endpoint.")
    api_key: SecretStr | None = Field(None, description="Sent as a Bearer token.")
    model: str | None = Field(None, description="Sent as `model` when set.")
    timeout_s: float = Field(2.0, gt=0, le=60)
    on_error: Literal["fail_open", "fail_closed"] = Field(
        "fail_open", description="When the classifier fails or times out: allow the prompt, "
        "or refuse it with 503.")


class ModerationSettings(_Section):
    """Content safety: rule lists (global and per deployment) and an optional classifier."""

    rules: ModerationRuleSettings = Field(default_factory=ModerationRuleSettings)
    deployments: dict[str, ModerationRuleSettings] = Field(
        default_factory=dict, description="Rules added for one deployment (by name).")
    check_output: bool = Field(True, description="Also filter generated text, streamed too.")
    classifier: ClassifierSettings | None = None


class StoreSettings(_Section):
    """The shared database of keys, budgets and usage, and the local usage journal."""

    url: str | None = Field(
        None, description="SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db; "
        "unset means the SQLite file <data_dir>/seekserve.db (WAL).")
    key_cache_s: float = Field(
        2.0, ge=0, le=4, description="How long a replica trusts a managed key it looked up; a "
        "revoked or expired key is refused by every replica within this (and at most 5 s).")
    reservation_ttl_s: float = Field(
        900.0, ge=10, description="A budget reservation not settled by then (its process died) "
        "is released.")
    journal_dir: Path | None = Field(
        None, description="Where the usage journal lives (default <data_dir>/ledger).")
    flush_interval_s: float = Field(
        0.5, gt=0, le=60, description="How often journaled usage rows are written to the store.")


class FileSettings(_Section):
    """The Files API (`/v1/files`): uploads kept in the store, their text put into chats."""

    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest file one upload may carry; a larger one is "
        "refused with 413 (from Content-Length when sent, else while it streams in).")
    max_extracted_chars: int = Field(
        1_000_000, ge=1, description="Most characters of text one file may hold (a PDF's "
        "extracted text, a text file's content); a file with more is refused at upload.")
    max_request_chars: int = Field(
        2_000_000, ge=1, description="Most characters of file text one chat request may put "
        "into its prompt, all its file parts together (each message is also held to "
        "limits.max_message_chars).")
    max_files_per_owner: int | None = Field(
        None, ge=1, description="Most files one API key may keep; unset means no limit.")


class ConsoleSettings(_Section):
    """The web console at /console (playground, keys, usage, engines)."""

    enabled: bool = Field(True, description="Serve the console at /console (and redirect a "
                          "browser's GET / there); false answers 404 on those paths.")


class AnthropicSettings(_Section):
    """The Anthropic Messages API (`/anthropic/v1/messages`, `/v1/messages`)."""

    model_map: dict[str, str] | None = Field(
        None, description="Requested model name prefix -> served model id (or alias), for "
        "names that are not served models; the longest matching prefix wins. Unset means "
        "DeepSeek's table: `claude-opus` -> the first model, other `claude` names -> the "
        "second model if there is one, else the first.")

    def model_table(self, model_ids: list[str]) -> dict[str, str]:
        """The prefix table in force, given the served model ids in configured order."""
        if self.model_map is not None:
            return dict(self.model_map)
        if not model_ids:
            return {}
        return {"claude-opus": model_ids[0], "claude": model_ids[min(1, len(model_ids) - 1)]}


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
    engines: dict[str, EngineSettings] = Field(
        default_factory=_default_engines, description="Named engines: `kind: llamacpp` (the "
        "default, embedded) or `kind: remote` (an upstream server or provider).")
    models: list[ModelSettings] = Field(default_factory=_default_models)
    deployments: list[DeploymentSettings] = Field(default_factory=_default_deployments)
    store: StoreSettings = Field(default_factory=StoreSettings)
    admin_key: SecretStr | None = Field(
        None, description="Bearer key of the /admin API (SEEKSERVE_ADMIN_KEY); unset means the "
        "admin API answers 404.")
    ratelimit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)
    files: FileSettings = Field(default_factory=FileSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    anthropic: AnthropicSettings = Field(default_factory=AnthropicSettings)

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
        for prefix, name in (self.anthropic.model_map or {}).items():
            if name not in seen:
                raise ValueError(f"anthropic.model_map maps {prefix!r} to unknown model "
                                 f"{name!r}")
        for name in self.moderation.deployments:
            if name not in {dep.name for dep in self.deployments}:
                raise ValueError(f"moderation.deployments names unknown deployment {name!r}")
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
        parts = list(err["loc"])
        # An engine's kind tag is not part of the path the user wrote.
        if len(parts) > 2 and parts[0] == "engines" and parts[2] in ("llamacpp", "remote"):
            del parts[2]
        loc = ".".join(str(p) for p in parts) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
