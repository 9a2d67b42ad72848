"""The admin usage API the console's dashboard reads: totals from the ledger grouped by day,
model or key (`GET /admin/usage`), and its latest rows (`GET /admin/requests`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request

from seekserve.api.admin import require_admin
from seekserve.api.deps import services_of
from seekserve.protocol.errors import InvalidRequestError
from seekserve.tenancy.request_log import MAX_LIMIT, recent_requests
from seekserve.tenancy.usage import ALL_KEYS, GroupBy, usage_report

KeyFilter = Annotated[str | None, Query(description="Only this managed key's id.")]
ModelFilter = Annotated[str | None, Query(description="Only this model id.")]
Start = Annotated[date | None, Query(description="First UTC day (YYYY-MM-DD), included.")]
End = Annotated[date | None, Query(description="Last UTC day (YYYY-MM-DD), included.")]


def _check_days(start: date | None, end: date | None) -> None:
    if start is not None and end is not None and end < start:
        raise InvalidRequestError("`end` is before `start`.", param="end")


def build_admin_usage_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/usage", summary="Usage totals of every key, grouped and filtered")
    async def usage(
        request: Request,
        group_by: Annotated[list[GroupBy] | None, Query(
            description="Group by `day`, `model` and/or `key` (repeat the parameter); "
            "`day` when not given.")] = None,
        key: KeyFilter = None, model: ModelFilter = None, start: Start = None, end: End = None,
    ) -> dict[str, Any]:
        _check_days(start, end)
        groups: list[GroupBy] = list(dict.fromkeys(group_by or ["day"]))
        data = await usage_report(services_of(request).tenancy.store,
                                  key_id=key if key is not None else ALL_KEYS,
                                  group_by=groups, start=start, end=end, model=model)
        return {"object": "list", "group_by": groups, "data": data}

    @router.get("/requests", summary="The latest requests in the ledger, newest first")
    async def requests(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="How many rows.")] = 50,
        key: KeyFilter = None, model: ModelFilter = None, start: Start = None, end: End = None,
    ) -> dict[str, Any]:
        _check_days(start, end)
        data = await recent_requests(services_of(request).tenancy.store, limit=limit,
                                     key_id=key, model=model, start=start, end=end)
        return {"object": "list", "data": data}

    return router
