"""Thinking mode: whether a request thinks, with what budget, and what its history keeps.

DeepSeek-V4 semantics: thinking is on by default for V4 models; `thinking.type` switches it;
effort comes from `thinking.reasoning_effort` or the top-level `reasoning_effort` and maps
minimal/low -> low, medium/high/xhigh -> high, max -> max. An assistant turn's
`reasoning_content` is dropped from the prompt, except for the turns that called tools after
the last user message: the model continues that reasoning, so it must be sent back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from seekserve.chat.literal import map_strings
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import ChatRequest, Message
from seekserve.registry import ServedModel

Effort = Literal["low", "high", "max"]
EFFORT_OF: dict[str, Effort] = {
    "minimal": "low",
    "low": "low",
    "medium": "high",
    "high": "high",
    "xhigh": "high",
    "max": "max",
}
# Templates that think natively mention one of these (Qwen3's `enable_thinking` switch, the
# `<think>` tag of R1-style templates).
_NATIVE_MARKERS = ("enable_thinking", "<think>")


@dataclass(frozen=True)
class ThinkingPlan:
    enabled: bool
    effort: Effort | None = None
    budget: int = 0

    @classmethod
    def off(cls) -> ThinkingPlan:
        return cls(False)


def plan_thinking(req: ChatRequest, model: ServedModel) -> ThinkingPlan:
    settings = model.thinking
    if settings is None:
        if req.thinking:
            raise InvalidRequestError(
                f"The model `{req.model}` does not support thinking mode.",
                param=req.fields.thinking)
        return ThinkingPlan.off()
    enabled = req.thinking if req.thinking is not None else settings.default == "enabled"
    if not enabled or req.continues_prefix:
        # Prefix completion continues the given answer text: there is no thinking block.
        return ThinkingPlan.off()
    effort: Effort = EFFORT_OF[req.effort] if req.effort is not None else settings.default_effort
    budget = getattr(settings.budgets, effort)
    if req.thinking_budget is not None:
        budget = req.thinking_budget  # the client's own cap (Anthropic's budget_tokens)
    return ThinkingPlan(True, effort, budget)


def thinks_natively(template_source: str) -> bool:
    return any(marker in template_source for marker in _NATIVE_MARKERS)


def _same(text: str) -> str:
    return text


def history(messages: list[Message], *, thinking: bool, native: bool,
            reasoning_field: str = "reasoning_content",
            literal: Callable[[str], str] = _same) -> list[dict[str, Any]]:
    """Messages as the template gets them, with reasoning kept only where it is needed.
    `reasoning_field` names, after a message's param, where its reasoning is sent; `literal`
    is applied to every text the caller wrote (not to the `<think>` markup added here)."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        item = history_message(msg, literal)
        if msg.role == "assistant" and thinking and msg.tool_calls and i > last_user:
            reasoning = literal(msg.reasoning or "")
            if not reasoning:
                param = f"{msg.param}.{reasoning_field}"
                raise InvalidRequestError(
                    f"{param} is required: in thinking mode an assistant "
                    "message that called tools after the last user message must be sent back "
                    "with its reasoning, which the model continues from.",
                    param=param, code="missing_reasoning_content")
            if native:
                item["reasoning_content"] = reasoning
            else:
                item["content"] = f"<think>\n{reasoning}\n</think>\n\n{item['content']}"
        out.append(item)
    return out


def history_message(msg: Message, literal: Callable[[str], str] = _same) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": literal(msg.text())}
    if msg.name is not None:
        out["name"] = literal(msg.name)
    if msg.tool_call_id is not None:
        out["tool_call_id"] = literal(msg.tool_call_id)
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": literal(c.id),
                "type": "function",
                "function": {"name": literal(c.name),
                             "arguments": map_strings(_json_or_text(c.arguments), literal)},
            }
            for c in msg.tool_calls
        ]
    return out


def _json_or_text(arguments: str) -> Any:
    # Templates (Qwen's among them) serialise arguments with tojson: give them the object.
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return arguments

