"""Anthropic's Messages API on the wire, as DeepSeek serves it at `/anthropic`: the request
models, their checks across fields, the adapter to the neutral ChatRequest (thinking blocks
passed back are verified against the server's signature), the `message` answer, its event
stream, and errors in Anthropic's `{"type": "error", "error": {...}}` shape."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from seekserve.protocol import neutral
from seekserve.protocol.errors import (
    APIError,
    InvalidRequestError,
    ModelNotFoundError,
    ServerOverloadedError,
    UpstreamUnavailableError,
)
from seekserve.protocol.exchange import ResponseMeta, sse_event
from seekserve.protocol.neutral import (
    ChatRequest,
    CompletedChat,
    Delta,
    FieldNames,
    Finished,
    FunctionTool,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
    Usage,
)
from seekserve.protocol.openai_chat import MAX_STOP_SEQUENCES, USER_ID_PATTERN
from seekserve.protocol.signing import sign_reasoning, verify_reasoning
from seekserve.protocol.validation import parse_body

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_\-]{1,64}$"
TOOL_USE_PREFIX = "toolu_"


class _Wire(BaseModel):
    """Nested objects: unknown keys (`cache_control`, `citations`, ...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)


# ----- content blocks -----


class TextBlock(_Wire):
    type: Literal["text"] = Field(description="A text block.")
    text: str = Field(description="The text.")


class ImageBlock(_Wire):
    """Parsed so it can be refused by name: no served model reads images."""

    type: Literal["image"] = Field(description="An image (not supported).")
    source: dict[str, Any] | None = None


class TextSource(_Wire):
    type: Literal["text"] = Field(description="Plain text given inline.")
    media_type: str = Field("text/plain", description="Always text/plain.")
    data: str = Field(description="The document's text.")


class FileSource(_Wire):
    type: Literal["file"] = Field(description="A file uploaded through the Files API.")
    file_id: str = Field(min_length=1, max_length=256, description="The file's id.")


class ContentSource(_Wire):
    type: Literal["content"] = Field(description="The document as text blocks.")
    content: str | list[TextBlock] = Field(description="A string or text blocks.")


class UnsupportedSource(_Wire):
    """Sources refused by name: base64 data (PDFs) and URLs are not fetched or decoded."""

    type: Literal["base64", "url"]


DocumentSource = Annotated[TextSource | FileSource | ContentSource | UnsupportedSource,
                           Field(discriminator="type")]


class DocumentBlock(_Wire):
    type: Literal["document"] = Field(description="A document put into the prompt as text.")
    source: DocumentSource
    title: str | None = Field(None, description="Shown before the document's text.")
    context: str | None = Field(None, description="Shown before the document's text.")


class ToolUseBlock(_Wire):
    type: Literal["tool_use"] = Field(description="A call an assistant turn made.")
    id: str = Field(min_length=1, max_length=256, description="The call's id (`toolu_...`).")
    name: str = Field(min_length=1, max_length=256, description="The tool called.")
    input: dict[str, Any] = Field(description="The arguments, an object.")


ToolResultPart = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(_Wire):
    type: Literal["tool_result"] = Field(description="A tool's answer, in a user turn.")
    tool_use_id: str = Field(min_length=1, description="The tool_use block it answers.")
    content: str | list[ToolResultPart] | None = Field(
        None, description="The result: a string or text / document blocks.")
    is_error: bool | None = Field(None, description="The tool failed; content says how.")


class ThinkingBlock(_Wire):
    type: Literal["thinking"] = Field(description="Reasoning, passed back as it was received.")
    thinking: str = Field(description="The reasoning text.")
    signature: str = Field(description="This server's signature of the reasoning.")


class RedactedThinkingBlock(_Wire):
    type: Literal["redacted_thinking"] = Field(description="Opaque reasoning (dropped).")
    data: str


Block = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type")]


class MessageParam(_Wire):
    role: Literal["user", "assistant"] = Field(description="Who wrote the turn.")
    content: str | list[Block] = Field(description="A string or an array of content blocks.")


# ----- request-level settings -----


