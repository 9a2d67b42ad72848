"""OpenAI's Responses API on the wire, stateless as DeepSeek serves it: the request (`input` as
a string or items, `instructions`, function tools, `text.format`, `reasoning`), its checks, the
adapter to the neutral ChatRequest, and the protocol object the request pipeline drives (the
answer and its events are written by protocol.responses_output).

Nothing is stored: `store: true`, `previous_response_id`, `conversation`, `background: true`
and item references are 400s that say to send the whole conversation in `input` instead.
ReasoningConfig items handed out carry a signature (`encrypted_content`); one passed back must carry
it unchanged, so the model only ever continues its own reasoning.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
)

from seekserve.protocol import neutral
from seekserve.protocol.errors import APIError, InvalidRequestError
from seekserve.protocol.exchange import OpenAIErrors, ResponseMeta
from seekserve.protocol.neutral import ChatRequest, FieldNames, Message, ToolCall
from seekserve.protocol.openai_chat import (
    MAX_TOP_LOGPROBS,
    REASONING_EFFORTS,
    USER_ID_PATTERN,
    Thinking,
    check_stops,
    stop_list,
)
from seekserve.protocol.responses_output import ResponsesWriter, error_event
from seekserve.protocol.signing import sign_reasoning, verify_reasoning
from seekserve.protocol.validation import parse_body

# `none` turns reasoning off (OpenAI's newest effort); the rest map as chat's efforts do.
RESPONSE_EFFORTS = ("none", *REASONING_EFFORTS)
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_USER_CHARS = 512
# How a signed reasoning blob starts: the scheme and its version.
REASONING_BLOB_PREFIX = "ssr1."

RESPONSES_FIELDS = FieldNames(
    model="model", messages="input", system="instructions", max_tokens="max_output_tokens",
    stop="stop", tools="tools", tool_choice="tool_choice", thinking="reasoning.effort",
    response_format="text.format", reasoning="reasoning")

# Tool types of OpenAI's hosted tools: named in the 400, as this server runs none of them.
BUILT_IN_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26",
                  "web_search_preview_2025_03_11", "file_search", "computer_use_preview",
                  "computer_use", "code_interpreter", "image_generation", "mcp", "local_shell",
                  "shell", "apply_patch", "custom")
# Input item types that only make sense against stored state or hosted tools.
STATEFUL_ITEMS = ("item_reference",)
SUPPORTED_ITEMS = ("message", "function_call", "function_call_output", "reasoning")


class _Wire(BaseModel):
    """Nested objects: unknown keys are ignored (the top-level request logs them)."""

    model_config = ConfigDict(extra="ignore", strict=True)


# ----- content parts -----


class InputTextPart(_Wire):
    type: Literal["input_text"] = Field(description="Text given to the model.")
    text: str = Field(description="The text.")


class InputFilePart(_Wire):
    type: Literal["input_file"] = Field(description="An uploaded file, put in as its text.")
    file_id: str | None = Field(None, min_length=1, max_length=256,
                                description="Id of a file uploaded to /v1/files.")
    file_data: str | None = Field(None, description="Not supported: upload the file instead.")
    file_url: str | None = Field(None, description="Not supported: upload the file instead.")
    filename: str | None = Field(None, description="The file's name (informational).")


class OutputTextPart(_Wire):
    type: Literal["output_text"] = Field(description="Text an assistant turn produced.")
    text: str = Field(description="The text.")


class RefusalPart(_Wire):
    type: Literal["refusal"] = Field(description="A refusal an assistant turn produced.")
    refusal: str = Field(description="The refusal text.")


ContentPart = Annotated[InputTextPart | InputFilePart | OutputTextPart | RefusalPart,
                        Field(discriminator="type")]


# ----- input items -----


class MessageItem(_Wire):
    type: Literal["message"] = Field("message", description="A message (the default type).")
    role: Literal["user", "system", "developer", "assistant"] = Field(description="Author.")
    content: str | list[ContentPart] = Field(description="Text, or an array of parts.")


class FunctionCallItem(_Wire):
    type: Literal["function_call"] = Field(description="A tool call an earlier answer made.")
    call_id: str = Field(min_length=1, max_length=256, description="The call's id.")
    name: str = Field(min_length=1, description="The function called.")
    arguments: str = Field(description="Its arguments, as JSON text.")


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"] = Field(description="The result of a tool call.")
    call_id: str = Field(min_length=1, max_length=256, description="The call it answers.")
    output: str | list[InputTextPart] = Field(description="The result, as text or text parts.")


class SummaryText(_Wire):
    type: Literal["summary_text"] = Field(description="A summary of reasoning.")
    text: str


class ReasoningText(_Wire):
    type: Literal["reasoning_text"] = Field(description="ReasoningConfig, as the model wrote it.")
    text: str


class ReasoningItem(_Wire):
    type: Literal["reasoning"] = Field(description="Reasoning of an earlier answer, passed back.")
    id: str | None = Field(None, description="The item's id, as handed out.")
    summary: list[SummaryText] = Field(default_factory=list, description="Ignored.")
    content: list[ReasoningText] | None = Field(None, description="The reasoning text.")
    encrypted_content: str | None = Field(
        None, description="The signed reasoning, as handed out: required, checked unchanged.")


def _item_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "message")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_kind),
]


# ----- tools, formats, reasoning -----


class ResponsesFunctionTool(_Wire):
    type: Literal["function"] = Field(description="Only function tools are supported.")
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")] = Field(
        description="Function name: a-z, A-Z, 0-9, _ and -, at most 64 characters.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(None, description="Arguments match the schema exactly.")


class FunctionToolChoice(_Wire):
    type: Literal["function"]
    name: str = Field(min_length=1)


class ResponsesTextFormat(_Wire):
    type: Literal["text", "json_object", "json_schema"] = Field(
        description="`json_object`: any JSON object; `json_schema`: one matching `schema`.")
    name: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")] | None = Field(
        None, description="The schema's name (json_schema).")
    json_schema: dict[str, Any] | None = Field(None, alias="schema",
                                               description="The JSON Schema (json_schema).")
    description: str | None = None
    strict: bool | None = Field(None, description="Answers always match the schema here.")


class ResponsesTextConfig(_Wire):
    format: ResponsesTextFormat | None = Field(None, description="Plain text (default) or JSON.")
    verbosity: Literal["low", "medium", "high"] | None = Field(
        None, description="Accepted; no effect.")


class ReasoningConfig(_Wire):
    effort: str | None = Field(
        None, description="none (reasoning off), minimal, low, medium, high, xhigh or max.")
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="Accepted; reasoning is returned whole, the summary stays empty.")
    generate_summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="The deprecated name of `summary`.")

    @field_validator("effort")
    @classmethod
    def _effort(cls, value: str | None) -> str | None:
        if value is not None and value not in RESPONSE_EFFORTS:
            raise ValueError(f"must be one of {', '.join(RESPONSE_EFFORTS)}")
        return value


class ResponsesRequest(BaseModel):
    """POST /v1/responses: the fields DeepSeek's stateless Responses API takes."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="Model id or alias.")
    input: str | list[InputItem] = Field(description="Text, or the conversation as items.")
    instructions: str | None = Field(None, description="A system message put first.")
    tools: list[ResponsesFunctionTool] | None = Field(
        None, description="Functions the model may call.")
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = Field(None, description="false: at most one call.")
    text: ResponsesTextConfig | None = None
    reasoning: ReasoningConfig | None = None
    thinking: Thinking | None = Field(None, description="DeepSeek's thinking switch.")
    max_output_tokens: int | None = Field(None, ge=1, description="Most tokens to generate, "
                                          "reasoning included.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(None, description="Up to 16 stop strings.")
    seed: int | None = Field(None, description="Same seed, same output (same batch).")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="Accepted; log-probabilities are not returned.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="No effect.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="No effect.")
    user: str | None = Field(None, min_length=1, max_length=MAX_USER_CHARS,
                             description="End-user id (OpenAI's older name).")
    safety_identifier: str | None = Field(None, min_length=1, max_length=MAX_USER_CHARS,
                                          description="End-user id.")
    user_id: str | None = Field(None, max_length=MAX_USER_CHARS, pattern=USER_ID_PATTERN,
                                description="End-user id (DeepSeek's name).")
    metadata: dict[str, str] | None = Field(None, description="Echoed in the response.")
    stream: bool | None = Field(None, description="Stream semantic events over SSE.")
    store: bool | None = Field(None, description="Only false: nothing is stored.")
    background: bool | None = Field(None, description="Only false.")
    previous_response_id: str | None = Field(None, description="Refused: send the input.")
    include: list[str] | None = Field(None, description="Accepted; reasoning items always "
                                      "carry encrypted_content.")
    truncation: Literal["auto", "disabled"] | None = Field(
        None, description="Nothing is dropped: an input over the context is a 400.")
    service_tier: str | None = None
    prompt_cache_key: str | None = Field(None, description="Accepted; the prompt cache is "
                                         "keyed by API key and user.")
    max_tool_calls: int | None = Field(None, ge=1, description="1 allows one call.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        return check_stops(value)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs are allowed, got {len(value)}")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY:
                raise ValueError(f"key {key[:20]!r}... is longer than {MAX_METADATA_KEY} "
                                 "characters")
            if len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"the value of {key!r} is longer than {MAX_METADATA_VALUE} "
                                 "characters")
        return value

    def end_user(self) -> str | None:
        """The end user: DeepSeek's user_id, else safety_identifier, else user."""
        return self.user_id or self.safety_identifier or self.user

    def effort(self) -> str | None:
        return self.reasoning.effort if self.reasoning is not None else None


