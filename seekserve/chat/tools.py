"""Tool calls in generated text: the `<tool_call>{json}</tool_call>` markup, parsed as it streams.

Qwen2.5 (the default model) and other Hermes-style templates ask the model to answer a call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

`ToolCallParser` turns that into tool-call pieces: first the call's id and name (as soon as the
name is complete), then fragments of the arguments' JSON text as they are generated. The
arguments reported are the model's own JSON text of the `arguments` value, so the streamed
fragments concatenate to exactly what a non-streamed response carries.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from seekserve.chat.reasoning import partial_tail

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

# `{"name": "<name>", "arguments": ` at the start of a call body.
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
_CLOSERS = " \t\r\n}"


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class CallPiece:
    """A piece of call `index`: its header (id and name) or a fragment of its arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolSplit:
    content: str = ""
    calls: list[CallPiece] = field(default_factory=list)


@dataclass
class _Call:
    index: int
    id: str
    body: str = ""
    announced: bool = False
    args_start: int = -1
    args_sent: int = 0  # characters of the arguments text already reported


class ToolCallParser:
    """Feed answer text; get back plain content and tool-call pieces.

    Text outside `<tool_call>` blocks is content (a partial open tag is held back). A call
    whose body is not `{"name": ..., "arguments": ...}` in that order is reported whole at
    its close tag; one that does not parse as JSON keeps its raw text as arguments.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._call: _Call | None = None
        self.calls: list[dict[str, str]] = []  # finished calls: id, name, arguments

    def feed(self, text: str) -> ToolSplit:
        out = ToolSplit()
        self._buffer += text
        while self._buffer:
            if self._call is None:
                index = self._buffer.find(CALL_OPEN)
                if index < 0:
                    hold = partial_tail(self._buffer, CALL_OPEN)
                    cut = len(self._buffer) - hold
                    if self.calls and not self._buffer[:cut].strip():
                        return out  # whitespace between or after calls is not content (yet)
                    out.content += self._buffer[:cut]
                    self._buffer = self._buffer[cut:]
                    return out
                if self.calls and not self._buffer[:index].strip():
                    index_text = ""
                else:
                    index_text = self._buffer[:index]
                out.content += index_text
                self._buffer = self._buffer[index + len(CALL_OPEN):]
                self._call = _Call(index=len(self.calls), id=new_call_id())
                continue
            call = self._call
            index = self._buffer.find(CALL_CLOSE)
            if index < 0:
                hold = partial_tail(self._buffer, CALL_CLOSE)
                cut = len(self._buffer) - hold
                call.body += self._buffer[:cut]
                self._buffer = self._buffer[cut:]
                self._progress(call, out)
                return out
            call.body += self._buffer[:index]
            self._buffer = self._buffer[index + len(CALL_CLOSE):]
            self._close(call, out)
        return out

    def finish(self) -> ToolSplit:
        """The output ended; an unclosed call is reported with what it has."""
        out = ToolSplit()
        if self._call is not None:
            self._call.body += self._buffer
            self._buffer = ""
            self._close(self._call, out)
        else:
            out.content, self._buffer = self._buffer, ""
            if self.calls and not out.content.strip():
                out.content = ""
        return out

    def _progress(self, call: _Call, out: ToolSplit) -> None:
        if not call.announced:
            match = _HEADER.match(call.body)
            if match is None:
                return
            call.announced = True
            call.args_start = match.end()
            out.calls.append(CallPiece(call.index, id=call.id, name=_unquote(match.group(1))))
        # Hold back a trailing run of whitespace and `}`: the outer object's end hides there.
        args = call.body[call.args_start:]
        safe = len(args.rstrip(_CLOSERS))
        if safe > call.args_sent:
            out.calls.append(CallPiece(call.index, arguments=args[call.args_sent:safe]))
            call.args_sent = safe

    def _close(self, call: _Call, out: ToolSplit) -> None:
        self._call = None
        name, arguments = _parse_body(call)
        if not call.announced:
            out.calls.append(CallPiece(call.index, id=call.id, name=name))
            call.announced, call.args_sent = True, 0
        if arguments[call.args_sent:] or not call.args_sent:
            out.calls.append(CallPiece(call.index, arguments=arguments[call.args_sent:]))
        self.calls.append({"id": call.id, "name": name, "arguments": arguments})


def _unquote(raw: str) -> str:
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def _parse_body(call: _Call) -> tuple[str, str]:
    """(name, arguments text) of a complete call body."""
    body = call.body.strip()
    if call.args_start >= 0:
        match = _HEADER.match(call.body)
        assert match is not None
        name = _unquote(match.group(1))
        rest = call.body[call.args_start:]
        try:
            _, end = json.JSONDecoder().raw_decode(rest)
        except (ValueError, RecursionError):
            return name, rest.rstrip(_CLOSERS) if rest.rstrip().endswith("}") else rest
        return name, rest[:end]
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        return "", body
    if not isinstance(obj, dict):
        return "", body
    found = obj.get("name")
    arguments = obj.get("arguments", obj.get("parameters", {}))
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return (found if isinstance(found, str) else ""), text
