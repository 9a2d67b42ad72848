"""Thinking mode: whether a request thinks, with what budget, and what its history keeps.

DeepSeek-V4 semantics: thinking is on by default for V4 models; `thinking.type` switches it;
effort comes from `thinking.reasoning_effort` or the top-level `reasoning_effort` and maps
minimal/low -> low, medium/high/xhigh -> high, max -> max. An assistant turn's
`reasoning_content` is dropped from the prompt, except for the turns that called tools after
the last user message: the model continues that reasoning, so it must be sent back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from seekserve.api.schemas import ChatCompletionRequest, ChatMessage
from seekserve.errors import InvalidRequestError
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


def plan_thinking(req: ChatCompletionRequest, model: ServedModel) -> ThinkingPlan:
    settings = model.thinking
    requested = req.thinking.type if req.thinking is not None else None
    raw_effort = (req.thinking.reasoning_effort if req.thinking is not None else None) \
        or req.reasoning_effort
    if settings is None:
        if requested == "enabled":
            raise InvalidRequestError(
                f"The model `{req.model}` does not support thinking mode.", param="thinking.type")
        return ThinkingPlan.off()
    if (requested or settings.default) != "enabled":
        return ThinkingPlan.off()
    last = req.messages[-1]
    if last.role == "assistant" and last.prefix:
        # Prefix completion continues the given answer text: there is no thinking block.
        return ThinkingPlan.off()
    effort: Effort = EFFORT_OF[raw_effort] if raw_effort is not None else settings.default_effort
    return ThinkingPlan(True, effort, getattr(settings.budgets, effort))


def thinks_natively(template_source: str) -> bool:
    return any(marker in template_source for marker in _NATIVE_MARKERS)


def history(messages: list[ChatMessage], *, thinking: bool, native: bool
            ) -> list[dict[str, Any]]:
    """Messages as the template gets them, with reasoning kept only where it is needed."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        item = history_message(msg)
        if msg.role == "assistant" and thinking and msg.tool_calls and i > last_user:
            reasoning = msg.reasoning_content
            if not reasoning:
                raise InvalidRequestError(
                    f"messages[{i}].reasoning_content is required: in thinking mode an assistant "
                    "message that called tools after the last user message must be sent back "
                    "with its reasoning_content, which the model continues from.",
                    param=f"messages[{i}].reasoning_content",
                    code="missing_reasoning_content")
            if native:
                item["reasoning_content"] = reasoning
            else:
                item["content"] = f"<think>\n{reasoning}\n</think>\n\n{item['content']}"
        out.append(item)
    return out


def history_message(msg: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.text()}
    if msg.name is not None:
        out["name"] = msg.name
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": _json_or_text(c.function.arguments),
                },
            }
            for c in msg.tool_calls
        ]
    return out


def _json_or_text(arguments: str) -> Any:
    # Templates (Qwen's among them) serialise arguments with tojson: give them the object.
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
