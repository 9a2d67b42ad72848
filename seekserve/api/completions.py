"""Text completion routes: OpenAI's `/v1/completions` and DeepSeek's FIM `/beta/completions`,
on the deployment the Host picks."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api.openapi import COMPLETION_BODY, COMPLETION_RESPONSES
from seekserve.api.pipeline import serve
from seekserve.protocol.completions import CompletionsProtocol
from seekserve.registry import Deployment, DeploymentRouter


def completions_protocol(_: Deployment | None) -> CompletionsProtocol:
    return CompletionsProtocol()


def build_completions_router() -> APIRouter:
    router = APIRouter(tags=["completions"])

    async def completions(request: Request) -> Response:
        host = request.headers.get("host")

        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_plain_route(host)

        return await serve(request, completions_protocol, pick)

    router.add_api_route(
        "/v1/completions", completions, methods=["POST"], responses=COMPLETION_RESPONSES,
        openapi_extra=COMPLETION_BODY, response_model=None,
        summary="Create a text completion (fill-in-the-middle with `suffix`)")
    router.add_api_route(
        "/beta/completions", completions, methods=["POST"], responses=COMPLETION_RESPONSES,
        openapi_extra=COMPLETION_BODY, response_model=None,
        summary="Create a FIM completion (DeepSeek's beta base URL)")
    return router