# What a union field must be, said when every member of it failed.
RESPONSES_SHAPES = {
    "input": "a string or an array of input items",
    "content": "a string or an array of content parts (input_text, input_file, output_text)",
    "output": "a string or an array of input_text parts",
    "stop": "a string, an array of at most 16 strings, or null",
    "tool_choice": "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": ...}",
}


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """The body as a Responses request; a 400 naming the field otherwise."""
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raw = None  # parse_body says what is wrong with it
    if isinstance(raw, dict):
        check_stateless(raw)
        check_kinds(raw)
    req = parse_body(ResponsesRequest, body, shapes=RESPONSES_SHAPES)
    check_semantics(req)
    return req


_RESEND = ("This server is stateless and keeps no responses: send the whole conversation in "
           "`input` on every request (the earlier input items, then the output items of the "
           "earlier responses, then the new turn)")


def check_stateless(raw: dict[str, Any]) -> None:
    """The fields that need server-side state, each a 400 saying what to send instead."""
    if raw.get("store") is True:
        raise InvalidRequestError(f"store: true is not supported. {_RESEND}, and leave `store` "
                                  "out or set it to false.", param="store",
                                  code="unsupported_parameter")
    for field in ("previous_response_id", "conversation"):
        if raw.get(field) is not None:
            raise InvalidRequestError(f"{field} is not supported. {_RESEND}, instead of "
                                      f"`{field}`.", param=field, code="unsupported_parameter")
    if raw.get("background") is True:
        raise InvalidRequestError(
            "background: true is not supported: this server is stateless, so a response "
            "cannot be fetched later. Leave `background` out (or false) and wait for the "
            "answer, or send stream: true to see it as it is made.", param="background",
            code="unsupported_parameter")
    if raw.get("prompt") is not None:
        raise InvalidRequestError(
            "prompt (a stored prompt template) is not supported: this server stores no "
            "prompts. Send the text as `instructions` and `input`.", param="prompt",
            code="unsupported_parameter")


