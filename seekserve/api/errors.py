"""The app's error handlers: an APIError raised outside the request pipeline (key checks of
the account, files and admin routes, unknown routes, FastAPI's own validation) answered in
the error shape of the route's API family; anything unexpected is a 500 that never leaks its
message."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from seekserve.protocol.errors import APIError, InvalidRequestError, NotFoundError, internal_error
from seekserve.protocol.exchange import openai_error

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client gave up on


def error_response(_: Request, exc: APIError) -> JSONResponse:
    status, body = openai_error(exc)
    return JSONResponse(body, status_code=status, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return error_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(request, NotFoundError("No such route."))
        err = APIError(str(exc.detail), code="http_error")
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(request, err)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return error_response(request, InvalidRequestError(str(first["msg"]), param=param))

    async def client_gone(_: Request, exc: Exception) -> Response:
        # The client left (or the server closed a request whose body was too slow) while its
        # body was being read: nobody reads an answer, and it is not a server error.
        assert isinstance(exc, ClientDisconnect)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(request, internal_error())

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
