"""The API error hierarchy and its one mapping to the wire error body."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error the client is told about: HTTP status, OpenAI-style type, code and param."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_parameter"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class NoSuchFileError(NotFoundError):
    """An uploaded file that does not exist or belongs to another key (the two look alike)."""

    code = "file_not_found"


class EngineError(APIError):
    """The engine failed while serving a request; the message never carries internals."""

    status_code = 500
    error_type = "server_error"
    code = "engine_error"


class RateLimitedError(APIError):
    """Over a request, token or concurrency limit; carries Retry-After and x-ratelimit-*."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ContentFilterError(APIError):
    """The prompt was refused by the content filter."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "content_filter"


class ServiceUnavailableError(APIError):
    """A dependency the request needs (Redis, a classifier) is down and policy says refuse."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class ServerOverloadedError(ServiceUnavailableError):
    """The engine's queue is full, or a request waited past its deadline (DeepSeek's 503)."""

    code = "server_overloaded"


class PermissionDeniedError(APIError):
    """The key is valid but may not do this (e.g. use a model outside its allow-list)."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class InsufficientBalanceError(APIError):
    """The key's budget cannot cover the request's worst case (DeepSeek answers 402)."""

    status_code = 402
    error_type = "invalid_request_error"
    code = "insufficient_balance"


class UpstreamError(APIError):
    """A remote engine's upstream failed (connection, 5xx, an answer we cannot read, or our
    own credentials refused there); the message never carries the upstream's credentials."""

    status_code = 502
    error_type = "server_error"
    code = "upstream_error"


class UpstreamTimeoutError(APIError):
    """A remote engine's upstream did not answer in time."""

    status_code = 504
    error_type = "server_error"
    code = "upstream_timeout"


class UpstreamUnavailableError(ServiceUnavailableError):
    """No replica of a remote engine can take the request (all unhealthy, ejected or full)."""

    code = "upstream_unavailable"


def internal_error() -> APIError:
    return APIError("The server had an error while processing your request.")
