"""OpenAI's legacy text completions on the wire (`/v1/completions`, DeepSeek's FIM on
`/beta/completions`), with vLLM's token-level extensions: the request, its adapter to the
neutral TextCompletionRequest, and the `text_completion` answer and chunks."""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import from_json

from seekserve.protocol.chat_dialects import usage_body
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.exchange import (
    DONE,
    OpenAIErrors,
    ResponseMeta,
    sse_event,
)
from seekserve.protocol.neutral import (
    CompletedChat,
    CompletionGrammar,
    Delta,
    Finished,
    TextCompletionRequest,
)
from seekserve.protocol.openai_chat import (
    MAX_TOP_LOGPROBS,
    USER_ID_PATTERN,
    StreamOptions,
    Usage,
    check_stops,
    stop_list,
)
from seekserve.protocol.validation import parse_body

# DeepSeek caps FIM completion at 4K tokens; the same endpoint serves plain completions.
MAX_COMPLETION_TOKENS = 4096
MAX_CACHE_SALT_CHARS = 256


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: what the whole completion must match. One of `grammar` and
    `json`; vLLM's other kinds (`regex`, `choice`, `structural_tag`, ...) are refused."""

    model_config = ConfigDict(extra="allow", strict=True)

    grammar: str | None = Field(
        None, description="An llguidance Lark grammar (a first line `%llguidance {}` is fine).")
    json_schema: dict[str, Any] | str | None = Field(
        None, alias="json", description="A JSON Schema, as an object or a JSON string of one.")

    def grammar_asked(self) -> CompletionGrammar:
        """The grammar asked for; raises InvalidRequestError (400) naming the field."""
        if self.grammar is not None:
            return CompletionGrammar("structured_outputs.grammar", lark=self.grammar)
        param = "structured_outputs.json"
        schema: Any = self.json_schema
        if isinstance(schema, str):
            try:
                # pydantic's parser, as for the body: nesting past its limit is a ValueError
                # (the json module's parser would raise RecursionError).
                schema = from_json(schema)
            except ValueError as exc:
                raise InvalidRequestError(f"{param} is a string that is not JSON: {exc}",
                                          param=param) from None
        if not isinstance(schema, dict):
            raise InvalidRequestError(f"{param} must be a JSON Schema object", param=param)
        return CompletionGrammar(param, json_schema=schema)


