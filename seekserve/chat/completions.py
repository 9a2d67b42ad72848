"""Text completions on the chat pipeline: a raw, token-id or fill-in-the-middle prompt as a
PreparedChat (with vLLM's grammar and ending rules as its constraint), and the legacy
completions shape of log-probabilities."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from seekserve.chat.endings import EndingRules
from seekserve.chat.service import PreparedChat
from seekserve.chat.structured import AnswerRule, GrammarCompiler, GrammarError, SequenceConstraint
from seekserve.engines.base import (
    Engine,
    GenerationRequest,
    SamplingParams,
    TokenConstraint,
    Tokenizer,
)
from seekserve.errors import InvalidRequestError
from seekserve.registry import ServedModel
from seekserve.settings import LimitSettings

# DeepSeek caps FIM completion at 4K tokens; the same endpoint serves plain completions.
MAX_COMPLETION_TOKENS = 4096

# (prefix, suffix, middle) markers of the FIM formats we know, tried in order; a model uses one
# only when all three are special tokens of its vocabulary.
FIM_MARKERS: tuple[tuple[str, str, str], ...] = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, CodeGemma
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
)


@dataclass(frozen=True)
class FimTokens:
    """The token ids that frame a fill-in-the-middle prompt (prefix-suffix-middle order)."""

    prefix: int
    suffix: int
    middle: int


def _special_token(tokenizer: Tokenizer, marker: str) -> int | None:
    """The id of `marker` when it is one special token; None when it is ordinary text."""
    ids = tokenizer.encode(marker, add_special=False, parse_special=True)
    if len(ids) != 1 or tokenizer.piece(ids[0]) != marker.encode():
        return None
    # A vocabulary may hold the marker as an ordinary word, which the model never saw as FIM.
    if tokenizer.encode(marker, add_special=False, parse_special=False) == ids:
        return None
    return ids[0]


def fim_tokens(tokenizer: Tokenizer) -> FimTokens | None:
    """The model's FIM tokens, or None when its vocabulary has no complete set."""
    for markers in FIM_MARKERS:
        prefix, suffix, middle = (_special_token(tokenizer, m) for m in markers)
        if prefix is not None and suffix is not None and middle is not None:
            return FimTokens(prefix, suffix, middle)
    return None


@dataclass(frozen=True)
class CompletionGrammar:
    """An llguidance Lark grammar the whole completion matches, and the request field it came
    from (named when it does not compile)."""

    lark: str
    param: str


@dataclass(frozen=True)
class TextCompletionRequest:
    """A text completion as the chat layer needs it, whatever the wire said."""

    # Text, or token ids used as given (no BOS added, nothing re-tokenized).
    prompt: str | list[int]
    # None: a plain completion of `prompt`; a string: fill in between prompt and suffix.
    suffix: str | None
    max_tokens: int | None
    sampling: SamplingParams = field(default_factory=SamplingParams)
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


