"""OpenAI / DeepSeek chat completions on the wire: the union of the three providers' requests,
their checks across fields, the adapter to the neutral ChatRequest, and the response models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from seekserve.protocol import neutral
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import ChatRequest, FunctionTool, Message, ToolChoice
from seekserve.protocol.neutral import FilePart as NeutralFile
from seekserve.protocol.neutral import TextPart as NeutralText
from seekserve.protocol.neutral import ToolCall as NeutralCall
from seekserve.protocol.validation import parse_body

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


def check_stops(value: str | list[str] | None) -> str | list[str] | None:
    """`stop` as OpenAI takes it: a string or at most 16 strings, none of them empty."""
    items = [value] if isinstance(value, str) else (value or [])
    if len(items) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, "
                         f"got {len(items)}")
    if any(s == "" for s in items):
        raise ValueError("a stop sequence cannot be empty")
    return value


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


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
        return check_stops(value)

    def stop_list(self) -> list[str]:
        return stop_list(self.stop)


# What a union field must be, said when every member of it failed.
CHAT_SHAPES = {
    "stop": "a string, an array of at most 16 strings, or null",
    "content": "a string or an array of content parts ({\"type\": \"text\"} or "
               "{\"type\": \"file\"})",
    "tool_choice": "\"none\", \"auto\", \"required\" or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}",
}


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """The body as a chat request; a 400 naming the field otherwise."""
    req = parse_body(ChatCompletionRequest, body, shapes=CHAT_SHAPES)
    check_semantics(req)
    return req


def check_semantics(req: ChatCompletionRequest) -> None:
    """Rules across fields, each reported on the exact field that breaks it."""
    last = len(req.messages) - 1
    for i, msg in enumerate(req.messages):
        at = f"messages[{i}]"
        if msg.content is None and not (msg.role == "assistant" and msg.tool_calls):
            raise InvalidRequestError(
                f"{at}.content is required (null is allowed only on an assistant message "
                "that has tool_calls)", param=f"{at}.content", code="missing_required_parameter")
        if msg.role == "tool" and not msg.tool_call_id:
            raise InvalidRequestError(f"{at} has role tool and needs tool_call_id",
                                      param=f"{at}.tool_call_id",
                                      code="missing_required_parameter")
        if msg.tool_calls is not None and msg.role != "assistant":
            raise InvalidRequestError(f"{at}.tool_calls is allowed only on an assistant message",
                                      param=f"{at}.tool_calls")
        if msg.prefix and msg.role != "assistant":
            raise InvalidRequestError(f"{at}.prefix is allowed only on an assistant message",
                                      param=f"{at}.prefix")
        if msg.prefix and i != last:
            raise InvalidRequestError(
                f"{at}.prefix: prefix completion continues the last message only; this is "
                f"message {i} of {last + 1}", param=f"{at}.prefix")
    names = [t.function.name for t in req.tools or []]
    for j, name in enumerate(names):
        if name in names[:j]:
            raise InvalidRequestError(f"tools[{j}]: the function name {name!r} is used twice",
                                      param=f"tools[{j}].function.name")
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice names function {req.tool_choice.function.name!r}, which is not in "
            "tools", param="tool_choice")
    if req.tool_choice == "required" and not names:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool in tools",
                                  param="tool_choice")
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        holder = fmt.json_schema
        if holder is None or not isinstance(holder.get("schema", {}), dict):
            raise InvalidRequestError(
                "response_format of type json_schema needs json_schema: {\"name\": ..., "
                "\"schema\": {...}}", param="response_format.json_schema")


def to_chat_request(req: ChatCompletionRequest) -> ChatRequest:
    """The wire request as the chat layer takes it."""
    thinking = req.thinking
    enabled = None if thinking is None or thinking.type is None else thinking.type == "enabled"
    choice: ToolChoice | None = None
    if isinstance(req.tool_choice, NamedToolChoice):
        choice = ToolChoice("function", req.tool_choice.function.name)
    elif req.tool_choice is not None:
        choice = ToolChoice(req.tool_choice)
    fmt = req.response_format
    return ChatRequest(
        model=req.model,
        messages=tuple(_message(i, m) for i, m in enumerate(req.messages)),
        system=req.system_instruction,
        thinking=enabled,
        effort=(thinking.reasoning_effort if thinking is not None else None)
        or req.reasoning_effort,
        max_tokens=req.max_tokens,
        response_format=(neutral.ResponseFormat(fmt.type, fmt.json_schema) if fmt is not None
                         else None),
        stop=tuple(req.stop_list()),
        temperature=req.temperature,
        top_p=req.top_p,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        tools=None if req.tools is None else tuple(
            FunctionTool(t.function.name, t.function.description, t.function.parameters,
                         t.function.strict, param=f"tools[{i}].function")
            for i, t in enumerate(req.tools)),
        tool_choice=choice,
        parallel_tool_calls=req.parallel_tool_calls,
        logprobs=bool(req.logprobs),
        top_logprobs=(req.top_logprobs or 0) if req.logprobs else 0,
        user_id=req.user_id,
        seed=req.seed,
        stream=bool(req.stream),
    )


def _message(i: int, msg: ChatMessage) -> Message:
    at = f"messages[{i}]"
    content: str | tuple[neutral.ContentPart, ...] | None
    if isinstance(msg.content, list):
        content = tuple(
            NeutralText(p.text) if isinstance(p, TextPart)
            else NeutralFile(p.file.file_id, f"{at}.content[{j}].file.file_id")
            for j, p in enumerate(msg.content))
    else:
        content = msg.content
    return Message(
        role=msg.role, content=content, name=msg.name, prefix=bool(msg.prefix),
        tool_call_id=msg.tool_call_id,
        tool_calls=tuple(NeutralCall(c.id, c.function.name, c.function.arguments)
                         for c in msg.tool_calls or ()),
        reasoning=msg.reasoning_content, param=at)


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
