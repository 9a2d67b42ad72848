"""The one request pipeline every generating endpoint uses, whatever its wire protocol:

    authenticate -> deployment -> read and parse the body (the protocol adapter) -> files made
    text -> the request identity, once -> model and its allow-list -> prompt moderation ->
    prepare on the model's chat backend (limits, prompt) -> admit (rate limits, budget) ->
    run the backend -> write the answer in the caller's protocol -> settle and record the
    ledger row (always, however the response ends).

An error before the response starts is answered in the caller's protocol; after it started,
the protocol's in-band error event ends the stream.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from seekserve.api.access_log import request_context
from seekserve.api.deps import accounting_of, inflight_of, services_of
from seekserve.api.sse import answer_response
from seekserve.chat.backend import ChatBackend, Run
from seekserve.protocol.errors import APIError, PayloadTooLargeError
from seekserve.protocol.exchange import AnswerWriter, ResponseMeta, WireProtocol
from seekserve.protocol.neutral import Delta, Finished
from seekserve.registry import Deployment, DeploymentRouter, ServedModel
from seekserve.services import Services
from seekserve.tenancy.accounting import RequestAccount
from seekserve.tenancy.auth import allow_model
from seekserve.tenancy.identity import Caller, RequestIdentity

# The wire protocol of a route, given the deployment that serves it (None: not known yet, for
# errors before it is).
ProtocolFor = Callable[[Deployment | None], WireProtocol[Any]]
PickDeployment = Callable[[DeploymentRouter], Deployment]


async def serve(request: Request, protocol_for: ProtocolFor, pick: PickDeployment) -> Response:
    """One generating request, start to end; errors in the caller's protocol."""
    protocol = protocol_for(None)
    inflight = inflight_of(request)
    try:
        inflight.enter()
    except APIError as exc:
        return error_response(protocol, exc)
    try:
        return await _serve(request, services_of(request), protocol_for, pick,
                            on_close=inflight.exit)
    except APIError as exc:
        inflight.exit()
        return error_response(protocol, exc)
    except BaseException:
        inflight.exit()
        raise