def decode_prompt(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The text of a token-id prompt (what echo shows and moderation reads). Raises
    InvalidRequestError (400) for an id outside the vocabulary."""
    _check_token_ids(ids, tokenizer, param="prompt")
    return b"".join(tokenizer.piece(t) for t in ids).decode("utf-8", errors="replace")


def prepare_completion(req: TextCompletionRequest, model: ServedModel, engine: Engine,
                       limits: LimitSettings, *, request_id: str, cache_salt: bytes = b"",
                       compiler: GrammarCompiler | None = None) -> PreparedChat:
    """Check `req` against the limits and the context, encode its prompt (raw, or framed by the
    model's FIM tokens; token ids as given), build its constraint (`compiler` compiles its
    grammar) and bind it to `engine`. Raises InvalidRequestError (400)."""
    _check_limits(req, limits)
    tokenizer = engine.tokenizer
    if isinstance(req.prompt, list):
        if req.suffix is not None:
            raise InvalidRequestError(
                "suffix cannot be combined with a prompt of token ids: fill-in-the-middle "
                "frames text; send the prompt as text, or the ids without suffix.",
                param="suffix")
        prompt = list(req.prompt)
        _check_token_ids(prompt, tokenizer, param="prompt")
    elif req.suffix is None:
        prompt = _encode_plain(req.prompt, tokenizer, add_bos=req.add_special)
    else:
        prompt = _encode_fim(req.prompt, req.suffix, model, tokenizer, add_bos=req.add_special)
    _check_token_ids(req.stop_token_ids, tokenizer, param="stop_token_ids")
    limit = engine.max_sequence_tokens
    if len(prompt) >= limit:
        raise InvalidRequestError(
            f"This model's maximum context length is {limit} tokens, but the prompt has "
            f"{len(prompt)} tokens.", param="prompt", code="context_length_exceeded")
    if req.max_tokens is None:
        max_tokens = min(MAX_COMPLETION_TOKENS, limit - len(prompt))
    else:
        max_tokens = req.max_tokens
    if len(prompt) + max_tokens > limit:
        raise InvalidRequestError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the prompt, {max_tokens} in "
            f"max_tokens). Reduce the length of the prompt or max_tokens.",
            param="max_tokens", code="context_length_exceeded")
    if req.min_tokens > max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({req.min_tokens}) is more than max_tokens ({max_tokens}).",
            param="min_tokens")
    constraint = _constraint(req, tokenizer, compiler, max_tokens)
    generation = GenerationRequest(request_id=request_id, prompt=prompt, max_tokens=max_tokens,
                                   sampling=req.sampling, cache_salt=cache_salt,
                                   constraint=constraint)
    return PreparedChat(None, model, engine, generation, list(req.stops), user_id=req.user_id,
                        want_token_ids=req.want_token_ids, include_stop=req.include_stop,
                        stop_tokens=frozenset(req.stop_token_ids))


def _check_token_ids(ids: Sequence[int], tokenizer: Tokenizer, *, param: str) -> None:
    size = tokenizer.vocab_size
    bad = next((t for t in ids if not 0 <= t < size), None)
    if bad is not None:
        raise InvalidRequestError(
            f"{param} holds the token id {bad}; this model's token ids are 0 <= id < {size} "
            "(its vocabulary size).", param=param)


def _constraint(req: TextCompletionRequest, tokenizer: Tokenizer,
                compiler: GrammarCompiler | None, max_tokens: int) -> TokenConstraint | None:
    """The grammar of the whole completion and the ending rules, or None when it is free."""
    grammar: SequenceConstraint | None = None
    if req.grammar is not None:
        param = req.grammar.param
        if compiler is None:
            raise InvalidRequestError(
                "This model's engine cannot constrain its output, which structured_outputs "
                "needs.", param=param.split(".")[0])
        try:
            compiler.matcher(req.grammar.lark)  # compiled (and cached) now: a bad one is a 400
        except GrammarError as exc:
            raise InvalidRequestError(f"{param} cannot be used: {exc}", param=param) from None
        rule = AnswerRule(mode="grammar", lark=req.grammar.lark, whole=req.grammar.lark)
        grammar = SequenceConstraint(think=None, answer=rule, compiler=compiler,
                                     piece=tokenizer.piece, end_tokens=tokenizer.end_tokens(),
                                     max_tokens=max_tokens)
    if not (req.min_tokens or req.ignore_eos or req.stop_token_ids):
        return grammar
    return EndingRules(grammar, end_tokens=tokenizer.end_tokens(), max_tokens=max_tokens,
                       min_tokens=req.min_tokens, ignore_eos=req.ignore_eos,
                       stop_tokens=req.stop_token_ids)


def _check_limits(req: TextCompletionRequest, limits: LimitSettings) -> None:
    texts = [("prompt", req.prompt)] if isinstance(req.prompt, str) else []
    if req.suffix is not None:
        texts.append(("suffix", req.suffix))
    for param, text in texts:
        if len(text) > limits.max_message_chars:
            raise InvalidRequestError(
                f"{param} has {len(text)} characters; the limit is {limits.max_message_chars}",
                param=param, code="message_too_long")
    for stop in req.stops:
        if len(stop) > limits.max_stop_chars:
            raise InvalidRequestError(
                f"a stop sequence is longer than {limits.max_stop_chars} characters",
                param="stop")


def _bos(tokenizer: Tokenizer) -> list[int]:
    if not (tokenizer.add_bos and tokenizer.bos_text):
        return []
    return tokenizer.encode(tokenizer.bos_text, add_special=False, parse_special=True)


def _encode_plain(prompt: str, tokenizer: Tokenizer, *, add_bos: bool) -> list[int]:
    # The whole prompt is the caller's, special tokens included (a hand-written chat turn works).
    add_bos = add_bos and tokenizer.add_bos and not (
        tokenizer.bos_text and prompt.startswith(tokenizer.bos_text))
    ids = tokenizer.encode(prompt, add_special=add_bos, parse_special=True)
    if not ids:
        raise InvalidRequestError("prompt is empty; a completion needs text to continue",
                                  param="prompt")
    return ids


def _encode_fim(prompt: str, suffix: str, model: ServedModel, tokenizer: Tokenizer, *,
                add_bos: bool) -> list[int]:
    fim = fim_tokens(tokenizer)
    if fim is None:
        raise InvalidRequestError(
            f"The model `{model.id}` has no fill-in-the-middle tokens, so it cannot complete "
            "between a prompt and a suffix; send the prompt without suffix for a plain "
            "completion.", param="suffix", code="fim_not_supported")
    # Prompt and suffix are encoded as text: a marker written inside them cannot reframe the
    # prompt.
    return [*(_bos(tokenizer) if add_bos else []), fim.prefix,
            *tokenizer.encode(prompt, add_special=False, parse_special=False), fim.suffix,
            *tokenizer.encode(suffix, add_special=False, parse_special=False), fim.middle]


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