class CompletionRequest(BaseModel):
    """POST /beta/completions (DeepSeek's FIM completion) and /v1/completions (OpenAI's legacy
    completions): one prompt, an optional suffix to fill up to."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="Model id or alias.")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="The text to continue (the part before the gap with `suffix`); an array "
        "may hold one string. Or token ids (an array, or an array of one array), used as "
        "given: no BOS is added.")
    suffix: str | None = Field(
        None, description="The text after the gap: the model fills in between prompt and "
        "suffix (fill-in-the-middle). Null or empty: a plain completion of prompt.")
    echo: bool | None = Field(
        None, description="Put the prompt (never the suffix) before the generated text.")
    max_tokens: int | None = Field(
        None, ge=1,
        description=f"Most tokens to generate (at most {MAX_COMPLETION_TOKENS} for a text "
        "prompt, as DeepSeek caps FIM; for token ids, what the context leaves); default: "
        f"{MAX_COMPLETION_TOKENS}, or what the context leaves.")
    stop: str | list[str] | None = Field(
        None, description="Up to 16 strings; generation ends before the first one found.")
    stream: bool | None = Field(None, description="Stream text_completion chunks over SSE.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling mass.")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Return the log-probability of each "
        "generated token and of this many most likely alternatives.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted, no effect.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted, no effect.")
    n: int | None = Field(None, description="Completions per prompt: only 1 is supported.")
    best_of: int | None = Field(None, description="Only 1 is supported.")
    user_id: str | None = Field(
        None, max_length=512, pattern=USER_ID_PATTERN, description="End-user id for isolation.")
    user: str | None = Field(
        None, max_length=512, pattern=USER_ID_PATTERN,
        description="The same as user_id (the OpenAI SDK's name for it).")
    seed: int | None = Field(None, description="Same seed, same output (for the same batch).")
    # vLLM's extensions (its /v1/completions takes the same names).
    return_token_ids: bool | None = Field(
        None, description="Also return token ids: the generated ones as `choices[0].token_ids` "
        "(streamed: those since the previous chunk) and the prompt's as `prompt_token_ids` "
        "(streamed: in the first chunk).")
    structured_outputs: StructuredOutputs | None = Field(
        None, description="Constrain the whole completion to a grammar or a JSON Schema.")
    include_stop_str_in_output: bool | None = Field(
        None, description="Keep the matched stop string (or stop token) at the end of the text.")
    min_tokens: int | None = Field(
        None, ge=0, description="End-of-generation is banned until this many tokens were "
        "generated.")
    ignore_eos: bool | None = Field(
        None, description="Never end on end-of-generation: generate max_tokens tokens (or "
        "up to a stop).")
    stop_token_ids: list[int] | None = Field(
        None, description="Token ids that end the completion once generated (finish_reason "
        "`stop`, `stop_reason` the id); their text is left out unless "
        "include_stop_str_in_output.")
    return_tokens_as_token_ids: bool | None = Field(
        None, description="With logprobs, each token is written `token_id:<id>` instead of "
        "its text.")
    cache_salt: str | None = Field(
        None, min_length=1, max_length=MAX_CACHE_SALT_CHARS,
        description="Prompt-cache isolation: only requests with the same salt (and the same "
        "API key and user) share cached prompt prefixes.")
    skip_special_tokens: bool | None = Field(
        None, description="Only false is supported: special tokens are written in the text.")
    add_special_tokens: bool | None = Field(
        None, description="False: no BOS token before a text prompt.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int] | list[list[int]]
                    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("must be a string, an array of one string, or a non-empty array "
                             "of token ids")
        if not isinstance(value[0], int) and len(value) != 1:
            raise ValueError(
                "must be a string, an array of one string, or token ids; a batch of "
                f"{len(value)} prompts is not supported (send one request per prompt)")
        if isinstance(value[0], list) and not value[0]:
            raise ValueError("an array of token ids cannot be empty")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        return check_stops(value)

    @field_validator("n", "best_of")
    @classmethod
    def _only_one(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError(f"only 1 is supported, got {value}")
        return value

    def one_prompt(self) -> str | list[int]:
        """The prompt: its text, or its token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        first = self.prompt[0]
        if isinstance(first, int):
            return cast("list[int]", self.prompt)
        return first

    def end_user(self) -> str | None:
        return self.user_id if self.user_id is not None else self.user

    def stop_list(self) -> list[str]:
        return stop_list(self.stop)

    def neutral(self) -> TextCompletionRequest:
        """The request as the chat layer takes it."""
        return TextCompletionRequest(
            model=self.model, prompt=self.one_prompt(), suffix=self.suffix or None,
            max_tokens=self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed, logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0, stops=self.stop_list(),
            user_id=self.end_user(), add_special=self.add_special_tokens is not False,
            grammar=self.structured_outputs.grammar_asked() if self.structured_outputs else None,
            min_tokens=self.min_tokens or 0, ignore_eos=bool(self.ignore_eos),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            include_stop=bool(self.include_stop_str_in_output),
            want_token_ids=bool(self.return_token_ids), cache_salt=self.cache_salt)

    def reports_stop_reason(self) -> bool:
        """Choices carry vLLM's `stop_reason` (asked for by its token-level fields)."""
        return bool(self.return_token_ids) or self.stop_token_ids is not None


def parse_completion_request(body: bytes) -> CompletionRequest:
    req = parse_body(CompletionRequest, body)
    if req.user_id is not None and req.user is not None and req.user_id != req.user:
        raise InvalidRequestError("user and user_id name the same thing and differ here; send "
                                  "one of them", param="user")
    if req.echo and req.logprobs is not None:
        # OpenAI's echo with logprobs scores the prompt's tokens too, which no engine here does.
        raise InvalidRequestError(
            "echo cannot be combined with logprobs: the prompt's tokens have no "
            "log-probabilities here; ask for one or the other", param="echo")
    _check_token_fields(req)
    return req