def check_kinds(raw: dict[str, Any]) -> None:
    """Item, part and tool types this server knows of but does not serve, each named."""
    items = raw.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind in STATEFUL_ITEMS:
            raise InvalidRequestError(
                f"input[{i}] is an item_reference, which needs stored items. {_RESEND}, "
                "with each item written out in full.", param=f"input[{i}].type",
                code="unsupported_parameter")
        if isinstance(kind, str) and kind not in SUPPORTED_ITEMS:
            raise InvalidRequestError(
                f"input[{i}] has type {kind!r}, which this server does not serve; input items "
                f"may be {', '.join(SUPPORTED_ITEMS)}.", param=f"input[{i}].type",
                code="unsupported_parameter")
        parts = item.get("content") if isinstance(item, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            if isinstance(part, dict) and part.get("type") == "input_image":
                raise InvalidRequestError(
                    f"input[{i}].content[{j}] is an image; the served models read text only.",
                    param=f"input[{i}].content[{j}].type", code="unsupported_parameter")
    tools = raw.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "function":
            what = "built-in tool" if kind in BUILT_IN_TOOLS else "tool type"
            raise InvalidRequestError(
                f"tools[{i}]: the {what} {kind!r} is not supported by this server; only "
                "function tools ({\"type\": \"function\", \"name\", \"parameters\"}) are.",
                param=f"tools[{i}].type", code="unsupported_parameter")


def check_semantics(req: ResponsesRequest) -> None:
    """Rules across fields, each reported on the field that breaks it."""
    if isinstance(req.input, list):
        if not req.input:
            raise InvalidRequestError("input is an empty array; send at least one item.",
                                      param="input")
        _check_items(req.input)
    names = [t.name for t in req.tools or []]
    for j, name in enumerate(names):
        if name in names[:j]:
            raise InvalidRequestError(f"tools[{j}]: the function name {name!r} is used twice",
                                      param=f"tools[{j}].name")
    if isinstance(req.tool_choice, FunctionToolChoice) and req.tool_choice.name not in names:
        raise InvalidRequestError(
            f"tool_choice names function {req.tool_choice.name!r}, which is not in tools",
            param="tool_choice.name")
    if req.tool_choice == "required" and not names:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool in tools",
                                  param="tool_choice")
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.name is None:
            raise InvalidRequestError("text.format of type json_schema needs a name",
                                      param="text.format.name",
                                      code="missing_required_parameter")
        if fmt.json_schema is None:
            raise InvalidRequestError("text.format of type json_schema needs a schema",
                                      param="text.format.schema",
                                      code="missing_required_parameter")


