"""The per-request access log line, request metrics and the x-request-id header: a pure ASGI
middleware, and the context handlers fill in for it."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekserve.metrics import Metrics

access_log = logging.getLogger("seekserve.access")

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=\-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"


@dataclass
class RequestContext:
    """What the access log and request metrics know of a request; handlers fill in the rest.

    Set `model` only to a served model id (after the registry resolved it): it is a metric
    label, and a client-supplied string there would let anyone create label values.
    """

    request_id: str
    model: str | None = None
    key_id: str | None = None
    user_id: str | None = None


def request_context(request: Request) -> RequestContext | None:
    """The context the middleware attached to this request (None outside the middleware)."""
    context = request.scope.get("state", {}).get("request_context")
    return context if isinstance(context, RequestContext) else None


def incoming_request_id(scope: Scope) -> str:
    """The client's x-request-id when it is well-formed, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _VALID_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class AccessLogMiddleware:
    """Pure ASGI (messages pass through unbuffered, so streams stay streams): x-request-id in
    and out, request metrics, and one JSON access log line per request when it ends."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = RequestContext(request_id=incoming_request_id(scope))
        scope.setdefault("state", {})["request_context"] = context
        status: int | None = None
        sent_bytes = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = context.request_id
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException as exc:
            if status is None:
                # 499: the request was cancelled (client gone) before any response.
                status = 500 if isinstance(exc, Exception) else 499
            raise
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            final_status = status if status is not None else 499
            self.metrics.observe_request(route, context.model or "", final_status, seconds)
            access_log.info(json.dumps(_access_record(scope, context, route, final_status,
                                                      seconds, sent_bytes)))


def _access_record(scope: Scope, context: RequestContext, route: str, status: int,
                   seconds: float, sent_bytes: int) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "request_id": context.request_id,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes_sent": sent_bytes,
        "model": context.model,
        "key_id": context.key_id,
        "user_id": context.user_id,
        "client": client[0] if client else None,
    }
