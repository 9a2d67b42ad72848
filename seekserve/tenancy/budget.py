"""Key budgets (tokens and/or USD): reserve the worst case at admission, settle to the real cost.

A reservation is one conditional UPDATE on the key's row (`spent + reserved + r <= budget`), so
concurrent requests on any number of replicas never reserve past the budget; the real cost is at
most the reservation, so a budget is never overspent. Each reservation also has a row with an
expiry: reservations of a process that died are released when they expire.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from seekserve.protocol.errors import InsufficientBalanceError
from seekserve.settings import ModelPricing, Settings
from seekserve.tenancy.identity import Caller
from seekserve.tenancy.money import format_amount, to_nanos
from seekserve.tenancy.schema import api_keys, budget_reservations
from seekserve.tenancy.store import Store

CURRENCY = "USD"
_MILLION = Decimal(1_000_000)


class Prices:
    """Per-model prices (by canonical model id); a model without pricing costs nothing."""

    def __init__(self, pricing: dict[str, ModelPricing]) -> None:
        self._pricing = pricing

    @classmethod
    def from_settings(cls, settings: Settings) -> Prices:
        return cls({m.id: m.pricing for m in settings.models if m.pricing is not None})

    def cost_nanos(self, model_id: str, *, prompt_tokens: int, cached_tokens: int,
                   completion_tokens: int) -> int:
        """What a finished request costs: cache hits at the cached price, misses at input."""
        price = self._pricing.get(model_id)
        if price is None:
            return 0
        cached_price = price.input if price.cached_input is None else price.cached_input
        amount = ((prompt_tokens - cached_tokens) * price.input + cached_tokens * cached_price
                  + completion_tokens * price.output) / _MILLION
        return to_nanos(amount, round_up=True)

    def worst_case_nanos(self, model_id: str, *, prompt_tokens: int, max_tokens: int) -> int:
        """The most a request can cost: no cache hit, every allowed token generated."""
        price = self._pricing.get(model_id)
        if price is None:
            return 0
        cached_price = price.input if price.cached_input is None else price.cached_input
        amount = (prompt_tokens * max(price.input, cached_price)
                  + max_tokens * price.output) / _MILLION
        return to_nanos(amount, round_up=True)


@dataclass(frozen=True)
class Reservation:
    request_id: str
    key_id: str
    model_id: str
    tokens: int
    nanos: int


class Budget:
    """Reservations and settlements against the budgets of managed keys, in the shared store."""

    def __init__(self, store: Store, prices: Prices, *, reservation_ttl_s: float) -> None:
        self._store = store
        self.prices = prices
        self._ttl = timedelta(seconds=reservation_ttl_s)

    async def reserve(self, caller: Caller, *, request_id: str, model_id: str,
                      prompt_tokens: int, max_tokens: int) -> Reservation | None:
        """Hold the worst case of one request; 402 `insufficient_balance` if it does not fit.

        None when the caller has no budget (nothing to settle later but the cost)."""
        if caller.key_id is None or not caller.limits.has_budget:
            return None
        reservation = Reservation(
            request_id=request_id, key_id=caller.key_id, model_id=model_id,
            tokens=prompt_tokens + max_tokens,
            nanos=self.prices.worst_case_nanos(model_id, prompt_tokens=prompt_tokens,
                                               max_tokens=max_tokens),
        )
        k = api_keys.c
        now = datetime.now(UTC)
        async with self._store.write() as conn:
            await _release_expired(conn, reservation.key_id, now)
            held = await conn.execute(
                update(api_keys)
                .where(
                    k.id == reservation.key_id,
                    or_(k.budget_tokens.is_(None),
                        k.spent_tokens + k.reserved_tokens + reservation.tokens
                        <= k.budget_tokens),
                    or_(k.budget_nanos.is_(None),
                        k.spent_nanos + k.reserved_nanos + reservation.nanos <= k.budget_nanos),
                )
                .values(reserved_tokens=k.reserved_tokens + reservation.tokens,
                        reserved_nanos=k.reserved_nanos + reservation.nanos)
                .returning(k.id)
            )
            if held.first() is None:
                raise InsufficientBalanceError(
                    "Insufficient Balance: the worst case of this request (prompt plus "
                    "max_tokens) does not fit in what is left of this key's budget.")
            await conn.execute(insert(budget_reservations).values(
                request_id=reservation.request_id, key_id=reservation.key_id,
                tokens=reservation.tokens, nanos=reservation.nanos,
                expires_at=now + self._ttl))
        return reservation

    async def settle(self, reservation: Reservation | None, *, model_id: str,
                     prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
        """Release the hold and charge the real use; returns the cost in nano-USD."""
        cost = self.prices.cost_nanos(model_id, prompt_tokens=prompt_tokens,
                                      cached_tokens=cached_tokens,
                                      completion_tokens=completion_tokens)
        if reservation is None:
            return cost
        k = api_keys.c
        async with self._store.write() as conn:
            released = (await conn.execute(
                delete(budget_reservations)
                .where(budget_reservations.c.request_id == reservation.request_id)
                .returning(budget_reservations.c.tokens, budget_reservations.c.nanos)
            )).first()
            # An expired hold was already released by someone else: only charge.
            held_tokens, held_nanos = (released.tokens, released.nanos) if released else (0, 0)
            await conn.execute(
                update(api_keys).where(k.id == reservation.key_id).values(
                    reserved_tokens=k.reserved_tokens - held_tokens,
                    reserved_nanos=k.reserved_nanos - held_nanos,
                    spent_tokens=k.spent_tokens + prompt_tokens + completion_tokens,
                    spent_nanos=k.spent_nanos + cost,
                ))
        return cost

    async def balance(self, caller: Caller) -> dict[str, Any]:
        """`GET /user/balance` in DeepSeek's shape; a TOKENS entry for a token budget."""
        if caller.key_id is None or not caller.limits.has_budget:
            return {"is_available": True, "balance_infos": []}
        k = api_keys.c
        async with self._store.read() as conn:
            row = (await conn.execute(select(
                k.budget_tokens, k.budget_nanos,
                k.budget_tokens - k.spent_tokens - k.reserved_tokens,
                k.budget_nanos - k.spent_nanos - k.reserved_nanos,
            ).where(k.id == caller.key_id))).first()
        if row is None:
            return {"is_available": False, "balance_infos": []}
        infos: list[dict[str, str]] = []
        available = True
        if row[1] is not None:
            left = max(0, row[3])
            available &= left > 0
            amount = format_amount(left)
            infos.append({"currency": CURRENCY, "total_balance": amount,
                          "granted_balance": amount, "topped_up_balance": "0.00"})
        if row[0] is not None:
            left = max(0, row[2])
            available &= left > 0
            infos.append({"currency": "TOKENS", "total_balance": str(left),
                          "granted_balance": str(left), "topped_up_balance": "0"})
        return {"is_available": available, "balance_infos": infos}

    async def release_expired(self) -> int:
        """Release every expired hold (of any key); returns how many were released."""
        async with self._store.write() as conn:
            return await _release_expired(conn, None, datetime.now(UTC))


async def _release_expired(conn: AsyncConnection, key_id: str | None, now: datetime) -> int:
    r = budget_reservations.c
    query = delete(budget_reservations).where(r.expires_at < now)
    if key_id is not None:
        query = query.where(r.key_id == key_id)
    expired = (await conn.execute(query.returning(r.key_id, r.tokens, r.nanos))).all()
    per_key: dict[str, tuple[int, int]] = {}
    for row in expired:
        tokens, nanos = per_key.get(row.key_id, (0, 0))
        per_key[row.key_id] = (tokens + row.tokens, nanos + row.nanos)
    k = api_keys.c
    for kid, (tokens, nanos) in per_key.items():
        await conn.execute(update(api_keys).where(k.id == kid).values(
            reserved_tokens=k.reserved_tokens - tokens, reserved_nanos=k.reserved_nanos - nanos))
    return len(expired)