class ToolParam(_Wire):
    type: str | None = Field(None, description="`custom` (or absent); server tools are refused.")
    name: Annotated[str, StringConstraints(pattern=TOOL_NAME_PATTERN)] = Field(
        description="Tool name: a-z, A-Z, 0-9, _ and -, at most 64 characters.")
    description: str | None = Field(None, description="What the tool does.")
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema (type object) of the tool's input.")


class _ChoiceBase(_Wire):
    disable_parallel_tool_use: bool | None = Field(
        None, description="true: at most one tool_use block per answer.")


class AutoChoice(_ChoiceBase):
    type: Literal["auto"]


class AnyChoice(_ChoiceBase):
    type: Literal["any"]


class NamedChoice(_ChoiceBase):
    type: Literal["tool"]
    name: str = Field(description="The one tool to call.")


class NoneChoice(_Wire):
    type: Literal["none"]


ToolChoiceParam = Annotated[AutoChoice | AnyChoice | NamedChoice | NoneChoice,
                            Field(discriminator="type")]


class ThinkingEnabled(_Wire):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1, description="Most reasoning tokens; below max_tokens.")


class ThinkingAdaptive(_Wire):
    type: Literal["adaptive"]


class ThinkingDisabled(_Wire):
    type: Literal["disabled"]


ThinkingParam = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled,
                          Field(discriminator="type")]


class Metadata(_Wire):
    user_id: str | None = Field(
        None, max_length=256, pattern=USER_ID_PATTERN,
        description="The end user: cache isolation, per-user limits, the usage ledger.")