def _check_items(items: list[Any]) -> None:
    calls: set[str] = set()
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem) and item.call_id not in calls:
            raise InvalidRequestError(
                f"{at}.call_id {item.call_id!r} answers no function_call item before it; "
                "send the function_call item (as the earlier response gave it) first.",
                param=f"{at}.call_id")
        elif isinstance(item, MessageItem) and isinstance(item.content, list):
            for j, part in enumerate(item.content):
                _check_part(item.role, part, f"{at}.content[{j}]")
        elif isinstance(item, ReasoningItem) and item.encrypted_content is None:
            raise InvalidRequestError(
                f"{at} is a reasoning item without encrypted_content: pass reasoning items "
                "back exactly as a response gave them.", param=f"{at}.encrypted_content",
                code="missing_required_parameter")


def _check_part(role: str, part: Any, at: str) -> None:
    assistant = role == "assistant"
    if isinstance(part, (OutputTextPart, RefusalPart)) and not assistant:
        raise InvalidRequestError(f"{at}: {part.type} parts belong to assistant messages; "
                                  f"a {role} message has input_text parts.", param=f"{at}.type")
    if isinstance(part, (InputTextPart, InputFilePart)) and assistant:
        raise InvalidRequestError(f"{at}: an assistant message has output_text parts, not "
                                  f"{part.type}.", param=f"{at}.type")
    if isinstance(part, InputFilePart):
        for unsupported in ("file_data", "file_url"):
            if getattr(part, unsupported) is not None:
                raise InvalidRequestError(
                    f"{at}.{unsupported} is not supported: upload the file to /v1/files and "
                    "send its file_id.", param=f"{at}.{unsupported}",
                    code="unsupported_parameter")
        if part.file_id is None:
            raise InvalidRequestError(f"{at} needs a file_id (of a file uploaded to "
                                      "/v1/files).", param=f"{at}.file_id",
                                      code="missing_required_parameter")


# ----- signed reasoning -----


def seal_reasoning(key: bytes, text: str) -> str:
    """The `encrypted_content` of a reasoning item: the text and its signature. It is signed,
    not secret: the same text is in the item's `content`."""
    body = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    return f"{REASONING_BLOB_PREFIX}{body}.{sign_reasoning(key, text)}"