def error_response(protocol: WireProtocol[Any], exc: APIError) -> Response:
    status, body = protocol.error(exc)
    return JSONResponse(body, status_code=status, headers=exc.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) once it is over `limit` bytes, declared or as it streams in."""
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


@dataclass(frozen=True)
class _Parsed:
    """A request through the steps every route shares, up to its served model."""

    caller: Caller
    deployment: Deployment
    protocol: WireProtocol[Any]
    wire: Any
    neutral: Any
    identity: RequestIdentity
    model: ServedModel


async def _parse(request: Request, services: Services, protocol_for: ProtocolFor,
                 pick: PickDeployment) -> _Parsed:
    """Key, deployment, body, files made text, identity, model and the key's allow-list; the
    access log learns the key, user and model as they are known."""
    caller = await services.auth.authenticate(request)
    deployment = pick(services.router)
    protocol = protocol_for(deployment)
    wire = protocol.parse(await read_body(request, services.settings.limits.max_body_bytes))
    neutral = await services.files.inline(protocol.neutral(wire), caller)
    identity = services.identity(caller, neutral.user_id)
    context = request_context(request)
    if context is not None:
        context.key_id, context.user_id = caller.key_id, identity.user_id
    model = services.registry.resolve(neutral.model, deployment)
    allow_model(caller, model, neutral.model)
    if context is not None:
        context.model = model.id
    return _Parsed(caller, deployment, protocol, wire, neutral, identity, model)


async def _serve(request: Request, services: Services, protocol_for: ProtocolFor,
                 pick: PickDeployment, *, on_close: Callable[[], None]) -> Response:
    arrived = time.perf_counter()
    parsed = await _parse(request, services, protocol_for, pick)
    deployment, protocol, wire = parsed.deployment, parsed.protocol, parsed.wire
    neutral, identity, model = parsed.neutral, parsed.identity, parsed.model
    backend = services.backend_for(model)
    accounting = accounting_of(request)
    texts = backend.prompt_texts(neutral)
    await accounting.moderator.check_prompt(texts, deployment=deployment.name,
                                            user_id=identity.user_id)
    request_id = protocol.id_prefix + secrets.token_urlsafe(18)
    prepared = backend.prepare(neutral, model, request_id=request_id, isolation=identity)
    guard = accounting.moderator.output_guard(deployment.name)
    # From here on the request holds its limits and budget: every way out closes its account.
    account = await accounting.admit(identity=identity, chat=prepared, deployment=deployment,
                                     route=request.url.path, arrived=arrived, guard=guard)
    run = Run(prepared, guard=guard, observer=account)

    def build() -> Response:
        meta = ResponseMeta(id=request_id, created=int(time.time()), model=neutral.model,
                            system_fingerprint=services.settings.server.system_fingerprint,
                            prompt_text=texts[0] if texts else "",
                            prompt_ids=prepared.prompt_ids)
        writer = protocol.writer(wire, meta)
        backend.submit(run)  # a full queue is a 503 here, before any response starts
        return answer_response(
            protocol, protocol.streams(wire),
            lambda: _events(backend, run, writer, account),
            lambda: _answer(backend, run, writer, account),
            keepalive_s=services.settings.server.keepalive_interval_s,
            headers=account.headers())

    try:
        response = build()
    except BaseException as exc:
        account.failed(exc)
        await account.close()
        if isinstance(exc, APIError):
            exc.headers = {**account.headers(), **exc.headers}
        raise
    return AccountedResponse(response, account, on_close)


async def _answer(backend: ChatBackend[Any], run: Run[Any], writer: AnswerWriter,
                  account: RequestAccount) -> dict[str, Any]:
    try:
        result = await backend.complete(run)
    except Exception as exc:
        account.failed(exc)
        raise
    account.finished(result.finish)
    return writer.answer(result)


async def _events(backend: ChatBackend[Any], run: Run[Any], writer: AnswerWriter,
                  account: RequestAccount) -> AsyncGenerator[bytes, None]:
    async def observed() -> AsyncGenerator[Delta | Finished, None]:
        try:
            async with aclosing(backend.stream(run)) as items:
                async for item in items:
                    if isinstance(item, Finished):
                        account.finished(item)
                    yield item
        except Exception as exc:  # the stream turns it into the protocol's error event
            account.failed(exc)
            raise

    items = observed()
    try:
        async with aclosing(writer.events(items)) as events:
            async for chunk in events:
                yield chunk
    finally:
        await items.aclose()  # a client that left stops the generation now


class AccountedResponse(Response):
    """Sends `inner`, then gives back its in-flight place and closes the request's account,
    whatever happened while sending."""

    def __init__(self, inner: Response, account: RequestAccount,
                 on_close: Callable[[], None]) -> None:
        self.inner = inner
        self.account = account
        self.on_close = on_close
        self.background = None
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.on_close()

        async def send_then_release(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # The place is free once the last byte is out: the client's next request may
                # arrive while this one's settlement is still being written.
                release()

        try:
            await self.inner(scope, receive, send_then_release)
        except BaseException as exc:
            self.account.failed(exc)
            raise
        finally:
            release()
            await self.account.close()
        if self.background is not None:
            await self.background()


async def count_prompt(request: Request, protocol_for: ProtocolFor,
                       pick: PickDeployment) -> Response:
    """`{"input_tokens": n}`: the size of the prompt `serve` would run for this request (the
    same steps up to `prepare`: key, deployment, parse, files, model, limits), with nothing
    generated, admitted or recorded (Anthropic's count_tokens); errors in the caller's
    protocol."""
    try:
        services = services_of(request)
        parsed = await _parse(request, services, protocol_for, pick)
        prepared = services.backend_for(parsed.model).prepare(
            parsed.neutral, parsed.model, request_id=parsed.protocol.id_prefix + "count",
            isolation=parsed.identity)
    except APIError as exc:
        return error_response(protocol_for(None), exc)
    return JSONResponse({"input_tokens": prepared.prompt_tokens})
