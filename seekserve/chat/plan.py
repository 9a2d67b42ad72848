"""What one chat request's output may be: thinking budget, tool calls, JSON, as a constraint
for the engine and a parser for the text that comes back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from seekserve.chat.output import OutputParser
from seekserve.chat.structured import (
    AnswerRule,
    GrammarCompiler,
    GrammarError,
    SequenceConstraint,
    ThinkBudget,
    ToolSpec,
    json_rule,
    json_schema_grammar,
    tool_calls_rules,
    tool_markup_tokens,
)
from seekserve.chat.thinking import ThinkingPlan
from seekserve.engines.base import Tokenizer
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.neutral import ChatRequest

# Thinking is closed with the tag on a line of its own and a blank line before the answer.
THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"
# Most tool calls one answer may make under tool_choice `required` or `auto`.
MAX_PARALLEL_CALLS = 4
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# Any text: in llguidance a regex never matches a special token, so this grammar bans every
# special token but the end of generation.
FREE_TEXT_RULE = "/(?s:.*)/"
FREE_TEXT = f"start: {FREE_TEXT_RULE}"


@dataclass(frozen=True)
class OutputPlan:
    thinking: ThinkingPlan
    tools: list[dict[str, Any]] | None  # as the template renders them
    tool_choice: str  # none, auto, required, or the named function
    json_schema: dict[str, Any] | None  # JSON mode's schema ({"type": "object"} for json_object)

    @property
    def parses_tools(self) -> bool:
        return self.tools is not None and self.tool_choice != "none"

    def parser(self) -> OutputParser:
        return OutputParser(thinking=self.thinking.enabled, tools=self.parses_tools)


def plan_output(req: ChatRequest, thinking: ThinkingPlan) -> OutputPlan:
    tools = None
    if req.tools:
        tools = [{"type": "function", "function": {
            "name": t.name,
            **({"description": t.description} if t.description else {}),
            "parameters": t.parameters or EMPTY_PARAMETERS,
        }} for t in req.tools]
    choice = req.tool_choice
    if choice is None:
        mode = "auto" if tools else "none"
    else:
        mode = choice.name if choice.mode == "function" and choice.name else choice.mode
    schema = req.response_format.schema if req.response_format is not None else None
    return OutputPlan(thinking, tools, mode, schema)


def build_constraint(plan: OutputPlan, req: ChatRequest, tokenizer: Tokenizer,
                     compiler: GrammarCompiler | None, *, max_tokens: int
                     ) -> SequenceConstraint | None:
    """The engine-side constraint, or None when the output is free. Raises a 400 naming the
    field when a schema does not compile or the engine cannot constrain."""
    specs = _tool_specs(req, compiler) if plan.tools is not None else []
    open_id, close_id = tool_markup_tokens(lambda s: tokenizer.encode(s, parse_special=True))
    special = open_id is not None and close_id is not None
    rule = AnswerRule()
    if plan.tools is not None and plan.tool_choice == "none":
        rule = AnswerRule(banned=(open_id,) if open_id is not None else (),
                          whole=FREE_TEXT if open_id is not None else None)
    elif plan.parses_tools:
        named = plan.tool_choice not in ("auto", "required")
        chosen = [s for s in specs if s.name == plan.tool_choice] if named else specs
        max_calls = 1 if named or req.parallel_tool_calls is False else MAX_PARALLEL_CALLS
        if plan.tool_choice != "auto":
            lark = tool_calls_rules(chosen, opened=False, max_calls=max_calls,
                                    special_tags=special)
            rule = AnswerRule(mode="grammar", lark=lark, whole=lark)
        elif plan.json_schema is not None:
            # JSON mode with tools offered: the answer is either calls or the JSON.
            calls = tool_calls_rules(chosen, opened=False, max_calls=max_calls,
                                     special_tags=special, start="calls")
            answer = _grammar(json_rule, plan.json_schema, param=req.fields.response_format)
            lark = f"start: calls | answer\nanswer: {answer}\n{calls}"
            rule = AnswerRule(mode="grammar", lark=lark, whole=lark)
        elif special:
            # Free text until the model opens a call; the call itself is then constrained.
            calls = tool_calls_rules(chosen, opened=False, max_calls=max_calls,
                                     special_tags=special, start="calls")
            rule = AnswerRule(mode="trigger", trigger=open_id, lark=tool_calls_rules(
                chosen, opened=True, max_calls=max_calls, special_tags=special),
                whole=f"start: prose | prose calls\nprose: {FREE_TEXT_RULE}\n{calls}")
    elif plan.json_schema is not None:
        lark = _grammar(json_schema_grammar, plan.json_schema, param=req.fields.response_format)
        rule = AnswerRule(mode="grammar", lark=lark, whole=lark)
    if rule.lark is not None:
        if compiler is None:
            raise InvalidRequestError(
                "This model's engine cannot constrain its output, which JSON mode and tool "
                "calls need.",
                param=req.fields.response_format if plan.json_schema else req.fields.tool_choice)
        try:
            compiler.matcher(rule.lark)  # compiled (and cached) now: a bad schema is a 400
        except GrammarError as exc:
            fmt = req.fields.response_format
            raise InvalidRequestError(f"{fmt}: the schema cannot be used: {exc}",
                                      param=f"{fmt}.json_schema") from None
    think = None
    if plan.thinking.enabled:
        # Reasoning counts toward max_tokens; it may use at most half, so an answer follows.
        think = ThinkBudget(min(plan.thinking.budget, max(1, max_tokens // 2)),
                            tuple(tokenizer.encode(THINK_CLOSE, parse_special=False)))
    if think is None and rule.mode == "free" and not rule.banned:
        return None
    return SequenceConstraint(think=think, answer=rule, compiler=compiler,
                              piece=tokenizer.piece, end_tokens=tokenizer.end_tokens(),
                              max_tokens=max_tokens)


def _grammar(build: Any, schema: dict[str, Any], *, param: str) -> str:
    try:
        text: str = build(schema)
    except GrammarError as exc:
        raise InvalidRequestError(f"{param}: {exc}", param=param) from None
    return text


def _tool_specs(req: ChatRequest, compiler: GrammarCompiler | None) -> list[ToolSpec]:
    """Each tool's schema, compiled on its own so a bad one is a 400 that names it."""
    specs = []
    for tool in req.tools or ():
        params = tool.parameters or EMPTY_PARAMETERS
        param = f"{tool.param}.parameters"
        if params.get("type", "object") != "object":
            raise InvalidRequestError(
                f"{param}: the parameters of tool `{tool.name}` must be a JSON Schema "
                f"of type object, not {json.dumps(params.get('type'))}", param=param)
        if compiler is not None:
            try:
                compiler.matcher(json_schema_grammar(params))
            except GrammarError as exc:
                raise InvalidRequestError(
                    f"{param}: the JSON Schema of tool `{tool.name}` is invalid: {exc}",
                    param=param) from None
        specs.append(ToolSpec(tool.name, params))
    return specs
