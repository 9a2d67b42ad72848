"""The protocol-neutral chat and text-completion requests every wire adapter produces, and the
events (Delta, Finished, Usage) and whole answers every chat backend returns.

Each field is what the chat layer needs, not what one wire format says; where a request goes
wrong the chat layer names the field as the client sent it (`param` of a message, a tool, a
file part; `FieldNames` for request-level settings), so a 400 reads in the caller's terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "insufficient_system_resource", "content_filter",
                       "tool_calls"]
ToolChoiceMode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class FilePart:
    """An uploaded file to put in the prompt as text; `param` is where the client named it."""

    file_id: str
    param: str


ContentPart = TextPart | FilePart


@dataclass(frozen=True)
class ToolCall:
    """A call an assistant turn made: its id, the function and the arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    role: Role
    # Text, or parts (text and files); None only on an assistant turn that called tools.
    content: str | tuple[ContentPart, ...] | None = None
    name: str | None = None
    prefix: bool = False  # the last assistant turn, to be continued (prefix completion)
    tool_call_id: str | None = None  # a tool turn: the call it answers
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None  # an assistant turn's reasoning, passed back
    param: str = "messages"  # where the client wrote this message, e.g. `messages[2]`

    def text(self) -> str:
        """The text: a string as is, text parts joined (file parts are made text before)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def file_parts(self) -> list[FilePart]:
        if not isinstance(self.content, tuple):
            return []
        return [p for p in self.content if isinstance(p, FilePart)]


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of type object
    strict: bool | None = None
    param: str = "tools"  # where the client wrote it, e.g. `tools[1].function`


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None  # mode `function`: the one function to call


@dataclass(frozen=True)
class ResponseFormat:
    """JSON mode: `json_object` (any object) or `json_schema` (the holder as sent, with its
    `schema`, `name`, `strict`)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @property
    def schema(self) -> dict[str, Any] | None:
        """The schema the answer must match, or None for plain text."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            found = (self.json_schema or {}).get("schema")
            return found if isinstance(found, dict) and found else {"type": "object"}
        return None


@dataclass(frozen=True)
class FieldNames:
    """Request-level fields as the client's wire format names them (for 400s)."""

    model: str = "model"
    messages: str = "messages"
    system: str = "system_instruction"
    max_tokens: str = "max_tokens"
    stop: str = "stop"
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    thinking: str = "thinking.type"
    response_format: str = "response_format"
    reasoning: str = "reasoning_content"  # after a message's param: where its reasoning goes


@dataclass(frozen=True)
class ChatRequest:
    """One chat request, whatever API family it came in."""

    model: str
    messages: tuple[Message, ...]
    system: str | None = None  # a leading system turn given apart from the messages
    thinking: bool | None = None  # on / off; None: the model's default
    effort: str | None = None  # as requested: minimal, low, medium, high, xhigh, max
    thinking_budget: int | None = None  # the most reasoning tokens, when the client says
    max_tokens: int | None = None
    response_format: ResponseFormat | None = None
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: tuple[FunctionTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    user_id: str | None = None
    seed: int | None = None
    stream: bool = False
    fields: FieldNames = field(default_factory=FieldNames)

    @property
    def continues_prefix(self) -> bool:
        """The last message is an assistant turn to be continued (prefix completion)."""
        last = self.messages[-1]
        return last.role == "assistant" and last.prefix

    def prompt_texts(self) -> list[str]:
        """Everything of the prompt a content filter reads."""
        texts = [self.system] if self.system else []
        for message in self.messages:
            texts.append(message.text())
            if message.reasoning:
                texts.append(message.reasoning)
        return texts


@dataclass(frozen=True)
class CompletionGrammar:
    """What the whole completion must match: an llguidance Lark grammar or a JSON Schema, and
    the request field it came from (named when it does not compile)."""

    param: str
    lark: str | None = None
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class TextCompletionRequest:
    """A text completion (plain, fill-in-the-middle or token ids) as the chat layer needs it."""

    model: str
    # Text, or token ids used as given (no BOS added, nothing re-tokenized).
    prompt: str | list[int]
    # None: a plain completion of `prompt`; a string: fill in between prompt and suffix.
    suffix: str | None
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stops: list[str] = field(default_factory=list)
    user_id: str | None = None
    # BOS before a text prompt where the model adds one (vLLM's add_special_tokens).
    add_special: bool = True
    grammar: CompletionGrammar | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    include_stop: bool = False  # the matched stop string (or stop token) stays in the text
    want_token_ids: bool = False
    cache_salt: str | None = None  # the client's own split of its prompt cache

    def prompt_texts(self, prompt_text: str) -> list[str]:
        """What a content filter reads, given the prompt's text (token ids decoded)."""
        return [prompt_text, *([self.suffix] if self.suffix else [])]


# A request any backend takes.
NeutralRequest = ChatRequest | TextCompletionRequest


# ----- what a backend answers -----


@dataclass
class ToolCallDelta:
    """A piece of one tool call: its first piece carries id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """Output safe to show now: answer text, reasoning text, tool-call pieces, and the
    log-probabilities of the tokens that produced them; with token-level output, the ids of
    the tokens generated since the last delta (their text may be held back)."""

    text: str = ""
    logprobs: list[dict[str, Any]] | None = None
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    token_ids: list[int] | None = None

    def shows_anything(self) -> bool:
        return bool(self.text or self.reasoning or self.tool_calls or self.logprobs
                    or self.token_ids)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Finished:
    finish_reason: FinishReason
    matched_stop: str | None
    usage: Usage
    # The stop token id (of the request's stop_token_ids) that ended the sequence.
    stop_token: int | None = None


@dataclass
class CompletedChat:
    """A whole non-streamed answer."""

    content: str
    finish: Finished
    logprobs: list[dict[str, Any]] | None = field(default=None)
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    token_ids: list[int] | None = None  # with token-level output