def open_reasoning(key: bytes, blob: str, param: str) -> str:
    """The reasoning text sealed in `blob`; a 400 naming `param` when it is not this server's
    own, unchanged."""
    refused = InvalidRequestError(
        f"{param} is not a reasoning signature of this server, or the reasoning was changed: "
        "pass reasoning items back exactly as a response gave them.", param=param,
        code="invalid_reasoning_signature")
    if not blob.startswith(REASONING_BLOB_PREFIX):
        raise refused
    body, _, signature = blob[len(REASONING_BLOB_PREFIX):].partition(".")
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused from None
    if not verify_reasoning(key, text, signature):
        raise refused
    return text


# ----- to the neutral request -----


class _Turns:
    """Input items folded into chat turns: reasoning, assistant text and function calls that
    follow one another are one assistant turn."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.messages: list[Message] = []
        self._reasoning: str | None = None
        self._text: list[str] = []
        self._calls: list[ToolCall] = []
        self._param: str | None = None

    def add(self, i: int, item: Any) -> None:
        at = f"input[{i}]"
        if isinstance(item, ReasoningItem):
            if self._reasoning is not None or self._text or self._calls:
                self.flush()
            self._reasoning = self._reasoning_text(item, at)
            self._param = self._param or at
        elif isinstance(item, FunctionCallItem):
            self._calls.append(ToolCall(item.call_id, item.name, item.arguments))
            self._param = self._param or at
        elif isinstance(item, MessageItem) and item.role == "assistant":
            if self._calls:
                self.flush()
            self._text.append(_text_of(item.content))
            self._param = self._param or at
        else:
            self.flush()
            self.messages.append(_message(at, item))

    def _reasoning_text(self, item: ReasoningItem, at: str) -> str:
        assert item.encrypted_content is not None  # checked with the request
        text = open_reasoning(self.key, item.encrypted_content, f"{at}.encrypted_content")
        if item.content is not None and "".join(p.text for p in item.content) != text:
            raise InvalidRequestError(
                f"{at}.content differs from the reasoning its encrypted_content signs: pass "
                "reasoning items back unchanged.", param=f"{at}.content",
                code="invalid_reasoning_signature")
        return text

    def flush(self) -> None:
        if self._param is None:
            return
        text = "".join(self._text)
        self.messages.append(Message(
            role="assistant", content=text if text or not self._calls else None,
            tool_calls=tuple(self._calls), reasoning=self._reasoning, param=self._param))
        self._reasoning, self._text, self._calls, self._param = None, [], [], None


def _text_of(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text if isinstance(p, (InputTextPart, OutputTextPart)) else p.refusal
                   for p in content if not isinstance(p, InputFilePart))


def _message(at: str, item: Any) -> Message:
    if isinstance(item, FunctionCallOutputItem):
        output = item.output if isinstance(item.output, str) else "".join(
            p.text for p in item.output)
        return Message(role="tool", content=output, tool_call_id=item.call_id, param=at)
    assert isinstance(item, MessageItem)
    role: neutral.Role = "system" if item.role == "developer" else item.role
    if isinstance(item.content, str):
        return Message(role=role, content=item.content, param=at)
    parts = tuple(
        neutral.FilePart(p.file_id, f"{at}.content[{j}].file_id")
        if isinstance(p, InputFilePart) and p.file_id is not None
        else neutral.TextPart(_text_of([p]))
        for j, p in enumerate(item.content))
    return Message(role=role, content=parts, param=at)


def to_chat_request(req: ResponsesRequest, key: bytes) -> ChatRequest:
    """The wire request as the chat layer takes it; reasoning passed back is checked against
    `key`, the server's reasoning signing key."""
    if isinstance(req.input, str):
        messages: tuple[Message, ...] = (Message(role="user", content=req.input,
                                                 param="input"),)
    else:
        turns = _Turns(key)
        for i, item in enumerate(req.input):
            turns.add(i, item)
        turns.flush()
        messages = tuple(turns.messages)
    choice: neutral.ToolChoice | None = None
    if isinstance(req.tool_choice, FunctionToolChoice):
        choice = neutral.ToolChoice("function", req.tool_choice.name)
    elif req.tool_choice is not None:
        choice = neutral.ToolChoice(req.tool_choice)
    fmt = req.text.format if req.text is not None else None
    return ChatRequest(
        model=req.model,
        messages=messages,
        system=req.instructions,
        thinking=_thinking(req),
        effort=(effort if (effort := req.effort()) not in (None, "none") else None)
        or (req.thinking.reasoning_effort if req.thinking is not None else None),
        max_tokens=req.max_output_tokens,
        response_format=None if fmt is None else neutral.ResponseFormat(
            fmt.type, {"name": fmt.name, "schema": fmt.json_schema, "strict": fmt.strict}
            if fmt.type == "json_schema" else None),
        stop=tuple(stop_list(req.stop)),
        temperature=req.temperature,
        top_p=req.top_p,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        tools=None if req.tools is None else tuple(
            neutral.FunctionTool(t.name, t.description, t.parameters, t.strict,
                                 param=f"tools[{i}]")
            for i, t in enumerate(req.tools)),
        tool_choice=choice,
        parallel_tool_calls=False if req.max_tool_calls == 1 else req.parallel_tool_calls,
        user_id=req.end_user(),
        seed=req.seed,
        stream=bool(req.stream),
        fields=RESPONSES_FIELDS,
    )


