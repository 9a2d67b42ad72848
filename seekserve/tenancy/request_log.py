"""The ledger's most recent rows, newest first, for the admin API (`GET /admin/requests`)."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from seekserve.tenancy.keys import utc
from seekserve.tenancy.money import format_amount
from seekserve.tenancy.schema import usage
from seekserve.tenancy.store import Store
from seekserve.tenancy.usage import ALL_KEYS, row_filters

MAX_LIMIT = 500


async def recent_requests(store: Store, *, limit: int, key_id: str | None = None,
                          model: str | None = None, start: date | None = None,
                          end: date | None = None) -> list[dict[str, Any]]:
    """At most `limit` usage rows, newest first; `key_id`, `model` and the UTC days `start` to
    `end` (both included) narrow them when given."""
    u = usage.c
    query = select(usage).order_by(u.created_at.desc(), u.request_id.desc()).limit(limit)
    query = query.where(*row_filters(key_id=key_id if key_id is not None else ALL_KEYS,
                                     model=model, start=start, end=end))
    async with store.read() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        {
            "request_id": row["request_id"],
            "created_at": utc(row["created_at"]).isoformat(),
            "key_id": row["key_id"],
            "user_id": row["user_id"],
            "model": row["model"],
            "deployment": row["deployment"],
            "route": row["route"],
            "status": row["status"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "reasoning_tokens": row["reasoning_tokens"],
            "cached_tokens": row["cached_tokens"],
            "queue_s": row["queue_s"],
            "ttft_s": row["ttft_s"],
            "total_s": row["total_s"],
            "cost": format_amount(row["cost_nanos"]),
            "currency": row["currency"],
        }
        for row in rows
    ]
