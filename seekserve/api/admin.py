"""The admin HTTP API: create, list and revoke managed keys, behind the admin key.

Without an admin key configured the routes answer 404, as if they did not exist.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from seekserve.api.deps import services_of
from seekserve.protocol.errors import AuthenticationError, InvalidRequestError, NotFoundError
from seekserve.tenancy.keys import KeyLimits, KeyNotFoundError, parse_expiry


class KeyCreateRequest(BaseModel):
    """A new managed key and its limits (unset fields mean no limit of that kind)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, description="What the key is for.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute.")
    max_concurrency: int | None = Field(None, ge=1, description="Concurrent requests.")
    max_user_concurrency: int | None = Field(
        None, ge=1, description="Concurrent requests per user_id.")
    models: list[str] | None = Field(None, description="Model ids or aliases it may use.")
    budget_tokens: int | None = Field(None, ge=0, description="Tokens it may use in all.")
    budget_usd: Decimal | None = Field(None, ge=0, description="USD it may spend in all.")
    expires: str | None = Field(
        None, description="A duration from now (`30d`, `12h`) or an ISO date or datetime.")


def require_admin(request: Request) -> None:
    """The admin key as a Bearer token, compared as sha256 digests in constant time."""
    admin_key = services_of(request).settings.admin_key
    if admin_key is None:
        raise NotFoundError("No such route.")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("Missing admin key: send it as `Authorization: Bearer <key>`.",
                                  code="missing_api_key")
    sent = hashlib.sha256(token.strip().encode()).digest()
    expected = hashlib.sha256(admin_key.get_secret_value().encode()).digest()
    if not secrets.compare_digest(sent, expected):
        raise AuthenticationError("Incorrect admin key provided.")


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.post("/keys", status_code=201, summary="Create a key (its plaintext is shown once)")
    async def create_key(request: Request, body: KeyCreateRequest) -> dict[str, Any]:
        services = services_of(request)
        expires_at: datetime | None = None
        if body.expires is not None:
            try:
                expires_at = parse_expiry(body.expires)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param="expires") from None
        if body.models is not None:
            known = {name for m in services.registry.all() for name in (m.id, *m.aliases)}
            unknown = [name for name in body.models if name not in known]
            if unknown:
                raise InvalidRequestError(f"unknown model(s): {', '.join(unknown)}",
                                          param="models")
        limits = KeyLimits(
            rpm=body.rpm, tpm=body.tpm, max_concurrency=body.max_concurrency,
            max_user_concurrency=body.max_user_concurrency,
            models=frozenset(body.models) if body.models is not None else None,
            budget_tokens=body.budget_tokens, budget_usd=body.budget_usd,
        )
        created = await services.tenancy.keys.create(body.name, limits, expires_at)
        return {"key": created.plaintext, **created.key.public()}

    @router.get("/keys", summary="List the managed keys (never their plaintext)")
    async def list_keys(request: Request) -> dict[str, Any]:
        keys = await services_of(request).tenancy.keys.list()
        return {"object": "list", "data": [key.public() for key in keys]}

    @router.delete("/keys/{key_ref}", summary="Revoke a key by id or prefix")
    async def revoke_key(request: Request, key_ref: str) -> dict[str, Any]:
        services = services_of(request)
        try:
            key = await services.tenancy.keys.revoke(key_ref)
        except KeyNotFoundError as exc:
            raise NotFoundError(str(exc), code="key_not_found") from None
        services.auth.forget(key)
        return key.public()

    return router