class MessagesRequest(BaseModel):
    """POST /anthropic/v1/messages (and /v1/messages)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="A served model id, or a claude-* name.")
    messages: list[MessageParam] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (required).")
    system: str | list[TextBlock] | None = Field(None, description="The system prompt.")
    stop_sequences: list[str] | None = Field(
        None, description="Up to 16 strings; generation ends before the first one found.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Accepted, no effect (as DeepSeek).")
    stream: bool | None = Field(None, description="Stream the answer as server-sent events.")
    tools: list[ToolParam] | None = Field(None, description="Custom tools the model may call.")
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = Field(None, description="Extended thinking switch.")
    metadata: Metadata | None = None
    # Accepted and ignored, as DeepSeek does.
    container: Any = None
    mcp_servers: Any = None
    service_tier: Any = None

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, "
                             f"got {len(value)}")
        if value is not None and any(s == "" for s in value):
            raise ValueError("a stop sequence cannot be empty")
        return value


SHAPES = {
    "content": "a string or an array of content blocks",
    "system": "a string or an array of text blocks",
}

FIELD_NAMES = FieldNames(system="system", stop="stop_sequences", thinking="thinking",
                         response_format="output_format", reasoning="content")


def parse_messages_request(body: bytes, *, count_only: bool = False) -> MessagesRequest:
    """The body as a Messages request; a 400 naming the field otherwise. `count_only`: the
    count_tokens route, where `max_tokens` is not needed."""
    req = parse_body(MessagesRequest, body, shapes=SHAPES)
    check_semantics(req, count_only=count_only)
    return req


def check_semantics(req: MessagesRequest, *, count_only: bool = False) -> None:
    """Rules across fields, each reported on the field that breaks it."""
    if req.max_tokens is None and not count_only:
        raise InvalidRequestError("max_tokens: field required", param="max_tokens",
                                  code="missing_required_parameter")
    if req.messages[0].role != "user":
        raise InvalidRequestError(
            "messages[0].role: the first message must be from the user, not "
            f"{req.messages[0].role!r}", param="messages[0].role")
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, list) and not msg.content:
            raise InvalidRequestError(
                f"messages[{i}].content: a message needs at least one content block",
                param=f"messages[{i}].content")
    names = [t.name for t in req.tools or []]
    for j, tool in enumerate(req.tools or []):
        _check_tool(j, tool, names)
    choice = req.tool_choice
    if isinstance(choice, AnyChoice | NamedChoice) and not names:
        raise InvalidRequestError(
            f"tool_choice: type {choice.type!r} needs at least one tool in tools",
            param="tool_choice")
    if isinstance(choice, NamedChoice) and choice.name not in names:
        raise InvalidRequestError(
            f"tool_choice.name: the tool {choice.name!r} is not in tools",
            param="tool_choice.name")
    thinking = req.thinking
    if (isinstance(thinking, ThinkingEnabled) and req.max_tokens is not None
            and thinking.budget_tokens >= req.max_tokens):
        raise InvalidRequestError(
            f"thinking.budget_tokens: must be less than max_tokens ({req.max_tokens}), got "
            f"{thinking.budget_tokens}", param="thinking.budget_tokens")


def _check_tool(j: int, tool: ToolParam, names: list[str]) -> None:
    at = f"tools[{j}]"
    if tool.type not in (None, "custom"):
        raise InvalidRequestError(
            f"{at}.type: server tools such as {tool.type!r} are not supported; only custom "
            "tools with an input_schema", param=f"{at}.type")
    if tool.input_schema is None:
        raise InvalidRequestError(f"{at}.input_schema: field required for a custom tool",
                                  param=f"{at}.input_schema", code="missing_required_parameter")
    if tool.input_schema.get("type") != "object":
        raise InvalidRequestError(
            f"{at}.input_schema: must be a JSON Schema of type object, not "
            f"{json.dumps(tool.input_schema.get('type'))}", param=f"{at}.input_schema")
    if tool.name in names[:j]:
        raise InvalidRequestError(f"{at}.name: the tool name {tool.name!r} is used twice",
                                  param=f"{at}.name")


# ----- the adapter to the neutral request -----


@dataclass
class _Converter:
    """Walks the messages once: Anthropic's blocks become the neutral turns (tool results
    become tool turns, thinking becomes an assistant turn's reasoning)."""

    signing_key: bytes
    out: list[neutral.Message] = field(default_factory=list)
    open_calls: set[str] = field(default_factory=set)  # tool_use ids of the last assistant turn

    def messages(self, messages: list[MessageParam]) -> tuple[neutral.Message, ...]:
        last = len(messages) - 1
        for i, msg in enumerate(messages):
            blocks: list[Any] = ([TextBlock(type="text", text=msg.content)]
                                 if isinstance(msg.content, str) else list(msg.content))
            if msg.role == "user":
                self._user(i, blocks)
            else:
                self._assistant(i, blocks, last=i == last)
        return tuple(self.out)

    def _user(self, i: int, blocks: list[Any]) -> None:
        at = f"messages[{i}]"
        parts: list[neutral.ContentPart] = []
        answered: set[str] = set()
        for j, block in enumerate(blocks):
            where = f"{at}.content[{j}]"
            if isinstance(block, ToolResultBlock):
                if block.tool_use_id not in self.open_calls:
                    raise InvalidRequestError(
                        f"{where}.tool_use_id: no tool_use block with id "
                        f"{block.tool_use_id!r} in the previous assistant message",
                        param=f"{where}.tool_use_id")
                answered.add(block.tool_use_id)
                self.out.append(neutral.Message(
                    role="tool", content=_result_text(block, where),
                    tool_call_id=block.tool_use_id, param=where))
            elif isinstance(block, TextBlock | DocumentBlock | ImageBlock):
                parts.extend(_parts(block, where))
            else:
                raise InvalidRequestError(
                    f"{where}: a {block.type} block belongs in an assistant message",
                    param=f"{where}.type")
        missing = sorted(self.open_calls - answered)
        if missing:
            raise InvalidRequestError(
                f"{at}.content: the tool_use ids {', '.join(missing)} of messages[{i - 1}] "
                "have no tool_result block here", param=f"{at}.content")
        self.open_calls = set()
        if parts:
            self.out.append(neutral.Message(role="user", content=_content(parts), param=at))

    def _assistant(self, i: int, blocks: list[Any], *, last: bool) -> None:
        at = f"messages[{i}]"
        self._require_results(i)
        text: list[str] = []
        calls: list[neutral.ToolCall] = []
        reasoning: list[str] = []
        for j, block in enumerate(blocks):
            where = f"{at}.content[{j}]"
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ToolUseBlock):
                if any(c.id == block.id for c in calls):
                    raise InvalidRequestError(
                        f"{where}.id: the tool_use id {block.id!r} is used twice",
                        param=f"{where}.id")
                calls.append(neutral.ToolCall(block.id, block.name, json.dumps(block.input)))
            elif isinstance(block, ThinkingBlock):
                if not verify_reasoning(self.signing_key, block.thinking, block.signature):
                    raise InvalidRequestError(
                        f"{where}.signature: the thinking block's signature does not match its "
                        "text; pass thinking blocks back exactly as this server sent them",
                        param=f"{where}.signature", code="invalid_signature")
                reasoning.append(block.thinking)
            elif isinstance(block, RedactedThinkingBlock):
                continue  # opaque: this server never sends one, and cannot read it
            else:
                raise InvalidRequestError(
                    f"{where}: a {block.type} block cannot be in an assistant message",
                    param=f"{where}.type")
        self.open_calls = {c.id for c in calls}
        joined = "".join(text)
        self.out.append(neutral.Message(
            role="assistant", content=joined if joined or not calls else None,
            tool_calls=tuple(calls), reasoning="\n".join(reasoning) or None,
            # A last assistant turn is a prefill: the answer continues it.
            prefix=last and not calls, param=at))

    def _require_results(self, i: int) -> None:
        """Tool calls are answered by a user turn before the next assistant turn."""
        if self.open_calls:
            raise InvalidRequestError(
                f"messages[{i}]: the tool_use ids {', '.join(sorted(self.open_calls))} of "
                f"messages[{i - 1}] need a user message with their tool_result blocks first",
                param=f"messages[{i}].role")


