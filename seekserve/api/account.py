"""A key's own view: `GET /user/balance` (DeepSeek's shape) and `GET /v1/usage`."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request

from seekserve.api.deps import services_of
from seekserve.protocol.errors import InvalidRequestError
from seekserve.tenancy.usage import usage_report


def build_tenancy_router() -> APIRouter:
    router = APIRouter(tags=["account"])

    @router.get("/user/balance", summary="What is left of the calling key's budget")
    async def balance(request: Request) -> dict[str, Any]:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        return await services.tenancy.budget.balance(caller)

    @router.get("/v1/usage", summary="The calling key's usage per model per day")
    async def usage(
        request: Request,
        start: Annotated[date | None, Query(
            description="First UTC day (YYYY-MM-DD), included.")] = None,
        end: Annotated[date | None, Query(
            description="Last UTC day (YYYY-MM-DD), included.")] = None,
    ) -> dict[str, Any]:
        services = services_of(request)
        caller = await services.auth.authenticate(request)
        if start is not None and end is not None and end < start:
            raise InvalidRequestError("`end` is before `start`.", param="end")
        data = await usage_report(services.tenancy.store, key_id=caller.key_id,
                                  group_by=("day", "model"), start=start, end=end)
        return {"object": "list", "data": data}

    return router
