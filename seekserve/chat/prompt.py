"""A chat request's prompt: its size limits, and its messages rendered with the model's chat
template and encoded as the engine's tokens (what the caller wrote as text, special-token
texts included: only the template's markup becomes special tokens)."""

from __future__ import annotations

from typing import Any

from seekserve.chat.literal import LiteralText, map_strings
from seekserve.chat.plan import THINK_OPEN, OutputPlan
from seekserve.chat.reasoning import OPEN_TAG
from seekserve.chat.template import ChatTemplate
from seekserve.chat.thinking import history, thinks_natively
from seekserve.engines.base import Tokenizer
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import ChatRequest
from seekserve.settings import LimitSettings


def check_limits(req: ChatRequest, lim: LimitSettings) -> None:
    """The request's sizes against `limits.*`: a 400 naming the field and the limit."""
    names = req.fields
    if len(req.model) > lim.max_model_chars:
        raise InvalidRequestError(
            f"model is longer than {lim.max_model_chars} characters", param=names.model)
    if len(req.messages) > lim.max_messages:
        raise InvalidRequestError(
            f"{names.messages} has {len(req.messages)} items; the limit is {lim.max_messages}",
            param=names.messages, code="too_many_messages")
    for msg in req.messages:
        if isinstance(msg.content, tuple) and len(msg.content) > lim.max_content_parts:
            raise InvalidRequestError(
                f"{msg.param}.content has {len(msg.content)} parts; the limit is "
                f"{lim.max_content_parts}", param=f"{msg.param}.content")
        size = len(msg.text()) + len(msg.reasoning or "")
        if size > lim.max_message_chars:
            raise InvalidRequestError(
                f"{msg.param} has {size} characters; the limit is "
                f"{lim.max_message_chars}", param=f"{msg.param}.content",
                code="message_too_long")
    if req.system and len(req.system) > lim.max_message_chars:
        raise InvalidRequestError(
            f"{names.system} is longer than {lim.max_message_chars} characters",
            param=names.system)
    for stop in req.stop:
        if len(stop) > lim.max_stop_chars:
            raise InvalidRequestError(
                f"a stop sequence is longer than {lim.max_stop_chars} characters",
                param=names.stop)
    if req.tools is not None and len(req.tools) > lim.max_tools:
        raise InvalidRequestError(
            f"{names.tools} has {len(req.tools)} items; the limit is {lim.max_tools}",
            param=names.tools)


def encode_prompt(req: ChatRequest, tokenizer: Tokenizer, template: ChatTemplate,
                  plan: OutputPlan) -> list[int]:
    """The prompt's tokens: the turns rendered by the template, the assistant turn opened (a
    thinking block opened too in thinking mode), and a prefix to continue appended."""
    literal = LiteralText(tokenizer.special_texts())
    messages = list(req.messages)
    continuation: str | None = None
    if req.continues_prefix:
        continuation = literal.escape(messages.pop().text())
    native = thinks_natively(template.source)
    turns = history(messages, thinking=plan.thinking.enabled, native=native,
                    reasoning_field=req.fields.reasoning, literal=literal.escape)
    if req.system:
        turns.insert(0, {"role": "system", "content": literal.escape(req.system)})
    switches: dict[str, Any] = {"enable_thinking": plan.thinking.enabled,
                                "thinking": plan.thinking.enabled}
    tools = None if plan.tools is None else map_strings(plan.tools, literal.escape)
    text = template.render(turns, add_generation_prompt=True, bos_token=tokenizer.bos_text,
                           eos_token=tokenizer.eos_text, tools=tools, **switches)
    if plan.thinking.enabled and not text.rstrip("\n").endswith(OPEN_TAG):
        # The server opens the block (budget forcing); a native template may have already.
        text += THINK_OPEN
    if continuation:
        text += continuation
    add_bos = tokenizer.add_bos and not (tokenizer.bos_text and text.startswith(tokenizer.bos_text))
    # Only the template's markup becomes special tokens: what the caller wrote is text.
    return literal.encode(text, tokenizer, add_bos=add_bos)
