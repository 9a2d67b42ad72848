"""Text completions on the local chat backend: a raw, token-id or fill-in-the-middle prompt as a
PreparedChat, with vLLM's grammar and ending rules as its constraint."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from seekserve.chat.endings import EndingRules
from seekserve.chat.prepared import PreparedChat
from seekserve.chat.structured import (
    AnswerRule,
    GrammarCompiler,
    GrammarError,
    SequenceConstraint,
    json_schema_grammar,
)
from seekserve.engines.base import (
    Engine,
    GenerationRequest,
    SamplingParams,
    TokenConstraint,
    Tokenizer,
)
from seekserve.protocol.completions import MAX_COMPLETION_TOKENS
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import TextCompletionRequest
from seekserve.registry import ServedModel
from seekserve.settings import LimitSettings

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
    grammar) and bind it to `engine`. Raises InvalidRequestError (400). The client's own
    `cache_salt` splits the server-derived `cache_salt` further."""
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
    sampling = SamplingParams(temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                              logprobs=req.logprobs, top_logprobs=req.top_logprobs)
    generation = GenerationRequest(request_id=request_id, prompt=prompt, max_tokens=max_tokens,
                                   sampling=sampling,
                                   cache_salt=salted(cache_salt, req.cache_salt),
                                   constraint=constraint)
    return PreparedChat(model, engine, generation, tuple(req.stops), user_id=req.user_id,
                        want_token_ids=req.want_token_ids, include_stop=req.include_stop,
                        stop_tokens=frozenset(req.stop_token_ids))


def salted(salt: bytes, client_salt: str | None) -> bytes:
    """The server-derived cache salt split further by the client's own `cache_salt`: two client
    salts never share a cached prefix, and no client salt reaches another caller's cache."""
    if client_salt is None:
        return salt
    return hashlib.sha256(salt + b"\x00" + client_salt.encode()).digest()


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
        lark = _lark(req.grammar.lark, req.grammar.json_schema, param)
        try:
            compiler.matcher(lark)  # compiled (and cached) now: a bad one is a 400
        except GrammarError as exc:
            raise InvalidRequestError(f"{param} cannot be used: {exc}", param=param) from None
        rule = AnswerRule(mode="grammar", lark=lark, whole=lark)
        grammar = SequenceConstraint(think=None, answer=rule, compiler=compiler,
                                     piece=tokenizer.piece, end_tokens=tokenizer.end_tokens(),
                                     max_tokens=max_tokens)
    if not (req.min_tokens or req.ignore_eos or req.stop_token_ids):
        return grammar
    return EndingRules(grammar, end_tokens=tokenizer.end_tokens(), max_tokens=max_tokens,
                       min_tokens=req.min_tokens, ignore_eos=req.ignore_eos,
                       stop_tokens=req.stop_token_ids)


def _lark(lark: str | None, schema: dict[str, Any] | None, param: str) -> str:
    """The Lark grammar asked for, or the one of the JSON Schema asked for."""
    if lark is not None:
        return lark
    assert schema is not None
    try:
        return json_schema_grammar(schema)
    except GrammarError as exc:
        raise InvalidRequestError(f"{param} cannot be used: {exc}", param=param) from None


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
