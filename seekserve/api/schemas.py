"""The wire contract: the union of the three providers' chat completion requests, and responses."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")
MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
USER_ID_PATTERN = r"^[a-zA-Z0-9\-_]+$"


class _Wire(BaseModel):
    """Nested objects: unknown keys are ignored (the top-level request logs them)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Wire):
    type: Literal["text"] = Field(description="A text part.")
    text: str = Field(description="The text.")


class FileRef(_Wire):
    file_id: str = Field(min_length=1, max_length=256, description="Id of an uploaded file.")


class FilePart(_Wire):
    type: Literal["file"] = Field(description="A file part (third seed).")
    file: FileRef = Field(description="The file to put in the prompt.")


ContentPart = Annotated[TextPart | FilePart, Field(discriminator="type")]


class FunctionCall(_Wire):
    name: str = Field(description="Name of the function called.")
    arguments: str = Field(description="Arguments as a JSON string.")


class ToolCall(_Wire):
    id: str = Field(description="The call id, echoed by the tool message that answers it.")
    type: Literal["function"] = Field("function", description="Always `function`.")
    function: FunctionCall


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool"] = Field(description="Author role.")
    content: str | list[ContentPart] | None = Field(
        None, description="Text, or an array of `text` / `file` parts."
    )
    name: str | None = Field(None, max_length=256, description="Participant name.")
    prefix: bool | None = Field(
        None, description="On the last assistant message: continue this text (prefix completion)."
    )
    tool_call_id: str | None = Field(None, description="For role `tool`: the call answered.")
    tool_calls: list[ToolCall] | None = Field(None, description="Calls an assistant turn made.")
    reasoning_content: str | None = Field(None, description="An assistant turn's reasoning.")

    def text(self) -> str:
        """The message's text: a string as is, text parts joined (file parts resolve later)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class Thinking(_Wire):
    type: Literal["enabled", "disabled"] | None = Field(
        None, description="`enabled` turns thinking mode on."
    )
    reasoning_effort: str | None = Field(
        None, description="low, medium, high, max (also minimal, xhigh as DeepSeek maps them)."
    )

    @field_validator("reasoning_effort")
    @classmethod
    def _effort(cls, value: str | None) -> str | None:
        return _check_effort(value)


def _check_effort(value: str | None) -> str | None:
    if value is not None and value not in REASONING_EFFORTS:
        raise ValueError(f"must be one of {', '.join(REASONING_EFFORTS)}")
    return value


class ResponseFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"] = Field(
        "text", description="`json_object` turns JSON mode on; `json_schema` needs json_schema."
    )
    json_schema: dict[str, Any] | None = Field(None, description="OpenAI-style schema holder.")


class StreamOptions(_Wire):
    include_usage: bool | None = Field(None, description="Send a usage chunk before [DONE].")


class FunctionDef(_Wire):
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")] = Field(
        description="Function name: a-z, A-Z, 0-9, _ and -, at most 64 characters."
    )
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(None, description="Enforce the schema exactly.")


class Tool(_Wire):
    type: Literal["function"] = Field(description="Only `function` is supported.")
    function: FunctionDef


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions: every field of the three seed documents."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="Model id or alias.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    system_instruction: str | None = Field(
        None, description="Becomes the leading system message (second seed)."
    )
    thinking: Thinking | None = Field(None, description="Thinking mode switch and effort.")
    reasoning_effort: str | None = Field(None, description="Effort, as the third seed sends it.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = Field(
        None, description="Up to 16 strings; generation ends before the first one found."
    )
    stream: bool | None = Field(None, description="Stream chat.completion.chunk events over SSE.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling mass.")
    tools: list[Tool] | None = Field(None, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(
        None, description="false: at most one tool call per answer (OpenAI's field).")
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Accepted, no effect (deprecated by DeepSeek)."
    )
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Accepted, no effect (deprecated by DeepSeek)."
    )
    logprobs: bool | None = Field(None, description="Return log-probabilities of output tokens.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Alternatives per token (needs logprobs)."
    )
    user_id: str | None = Field(
        None, max_length=512, pattern=USER_ID_PATTERN, description="End-user id for isolation."
    )
    seed: int | None = Field(None, description="Same seed, same output (for the same batch).")

    @field_validator("reasoning_effort")
    @classmethod
    def _effort(cls, value: str | None) -> str | None:
        return _check_effort(value)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, "
                             f"got {len(items)}")
        if any(s == "" for s in items):
            raise ValueError("a stop sequence cannot be empty")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


# ----- responses (documented in the OpenAPI description; built as dicts on the hot path) -----


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: (
        Literal["stop", "length", "content_filter", "tool_calls", "insufficient_system_resource"]
        | None
    )
    matched_stop: str | None = None
    native_finish_reason: str | None = Field(None, description="MaaS_DeepSeek shape only.")


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None


class OutputText(BaseModel):
    text: str | None


class OutputEnvelope(BaseModel):
    """The second seed's simplified response shape."""

    output: OutputText


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