def _check_token_fields(req: CompletionRequest) -> None:
    """What vLLM's extensions need beyond their types."""
    text = isinstance(req.one_prompt(), str)
    if text and req.max_tokens is not None and req.max_tokens > MAX_COMPLETION_TOKENS:
        raise InvalidRequestError(
            f"Invalid value for max_tokens: at most {MAX_COMPLETION_TOKENS} with a text prompt, "
            f"got {req.max_tokens}", param="max_tokens")
    if req.skip_special_tokens:
        raise InvalidRequestError(
            "skip_special_tokens: only false is supported; special tokens are written in the "
            "text as they are.", param="skip_special_tokens")
    outputs = req.structured_outputs
    if outputs is not None:
        # vLLM's other kinds, and its options; null or false is the same as absent.
        others = sorted(k for k, v in (outputs.model_extra or {}).items()
                        if v is not None and v is not False)
        if others:
            raise InvalidRequestError(
                f"structured_outputs: {', '.join(others)} is not supported; send `grammar` (an "
                "llguidance Lark grammar) or `json` (a JSON Schema).",
                param="structured_outputs")
        if (outputs.grammar is None) == (outputs.json_schema is None):
            raise InvalidRequestError(
                "structured_outputs needs exactly one of `grammar` (an llguidance Lark "
                "grammar) and `json` (a JSON Schema).", param="structured_outputs")


# ----- responses (documented in the OpenAPI description; built as dicts on the hot path) -----


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(description="The generated tokens' text.")
    token_logprobs: list[float] = Field(description="The log-probability of each token.")
    top_logprobs: list[dict[str, float]] = Field(
        description="Per token: the most likely alternatives and the token itself.")
    text_offset: list[int] = Field(description="Where each token starts in `text`.")


class CompletionChoice(BaseModel):
    index: int
    text: str = Field(description="The generated text (after the prompt with `echo`).")
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "content_filter",
                           "insufficient_system_resource"] | None
    matched_stop: str | None = Field(None, description="The stop string that ended it.")
    stop_reason: str | int | None = Field(
        None, description="vLLM's: the stop string or stop token id that ended it (with "
        "`return_token_ids` or `stop_token_ids`).")
    token_ids: list[int] | None = Field(
        None, description="The generated token ids (with `return_token_ids`).")
    prompt_token_ids: list[int] | None = Field(
        None, description="The prompt's token ids as the engine got them (with "
        "`return_token_ids`; streamed: in the first chunk).")


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice] = Field(description="One choice; empty in a usage chunk.")
    usage: Usage | None
    system_fingerprint: str | None


class CompletionsProtocol(OpenAIErrors):
    """The text completions adapter (implements protocol.exchange.WireProtocol)."""

    id_prefix = "cmpl-"

    def parse(self, body: bytes) -> CompletionRequest:
        return parse_completion_request(body)

    def neutral(self, wire: CompletionRequest) -> TextCompletionRequest:
        return wire.neutral()

    def streams(self, wire: CompletionRequest) -> bool:
        return bool(wire.stream)

    def writer(self, wire: CompletionRequest, meta: ResponseMeta) -> CompletionWriter:
        return CompletionWriter(
            meta,
            include_usage=bool(wire.stream_options and wire.stream_options.include_usage),
            echo=meta.prompt_text if wire.echo else "",
            token_ids=bool(wire.return_token_ids),
            token_names=bool(wire.return_tokens_as_token_ids),
            stop_reason=wire.reports_stop_reason())



