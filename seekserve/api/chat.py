"""Chat completion routes: the plain route (a deployment chosen by Host), DeepSeek's beta base
URL, and named endpoints (`/v1/ai/{endpointPath}`), each in its deployment's dialect."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api.openapi import CHAT_BODY, CHAT_RESPONSES
from seekserve.api.pipeline import serve
from seekserve.protocol.chat_dialects import ChatCompletionsProtocol
from seekserve.registry import Deployment, DeploymentRouter


def chat_protocol(deployment: Deployment | None) -> ChatCompletionsProtocol:
    """Chat completions in the deployment's dialect (errors look the same in every dialect)."""
    return ChatCompletionsProtocol(deployment.dialect if deployment is not None else "openai")


def build_chat_router() -> APIRouter:
    router = APIRouter(tags=["chat"])

    @router.post("/v1/chat/completions", responses=CHAT_RESPONSES, openapi_extra=CHAT_BODY,
                 summary="Create a chat completion", response_model=None)
    @router.post("/beta/chat/completions", responses=CHAT_RESPONSES, openapi_extra=CHAT_BODY,
                 summary="Create a chat completion (DeepSeek's beta base URL)",
                 response_model=None)
    async def chat_completions(request: Request) -> Response:
        host = request.headers.get("host")

        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_plain_route(host)

        return await serve(request, chat_protocol, pick)

    @router.post("/v1/ai/{endpointPath}/chat/completions", responses=CHAT_RESPONSES,
                 openapi_extra=CHAT_BODY, response_model=None,
                 summary="Create a chat completion on a named endpoint (MaaS shape)")
    async def endpoint_chat_completions(request: Request, endpointPath: str) -> Response:
        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_endpoint_path(endpointPath)

        return await serve(request, chat_protocol, pick)

    return router
