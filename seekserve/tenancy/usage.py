"""Usage reports over the ledger: totals per model, day or key (`/v1/usage`, the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, select

from seekserve.tenancy.money import format_amount
from seekserve.tenancy.schema import usage
from seekserve.tenancy.store import Store

GroupBy = Literal["model", "day", "key"]
ALL_KEYS = "*"

_GROUP_COLUMNS: dict[GroupBy, ColumnElement[Any]] = {
    "model": usage.c.model,
    "day": usage.c.day,
    "key": usage.c.key_id,
}


def row_filters(*, key_id: str | None, model: str | None = None, start: date | None = None,
                end: date | None = None) -> list[ColumnElement[bool]]:
    """The conditions picking usage rows: `key_id` None means rows without a managed key,
    ALL_KEYS every row; `model` one model's; `start` to `end` UTC days, both included."""
    u = usage.c
    conditions: list[ColumnElement[bool]] = []
    if key_id is None:
        conditions.append(u.key_id.is_(None))
    elif key_id != ALL_KEYS:
        conditions.append(u.key_id == key_id)
    if model is not None:
        conditions.append(u.model == model)
    if start is not None:
        conditions.append(u.day >= start)
    if end is not None:
        conditions.append(u.day <= end)
    return conditions


async def usage_report(store: Store, *, key_id: str | None, group_by: Sequence[GroupBy],
                       start: date | None = None, end: date | None = None,
                       model: str | None = None) -> list[dict[str, Any]]:
    """Totals per group; `key_id` None means rows without a managed key, ALL_KEYS every row.

    `start` and `end` are UTC dates, both included; `model` keeps only that model's rows."""
    u = usage.c
    groups = [_GROUP_COLUMNS[g].label(g) for g in group_by]
    query = select(
        *groups,
        func.count().label("requests"),
        func.coalesce(func.sum(u.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(u.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(u.reasoning_tokens), 0).label("reasoning_tokens"),
        func.coalesce(func.sum(u.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(u.cost_nanos), 0).label("cost_nanos"),
    )
    query = query.where(*row_filters(key_id=key_id, model=model, start=start, end=end))
    if groups:
        query = query.group_by(*groups).order_by(*groups)
    async with store.read() as conn:
        rows = (await conn.execute(query)).mappings().all()
    report = []
    for row in rows:
        if not groups and row["requests"] == 0:
            continue
        entry: dict[str, Any] = {}
        for g in group_by:
            value = row[g]
            entry[g] = value.isoformat() if isinstance(value, date) else value
        prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
        entry.update(
            requests=int(row["requests"]),
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning_tokens=int(row["reasoning_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            total_tokens=prompt + completion,
            cost=format_amount(int(row["cost_nanos"])),
            currency="USD",
        )
        report.append(entry)
    return report