def _thinking(req: ResponsesRequest) -> bool | None:
    """`reasoning.effort` asks for reasoning (`none` turns it off); DeepSeek's `thinking`
    switch also works; neither: the model's default."""
    effort = req.effort()
    if effort is not None:
        return effort != "none"
    if req.thinking is not None and req.thinking.type is not None:
        return req.thinking.type == "enabled"
    return None


class ResponsesProtocol(OpenAIErrors):
    """The Responses adapter (implements protocol.exchange.WireProtocol). One per request: its
    writer numbers every event, the in-band error included."""

    id_prefix = "resp_"

    def __init__(self, signing_key: bytes) -> None:
        self.key = signing_key
        self._writer: ResponsesWriter | None = None

    def parse(self, body: bytes) -> ResponsesRequest:
        return parse_responses_request(body)

    def neutral(self, wire: ResponsesRequest) -> ChatRequest:
        return to_chat_request(wire, self.key)

    def streams(self, wire: ResponsesRequest) -> bool:
        return bool(wire.stream)

    def writer(self, wire: ResponsesRequest, meta: ResponseMeta) -> ResponsesWriter:
        self._writer = ResponsesWriter(echo_of(wire), meta,
                                       lambda text: seal_reasoning(self.key, text))
        return self._writer

    def error_event(self, exc: APIError) -> bytes:
        """The `error` event, numbered after the stream's last event."""
        sequence = self._writer.next_sequence() if self._writer is not None else 0
        return error_event(exc, sequence)


def echo_of(req: ResponsesRequest) -> dict[str, Any]:
    """The request's settings as the response object repeats them."""
    fmt = req.text.format if req.text is not None else None
    format_body: dict[str, Any] = {"type": "text"}
    if fmt is not None:
        format_body = {"type": fmt.type}
        if fmt.type == "json_schema":
            format_body.update(name=fmt.name, schema=fmt.json_schema,
                               strict=fmt.strict, description=fmt.description)
    choice: Any = req.tool_choice or "auto"
    if isinstance(choice, FunctionToolChoice):
        choice = {"type": "function", "name": choice.name}
    reasoning = req.reasoning
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "reasoning": {"effort": reasoning.effort if reasoning else None,
                      "summary": (reasoning.summary or reasoning.generate_summary)
                      if reasoning else None},
        "safety_identifier": req.safety_identifier,
        "temperature": req.temperature,
        "text": {"format": format_body,
                 "verbosity": (req.text.verbosity if req.text else None) or "medium"},
        "tool_choice": choice,
        "tools": [{"type": "function", "name": t.name, "description": t.description,
                   "parameters": t.parameters, "strict": t.strict} for t in req.tools or []],
        "top_logprobs": req.top_logprobs,
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "user": req.user,
        "prompt_cache_key": req.prompt_cache_key,
    }
