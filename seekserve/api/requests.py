"""Reading a request body within its size limit and turning validation errors into 400s."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from seekserve.api.schemas import ChatCompletionRequest, NamedToolChoice
from seekserve.errors import InvalidRequestError, PayloadTooLargeError

log = logging.getLogger(__name__)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"The request body is {declared} bytes; the limit is {limit} bytes.")
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    if not body.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.",
                                  code="invalid_json")
    try:
        req = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None
    unknown = req.unknown_fields()
    if unknown:
        log.info("ignoring unknown request fields: %s", ", ".join(unknown))
    check_semantics(req)
    return req


def check_semantics(req: ChatCompletionRequest) -> None:
    """Rules across fields, each reported on the exact field that breaks it."""
    last = len(req.messages) - 1
    for i, msg in enumerate(req.messages):
        at = f"messages[{i}]"
        if msg.content is None and not (msg.role == "assistant" and msg.tool_calls):
            raise InvalidRequestError(
                f"{at}.content is required (null is allowed only on an assistant message "
                "that has tool_calls)", param=f"{at}.content", code="missing_required_parameter")
        if msg.role == "tool" and not msg.tool_call_id:
            raise InvalidRequestError(f"{at} has role tool and needs tool_call_id",
                                      param=f"{at}.tool_call_id",
                                      code="missing_required_parameter")
        if msg.tool_calls is not None and msg.role != "assistant":
            raise InvalidRequestError(f"{at}.tool_calls is allowed only on an assistant message",
                                      param=f"{at}.tool_calls")
        if msg.prefix and msg.role != "assistant":
            raise InvalidRequestError(f"{at}.prefix is allowed only on an assistant message",
                                      param=f"{at}.prefix")
        if msg.prefix and i != last:
            raise InvalidRequestError(
                f"{at}.prefix: prefix completion continues the last message only; this is "
                f"message {i} of {last + 1}", param=f"{at}.prefix")
    names = [t.function.name for t in req.tools or []]
    for j, name in enumerate(names):
        if name in names[:j]:
            raise InvalidRequestError(f"tools[{j}]: the function name {name!r} is used twice",
                                      param=f"tools[{j}].function.name")
    if isinstance(req.tool_choice, NamedToolChoice) and req.tool_choice.function.name not in names:
        raise InvalidRequestError(
            f"tool_choice names function {req.tool_choice.function.name!r}, which is not in "
            "tools", param="tool_choice")
    if req.tool_choice == "required" and not names:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool in tools",
                                  param="tool_choice")
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        holder = fmt.json_schema
        if holder is None or not isinstance(holder.get("schema", {}), dict):
            raise InvalidRequestError(
                "response_format of type json_schema needs json_schema: {\"name\": ..., "
                "\"schema\": {...}}", param="response_format.json_schema")


def validation_error(exc: ValidationError, body: bytes) -> InvalidRequestError:
    """One validation error as a 400 that names the field (as `param`) and the rule.

    Of several errors the deepest is reported: for a union such as `stop` it is the member
    that came closest (`stop[1]` is not a string) rather than the first member tried.
    """
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return InvalidRequestError(f"The request body is not valid JSON: {errors[0]['msg']}",
                                   code="invalid_json")
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    located = [(_param_path(e["loc"], data, missing=e["type"] == "missing"), e) for e in errors]
    param, err = max(located, key=lambda pe: _depth(pe[0]) if pe[0] is not None else -1)
    if param is None:
        return InvalidRequestError(f"The request body must be a JSON object: {err['msg']}",
                                   code="invalid_json")
    message = err["msg"]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        param += ".type"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    shape = _union_shape(param)
    if shape is not None and len(err["loc"]) > _depth(param):
        # Every union member failed at the field itself; their own complaints mislead.
        message = f"must be {shape}"
    code = "missing_required_parameter" if err["type"] == "missing" else "invalid_parameter"
    return InvalidRequestError(f"Invalid value for {param}: {message}", param=param or None,
                               code=code)


_UNION_SHAPES = {
    "stop": "a string, an array of at most 16 strings, or null",
    "content": "a string or an array of content parts ({\"type\": \"text\"} or "
               "{\"type\": \"file\"})",
    "tool_choice": "\"none\", \"auto\", \"required\" or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}",
}


def _union_shape(param: str) -> str | None:
    return _UNION_SHAPES.get(param.rsplit(".", 1)[-1])


def _depth(param: str) -> int:
    """How many location segments a rendered param has (`messages[0].content` has 3)."""
    return param.count(".") + param.count("[") + 1


def _param_path(loc: tuple[int | str, ...], data: Any, *, missing: bool) -> str | None:
    """Render a pydantic location as `messages[0].content`, skipping union-member tags.

    Tags (like `str` or `list[...]`) are the segments that do not exist in the input itself.
    Returns None when the body is not a JSON object at all.
    """
    if not isinstance(data, dict):
        return None
    path = ""
    current: Any = data
    for i, seg in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(seg, int) and isinstance(current, list) and 0 <= seg < len(current):
            path += f"[{seg}]"
            current = current[seg]
        elif isinstance(seg, str) and isinstance(current, dict) and seg in current:
            path += f".{seg}" if path else seg
            current = current[seg]
        elif missing and last and isinstance(seg, str):
            path += f".{seg}" if path else seg
    return path
