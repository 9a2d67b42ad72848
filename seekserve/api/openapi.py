"""The OpenAPI description: the error and answer shapes each route documents, and the request
and response models added to the generated schema (routes read their bodies themselves)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from seekserve.protocol.anthropic import ErrorBody as AnthropicErrorBody
from seekserve.protocol.anthropic import MessagesRequest
from seekserve.protocol.completions import CompletionRequest, TextCompletion
from seekserve.protocol.openai_chat import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorBody,
    OutputEnvelope,
)
from seekserve.protocol.responses import ResponsesRequest
from seekserve.protocol.responses_output import ResponseObject

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request (names the field as `param`)."},
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    404: {"model": ErrorBody, "description": "Unknown model or endpoint path."},
    413: {"model": ErrorBody, "description": "Request body over the limit."},
    500: {"model": ErrorBody, "description": "Server error."},
}
# What chat requests answer besides the common errors (moderation's is a 400 content_filter).
CHAT_ERRORS: dict[int | str, dict[str, Any]] = {
    402: {"model": ErrorBody, "description": "The key's budget cannot cover the worst case "
          "(`insufficient_balance`)."},
    403: {"model": ErrorBody, "description": "The key may not use this model."},
    429: {"model": ErrorBody, "description": "Over a rate or concurrency limit; with "
          "`Retry-After` and `x-ratelimit-*` headers."},
    503: {"model": ErrorBody, "description": "Overloaded or shutting down; with `Retry-After`."},
}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat completion (JSON), its SSE stream when `stream` is true, or the "
        "`{\"output\": {\"text\"}}` envelope on deployments of that dialect.",
        "content": {
            "application/json": {"schema": {"anyOf": [
                {"$ref": "#/components/schemas/ChatCompletion"},
                {"$ref": "#/components/schemas/OutputEnvelope"},
            ]}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
    **CHAT_ERRORS,
}
CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text completion (JSON), or its SSE stream of `text_completion` "
        "chunks when `stream` is true.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TextCompletion"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
    **CHAT_ERRORS,
}
COMPLETION_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/CompletionRequest"}}}}}

_ANTHROPIC_ERRORS = {
    400: "Invalid request (the message names the field); an unknown model too.",
    401: "Missing or wrong API key (`x-api-key` or `Authorization: Bearer`).",
    402: "The key's budget cannot cover the worst case (`billing_error`).",
    403: "The key may not use this model.",
    404: "Unknown endpoint path.",
    413: "Request body over the limit (`request_too_large`).",
    429: "Over a rate or concurrency limit; with `retry-after`.",
    500: "Server error (`api_error`).",
    529: "Overloaded (`overloaded_error`); with `retry-after`.",
}
ANTHROPIC_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A `message` (JSON), or its event stream when `stream` is true; "
          "count_tokens answers `{\"input_tokens\": n}`.",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/event-stream": {"schema": {"type": "string"}}}},
    **{status: {"model": AnthropicErrorBody, "description": text}
       for status, text in _ANTHROPIC_ERRORS.items()},
}
ANTHROPIC_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/MessagesRequest"}}}}}

# Models the routes document by reference; protocols added later list theirs here too.
DOCUMENTED_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionRequest, ChatCompletion, OutputEnvelope, CompletionRequest, TextCompletion,
    ResponsesRequest, ResponseObject, MessagesRequest)


def install_openapi(app: FastAPI) -> None:
    """Routes read their bodies themselves (to bound size and map errors), so the request and
    response models are added to the description here."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        model: type[BaseModel]
        for model in DOCUMENTED_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        schema["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearerAuth": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
