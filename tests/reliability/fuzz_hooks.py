"""schemathesis hooks of the fuzz scenario (loaded through SCHEMATHESIS_HOOKS): a generated chat
or completion body that would let the real model write more than MAX_TOKENS tokens (no
max_tokens, or a larger one) asks for MAX_TOKENS, so a fuzz run stays minutes long; invalid
values are left for the server to refuse."""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_TOKENS = 8


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    if isinstance(body, dict) and ctx.operation.path.endswith("completions"):
        value = body.get("max_tokens")
        if value is None or (type(value) is int and value > MAX_TOKENS):
            body["max_tokens"] = MAX_TOKENS
    return body
