"""Anthropic Messages API routes, as DeepSeek serves them: `/anthropic/v1/messages` (so an
Anthropic client's base_url is `http://host/anthropic`), the same at `/v1/messages`, and on a
named endpoint `/v1/ai/{endpointPath}/anthropic/v1/messages`; each with its count_tokens.
Deployments bind as they do for chat (Host, endpointPath); answers and errors are always in
Anthropic's shape, whatever the deployment's chat dialect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api.deps import services_of
from seekserve.api.openapi import ANTHROPIC_BODY, ANTHROPIC_RESPONSES
from seekserve.api.pipeline import ProtocolFor, count_prompt, serve
from seekserve.protocol.anthropic import MessagesProtocol
from seekserve.protocol.errors import ModelNotFoundError
from seekserve.registry import Deployment, DeploymentRouter
from seekserve.services import Services

PREFIXES = ("/anthropic/v1", "/v1")
ENDPOINT_PREFIX = "/v1/ai/{endpointPath}/anthropic/v1"


def model_namer(services: Services) -> Callable[[str], str]:
    """A requested name as a served model's: served ids and aliases as they are, other names
    by the longest matching prefix of `anthropic.model_map` (claude-* as DeepSeek maps them),
    anything else unchanged (then a 400 naming `model`)."""
    table = services.settings.anthropic.model_table([m.id for m in services.registry.all()])
    prefixes = sorted(table, key=len, reverse=True)

    def name(requested: str) -> str:
        try:
            services.registry.resolve(requested)
            return requested
        except ModelNotFoundError:
            pass
        for prefix in prefixes:
            if requested.startswith(prefix):
                return table[prefix]
        return requested

    return name


def messages_protocol(request: Request, *, count_only: bool = False) -> ProtocolFor:
    services = services_of(request)
    protocol = MessagesProtocol(signing_key=services.signing_key, model_name=model_namer(services),
                                count_only=count_only)

    def protocol_for(_: Deployment | None) -> MessagesProtocol:
        return protocol

    return protocol_for


def build_anthropic_router() -> APIRouter:
    router = APIRouter(tags=["anthropic"])

    async def messages(request: Request) -> Response:
        host = request.headers.get("host")

        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_plain_route(host)

        return await serve(request, messages_protocol(request), pick)

    async def count_tokens(request: Request) -> Response:
        host = request.headers.get("host")

        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_plain_route(host)

        return await count_prompt(request, messages_protocol(request, count_only=True), pick)

    async def endpoint_messages(request: Request, endpointPath: str) -> Response:
        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_endpoint_path(endpointPath)

        return await serve(request, messages_protocol(request), pick)

    async def endpoint_count_tokens(request: Request, endpointPath: str) -> Response:
        def pick(router: DeploymentRouter) -> Deployment:
            return router.for_endpoint_path(endpointPath)

        return await count_prompt(request, messages_protocol(request, count_only=True), pick)

    def add(path: str, endpoint: Callable[..., Awaitable[Response]], summary: str) -> None:
        router.add_api_route(path, endpoint, methods=["POST"], response_model=None,
                             responses=ANTHROPIC_RESPONSES, openapi_extra=ANTHROPIC_BODY,
                             summary=summary)

    for prefix in PREFIXES:
        add(f"{prefix}/messages", messages, "Create a message (Anthropic)")
        add(f"{prefix}/messages/count_tokens", count_tokens,
            "Count the input tokens of a message (Anthropic)")
    add(f"{ENDPOINT_PREFIX}/messages", endpoint_messages,
        "Create a message on a named endpoint (Anthropic)")
    add(f"{ENDPOINT_PREFIX}/messages/count_tokens", endpoint_count_tokens,
        "Count the input tokens of a message on a named endpoint (Anthropic)")
    return router