@dataclass(frozen=True)
class CompletionWriter:
    """The `text_completion` body and chunks of one answer."""

    meta: ResponseMeta
    include_usage: bool
    echo: str  # the prompt, written before the completion (echo)
    token_ids: bool = False  # return_token_ids
    token_names: bool = False  # return_tokens_as_token_ids
    stop_reason: bool = False

    def _body(self, choices: list[dict[str, Any]], **usage: dict[str, Any] | None
              ) -> dict[str, Any]:
        """A whole answer or one chunk; `usage` is given as a keyword where the body has it."""
        meta = self.meta
        return {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": choices,
            **usage,
            "system_fingerprint": meta.system_fingerprint,
        }

    def _choice(self, text: str, logprobs: dict[str, Any] | None, finish: Finished | None,
                token_ids: list[int] | None = None,
                prompt_token_ids: list[int] | None = None) -> dict[str, Any]:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish.finish_reason if finish is not None else None,
            "matched_stop": finish.matched_stop if finish is not None else None,
        }
        if self.stop_reason:
            choice["stop_reason"] = _stop_reason(finish)
        if self.token_ids:
            choice["token_ids"] = token_ids or []
            if prompt_token_ids is not None:
                choice["prompt_token_ids"] = prompt_token_ids
        return choice

    def answer(self, result: CompletedChat) -> dict[str, Any]:
        logprobs = (LegacyLogprobs(len(self.echo), token_ids=self.token_names)
                    .convert(result.logprobs) if result.logprobs is not None else None)
        choice = self._choice(self.echo + result.content, logprobs, result.finish,
                              result.token_ids, self.meta.prompt_ids)
        return self._body([choice], usage=usage_body(result.finish.usage))

    async def events(self, items: AsyncIterator[Delta | Finished]) -> AsyncGenerator[bytes, None]:
        # Without include_usage no chunk carries `usage`; with it every chunk does, null until
        # the last (as OpenAI streams it).
        no_usage: dict[str, None] = {"usage": None} if self.include_usage else {}
        # The prompt's token ids go in the first chunk (with return_token_ids).
        prompt_ids = self.meta.prompt_ids

        def chunk(text: str, logprobs: dict[str, Any] | None, finish: Finished | None,
                  token_ids: list[int] | None = None) -> bytes:
            nonlocal prompt_ids
            choice = self._choice(text, logprobs, finish, token_ids, prompt_ids)
            prompt_ids = None
            return sse_event(self._body([choice], **no_usage))

        offsets = LegacyLogprobs(len(self.echo), token_ids=self.token_names)
        if self.echo:
            yield chunk(self.echo, None, None)
        async for item in items:
            if isinstance(item, Delta):
                if not item.text and not item.logprobs and not item.token_ids:
                    continue
                logprobs = offsets.convert(item.logprobs) if item.logprobs is not None else None
                yield chunk(item.text, logprobs, None, item.token_ids)
            else:
                yield chunk("", None, item)
                if self.include_usage:
                    yield sse_event(self._body([], usage=usage_body(item.usage)))
        yield DONE


def _stop_reason(finish: Finished | None) -> str | int | None:
    if finish is None:
        return None
    return finish.matched_stop if finish.matched_stop is not None else finish.stop_token


class LegacyLogprobs:
    """Turns the chat pipeline's log-probability entries into the legacy completions shape
    (`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob}, `text_offset`), keeping
    the text offsets of one completion across the pieces it streams in. With `token_ids`
    every token is written `token_id:<id>` (vLLM's return_tokens_as_token_ids)."""

    def __init__(self, start: int = 0, *, token_ids: bool = False) -> None:
        self._offset = start
        self._token_ids = token_ids
        # Offsets count characters of the text as the client sees it, which decodes the bytes
        # of all tokens together (a character may span tokens).
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def convert(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float] = []
        top_logprobs: list[dict[str, float]] = []
        text_offset: list[int] = []
        for entry in entries:
            text_offset.append(self._offset)
            raw = entry.get("bytes")
            data = bytes(raw) if raw is not None else str(entry["token"]).encode()
            self._offset += len(self._decoder.decode(data))
            token = self._name(entry)
            tokens.append(token)
            token_logprobs.append(entry["logprob"])
            alternatives: dict[str, float] = {}
            for alt in entry.get("top_logprobs", []):
                alternatives.setdefault(self._name(alt), alt["logprob"])
            # The sampled token is always listed (so up to logprobs + 1 entries), as OpenAI's.
            alternatives.setdefault(token, entry["logprob"])
            top_logprobs.append(alternatives)
        return {"tokens": tokens, "token_logprobs": token_logprobs,
                "top_logprobs": top_logprobs, "text_offset": text_offset}

    def _name(self, entry: dict[str, Any]) -> str:
        return f"token_id:{entry['id']}" if self._token_ids else str(entry["token"])
