"""Pydantic validation errors as 400s that name the field as the client wrote it."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from seekserve.protocol.errors import InvalidRequestError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes, *,
               shapes: dict[str, str] | None = None) -> M:
    """`body` as `model`; a 400 naming the field otherwise. Unknown top-level fields are
    accepted and logged (the model allows extras). `shapes` says, per field name, what a union
    field must be when every member of it failed."""
    if not body.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.",
                                  code="invalid_json")
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body, shapes=shapes) from None
    unknown = sorted(parsed.model_extra or {})
    if unknown:
        log.info("ignoring unknown request fields: %s", ", ".join(unknown))
    return parsed


def validation_error(exc: ValidationError, body: bytes, *,
                     shapes: dict[str, str] | None = None) -> InvalidRequestError:
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
    shape = (shapes or {}).get(param.rsplit(".", 1)[-1])
    if shape is not None and len(err["loc"]) > _depth(param):
        # Every union member failed at the field itself; their own complaints mislead.
        message = f"must be {shape}"
    code = "missing_required_parameter" if err["type"] == "missing" else "invalid_parameter"
    return InvalidRequestError(f"Invalid value for {param}: {message}", param=param or None,
                               code=code)


def _steps_into(value: Any, seg: int | str, missing_last: bool) -> bool:
    """Whether location segment `seg` goes into `value` (or names the missing last field)."""
    if isinstance(seg, int):
        return isinstance(value, list) and 0 <= seg < len(value)
    return isinstance(value, dict) and (seg in value or missing_last)


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
        elif (isinstance(seg, str) and isinstance(current, dict) and seg in current
              and current.get("type") == seg and not last
              and not _steps_into(current[seg], loc[i + 1], missing and i + 2 == len(loc))):
            continue  # a discriminated union's tag spelled like a field (`file`, `thinking`)
        elif isinstance(seg, str) and isinstance(current, dict) and seg in current:
            path += f".{seg}" if path else seg
            current = current[seg]
        elif missing and last and isinstance(seg, str):
            path += f".{seg}" if path else seg
    return path