def _parts(block: TextBlock | DocumentBlock | ImageBlock, where: str
           ) -> list[neutral.ContentPart]:
    if isinstance(block, TextBlock):
        return [neutral.TextPart(block.text)]
    if isinstance(block, ImageBlock):
        raise InvalidRequestError(
            f"{where}: image blocks are not supported; no model served here reads images",
            param=f"{where}.type", code="unsupported_content")
    head = "\n\n".join(x for x in (block.title, block.context) if x)
    lead = [neutral.TextPart(head + "\n\n")] if head else []
    source = block.source
    if isinstance(source, TextSource):
        return [*lead, neutral.TextPart(source.data)]
    if isinstance(source, FileSource):
        return [*lead, neutral.FilePart(source.file_id, f"{where}.source.file_id")]
    if isinstance(source, ContentSource):
        text = (source.content if isinstance(source.content, str)
                else "\n".join(b.text for b in source.content))
        return [*lead, neutral.TextPart(text)]
    raise InvalidRequestError(
        f"{where}.source.type: {source.type!r} documents are not supported; send the text "
        "(source type `text`) or upload the file to /v1/files and send source type `file`",
        param=f"{where}.source.type", code="unsupported_content")


def _content(parts: list[neutral.ContentPart]) -> str | tuple[neutral.ContentPart, ...]:
    if all(isinstance(p, neutral.TextPart) for p in parts):
        return "\n".join(p.text for p in parts if isinstance(p, neutral.TextPart))
    return tuple(parts)


def _result_text(block: ToolResultBlock, where: str) -> str | tuple[neutral.ContentPart, ...]:
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
        return f"Error: {text}" if block.is_error else text
    parts: list[neutral.ContentPart] = []
    for k, part in enumerate(content):
        parts.extend(_parts(part, f"{where}.content[{k}]"))
    joined = _content(parts)
    if not block.is_error:
        return joined
    if isinstance(joined, str):
        return f"Error: {joined}"
    return (neutral.TextPart("Error: "), *joined)


CHOICE_MODES: dict[str, ToolChoiceMode] = {
    "auto": "auto", "any": "required", "tool": "function", "none": "none"}


