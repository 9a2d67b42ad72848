"""Responses API routes (stateless, as DeepSeek serves them): the plain route (a deployment
chosen by Host), DeepSeek's beta base URL, and named endpoints (`/v1/ai/{endpointPath}`), all
on the one request pipeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api.deps import services_of
from seekserve.api.openapi import CHAT_ERRORS, ERROR_RESPONSES
from seekserve.api.pipeline import serve
from seekserve.protocol.responses import ResponsesProtocol
from seekserve.registry import Deployment, DeploymentRouter

RESPONSES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A `response` object (JSON), or its SSE stream of semantic events "
        "(`response.created` ... `response.completed`) when `stream` is true.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ResponseObject"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
    **CHAT_ERRORS,
}
RESPONSES_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ResponsesRequest"}}}}}


def build_responses_router() -> APIRouter:
    router = APIRouter(tags=["responses"])

    def protocol_for(request: Request) -> Any:
        key = services_of(request).signing_key

        # One adapter per request: it numbers the events of the stream it writes.
        adapter = ResponsesProtocol(key)

        def protocol(_: Deployment | None) -> ResponsesProtocol:
            return adapter

        return protocol

    async def responses(request: Request) -> Response:
        host = request.headers.get("host")

        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_plain_route(host)

        return await serve(request, protocol_for(request), pick)

    async def endpoint_responses(request: Request, endpointPath: str) -> Response:
        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_endpoint_path(endpointPath)

        return await serve(request, protocol_for(request), pick)

    common: dict[str, Any] = {"methods": ["POST"], "responses": RESPONSES_RESPONSES,
                              "openapi_extra": RESPONSES_BODY, "response_model": None}
    router.add_api_route("/v1/responses", responses, summary="Create a response", **common)
    router.add_api_route("/beta/responses", responses,
                         summary="Create a response (DeepSeek's beta base URL)", **common)
    router.add_api_route("/v1/ai/{endpointPath}/responses", endpoint_responses,
                         summary="Create a response on a named endpoint", **common)
    return router