def to_chat_request(req: MessagesRequest, *, signing_key: bytes, model: str) -> ChatRequest:
    """The wire request as the chat layer takes it; `model` is the served model's name (a
    claude-* name already mapped)."""
    messages = _Converter(signing_key).messages(req.messages)
    system = req.system
    if isinstance(system, list):
        system = "\n".join(b.text for b in system)
    choice: ToolChoice | None = None
    parallel: bool | None = None
    tc = req.tool_choice
    if tc is not None:
        choice = ToolChoice(CHOICE_MODES[tc.type], tc.name if isinstance(tc, NamedChoice) else None)
        if not isinstance(tc, NoneChoice) and tc.disable_parallel_tool_use:
            parallel = False
    thinking = req.thinking
    return ChatRequest(
        model=model,
        messages=messages,
        system=system or None,
        thinking=None if thinking is None else not isinstance(thinking, ThinkingDisabled),
        thinking_budget=(thinking.budget_tokens if isinstance(thinking, ThinkingEnabled)
                         else None),
        max_tokens=req.max_tokens,
        stop=tuple(req.stop_sequences or ()),
        temperature=req.temperature,
        top_p=req.top_p,
        tools=None if req.tools is None else tuple(
            FunctionTool(t.name, t.description, t.input_schema, param=f"tools[{i}]")
            for i, t in enumerate(req.tools)),
        tool_choice=choice,
        parallel_tool_calls=parallel,
        user_id=req.metadata.user_id if req.metadata is not None else None,
        stream=bool(req.stream),
        fields=FIELD_NAMES,
    )


# ----- answers -----


def tool_use_id(call_id: str) -> str:
    """Anthropic's `toolu_` id of a call the chat layer named (`call_...`)."""
    if call_id.startswith(TOOL_USE_PREFIX):
        return call_id
    return TOOL_USE_PREFIX + call_id.removeprefix("call_")


def stop_reason(finish: Finished, stops: tuple[str, ...]) -> tuple[StopReason, str | None]:
    """(stop_reason, stop_sequence) of a finished answer."""
    reason = finish.finish_reason
    if reason == "stop":
        if finish.matched_stop is not None and finish.matched_stop in stops:
            return "stop_sequence", finish.matched_stop
        return "end_turn", None
    if reason == "tool_calls":
        return "tool_use", None
    if reason == "content_filter":
        return "refusal", None
    return "max_tokens", None  # length, or the engine ran out of room for the sequence


def usage_body(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: input_tokens are the prompt tokens not read from the cache, so
    input_tokens + cache_read_input_tokens is the whole prompt."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class MessageWriter:
    """One answer as Anthropic's `message`, whole or as its event stream."""

    meta: ResponseMeta
    signing_key: bytes
    stops: tuple[str, ...]

    def _message(self, content: list[dict[str, Any]], reason: str | None, sequence: str | None,
                 usage: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.meta.id, "type": "message", "role": "assistant",
                "model": self.meta.model, "content": content, "stop_reason": reason,
                "stop_sequence": sequence, "usage": usage}

    def answer(self, result: CompletedChat) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if result.reasoning_content:
            content.append({"type": "thinking", "thinking": result.reasoning_content,
                            "signature": sign_reasoning(self.signing_key,
                                                        result.reasoning_content)})
        if result.content or not (content or result.tool_calls):
            content.append({"type": "text", "text": result.content})
        for call in result.tool_calls or []:
            content.append({"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
                            "input": _input(call.arguments)})
        reason, sequence = stop_reason(result.finish, self.stops)
        return self._message(content, reason, sequence, usage_body(result.finish.usage))

    async def events(self, items: AsyncIterator[Delta | Finished]) -> AsyncGenerator[bytes, None]:
        prompt = len(self.meta.prompt_ids or ())
        start_usage = {"input_tokens": prompt, "output_tokens": 0,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        yield _event("message_start",
                     {"message": self._message([], None, None, start_usage)})
        blocks = _Blocks(self.signing_key)
        async for item in items:
            if isinstance(item, Delta):
                for chunk in blocks.feed(item):
                    yield chunk
                continue
            for chunk in blocks.finish():
                yield chunk
            reason, sequence = stop_reason(item, self.stops)
            yield _event("message_delta", {
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage_body(item.usage)})
            yield _event("message_stop", {})


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return sse_event({"type": kind, **payload}, event=kind)


class _Blocks:
    """The content blocks of a stream, opened and closed as the kind of output changes:
    thinking (closed with its signature), text, and one tool_use per call."""

    def __init__(self, signing_key: bytes) -> None:
        self._key = signing_key
        self._index = -1
        self._kind: str | None = None
        self._thinking: list[str] = []

    def feed(self, delta: Delta) -> list[bytes]:
        out: list[bytes] = []
        if delta.reasoning:
            out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._thinking.append(delta.reasoning)
            out.append(self._delta({"type": "thinking_delta", "thinking": delta.reasoning}))
        if delta.text:
            out += self._open("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": delta.text}))
        for piece in delta.tool_calls or []:
            out += self._tool_piece(piece)
        return out

    def _tool_piece(self, piece: ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        if piece.id is not None:
            out += self._open("tool_use", {"type": "tool_use", "id": tool_use_id(piece.id),
                                           "name": piece.name or "", "input": {}}, new=True)
        if piece.arguments:
            out.append(self._delta({"type": "input_json_delta",
                                    "partial_json": piece.arguments}))
        return out

    def _open(self, kind: str, block: dict[str, Any], *, new: bool = False) -> list[bytes]:
        if self._kind == kind and not new:
            return []
        out = self.close()
        self._index += 1
        self._kind = kind
        out.append(_event("content_block_start", {"index": self._index, "content_block": block}))
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"index": self._index, "delta": delta})

    def finish(self) -> list[bytes]:
        """Close the open block; an answer with no output at all has one empty text block,
        as the whole message has."""
        if self._index == -1:
            return [*self._open("text", {"type": "text", "text": ""}), *self.close()]
        return self.close()

    def close(self) -> list[bytes]:
        if self._kind is None:
            return []
        out = []
        if self._kind == "thinking":
            signature = sign_reasoning(self._key, "".join(self._thinking))
            self._thinking = []
            out.append(self._delta({"type": "signature_delta", "signature": signature}))
        out.append(_event("content_block_stop", {"index": self._index}))
        self._kind = None
        return out


# ----- errors -----


class ErrorDetail(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    message: str = Field(description="What went wrong, naming the field.")


class ErrorBody(BaseModel):
    """Anthropic's error body (documented in the OpenAPI description)."""

    type: Literal["error"] = "error"
    error: ErrorDetail


# Anthropic's error type of each status it uses.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
OVERLOADED = 529


def anthropic_error(exc: APIError) -> tuple[int, dict[str, Any]]:
    """The status and `{"type": "error", "error": {type, message}}` body of an error; the
    message names the field (Anthropic's errors carry no `param`)."""
    status = exc.status_code
    if isinstance(exc, ModelNotFoundError):
        status = 400  # DeepSeek: an unknown model name is a 400
    elif isinstance(exc, ServerOverloadedError | UpstreamUnavailableError):
        status = OVERLOADED
    message = exc.message
    if exc.param and exc.param not in message:
        message = f"{exc.param}: {message}"
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return status, {"type": "error", "error": {"type": kind, "message": message}}


# ----- the adapter -----

PING = _event("ping", {})


class MessagesProtocol:
    """Anthropic's Messages API (implements protocol.exchange.WireProtocol). `model_name`
    maps a requested model to a served one (the claude-* table); `signing_key` signs and
    checks thinking blocks."""

    id_prefix = "msg_"
    keepalive = PING

    def __init__(self, *, signing_key: bytes, model_name: Callable[[str], str] = str,
                 count_only: bool = False) -> None:
        self._key = signing_key
        self._model_name = model_name
        self._count_only = count_only

    def parse(self, body: bytes) -> MessagesRequest:
        return parse_messages_request(body, count_only=self._count_only)

    def neutral(self, wire: MessagesRequest) -> ChatRequest:
        return to_chat_request(wire, signing_key=self._key, model=self._model_name(wire.model))

    def streams(self, wire: MessagesRequest) -> bool:
        return bool(wire.stream)

    def writer(self, wire: MessagesRequest, meta: ResponseMeta) -> MessageWriter:
        return MessageWriter(meta, self._key, tuple(wire.stop_sequences or ()))

    def error(self, exc: APIError) -> tuple[int, dict[str, Any]]:
        return anthropic_error(exc)

    def error_event(self, exc: APIError) -> bytes:
        return _event("error", {"error": anthropic_error(exc)[1]["error"]})
