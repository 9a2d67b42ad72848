"""Budgets: worst case reserved atomically, settled to the real cost, never overspent by
concurrent requests; expired holds released; 402 and /user/balance over HTTP."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from seekserve.protocol.errors import InsufficientBalanceError
from seekserve.settings import ModelPricing
from seekserve.tenancy.budget import Budget, Prices, Reservation
from seekserve.tenancy.identity import Caller
from seekserve.tenancy.keys import KeyLimits, KeyStore
from seekserve.tenancy.money import to_nanos
from seekserve.tenancy.schema import api_keys, budget_reservations
from seekserve.tenancy.store import Store, default_url
from tests.api.conftest import MODEL, asgi_client, build_app
from tests.fakes import FakeEngine
from tests.tenancy.conftest import store_settings
from tests.tenancy.test_auth import ADMIN, bearer, request_with

# DeepSeek-like prices: $0.27 / 1M input, $0.07 / 1M cache hits, $1.10 / 1M output.
PRICES = Prices({MODEL: ModelPricing(input=Decimal("0.27"), cached_input=Decimal("0.07"),
                                     output=Decimal("1.10"))})


async def make_key(store: Store, **limits: object) -> Caller:
    created = await KeyStore(store).create("budgeted", KeyLimits(**limits))  # type: ignore[arg-type]
    return Caller(key_digest=bytes.fromhex(created.key.digest), key_id=created.key.id,
                  name="budgeted", limits=created.key.limits)


async def counters(store: Store, key_id: str) -> tuple[int, int, int, int]:
    k = api_keys.c
    async with store.read() as conn:
        row = (await conn.execute(select(k.spent_tokens, k.reserved_tokens, k.spent_nanos,
                                         k.reserved_nanos).where(k.id == key_id))).one()
    return (row[0], row[1], row[2], row[3])


def test_cache_hits_are_priced_apart() -> None:
    # 1000 prompt tokens of which 600 cached, 500 completion tokens:
    # 400 * 0.27 + 600 * 0.07 + 500 * 1.10 = 108 + 42 + 550 = 700 micro-USD.
    assert PRICES.cost_nanos(MODEL, prompt_tokens=1000, cached_tokens=600,
                             completion_tokens=500) == 700_000
    assert PRICES.worst_case_nanos(MODEL, prompt_tokens=1000, max_tokens=500) == 820_000
    assert PRICES.cost_nanos("unpriced", prompt_tokens=10**6, cached_tokens=0,
                             completion_tokens=10**6) == 0
    # Fractions of a nano-dollar are charged up, never dropped.
    assert PRICES.cost_nanos(MODEL, prompt_tokens=1, cached_tokens=0, completion_tokens=0) == 270


async def test_reserve_then_settle_to_the_real_cost(store: Store) -> None:
    budget = Budget(store, PRICES, reservation_ttl_s=60)
    caller = await make_key(store, budget_tokens=10_000, budget_usd=Decimal("1"))
    held = await budget.reserve(caller, request_id="r1", model_id=MODEL, prompt_tokens=1000,
                                max_tokens=500)
    assert held is not None and (held.tokens, held.nanos) == (1500, 820_000)
    assert await counters(store, caller.key_id or "") == (0, 1500, 0, 820_000)
    cost = await budget.settle(held, model_id=MODEL, prompt_tokens=1000, cached_tokens=600,
                               completion_tokens=200)
    assert cost == 108_000 + 42_000 + 220_000
    assert await counters(store, caller.key_id or "") == (1200, 0, cost, 0)
    async with store.read() as conn:
        assert (await conn.execute(select(budget_reservations))).all() == []


async def test_a_request_that_does_not_fit_is_402(store: Store) -> None:
    budget = Budget(store, PRICES, reservation_ttl_s=60)
    caller = await make_key(store, budget_tokens=1000)
    await budget.reserve(caller, request_id="a", model_id=MODEL, prompt_tokens=100,
                         max_tokens=800)
    with pytest.raises(InsufficientBalanceError) as info:
        await budget.reserve(caller, request_id="b", model_id=MODEL, prompt_tokens=100,
                             max_tokens=100)
    assert (info.value.status_code, info.value.code) == (402, "insufficient_balance")
    # Money is counted as well (100 * 0.27 + 800 * 1.10 micro-USD), though only tokens cap it.
    assert await counters(store, caller.key_id or "") == (0, 900, 0, 907_000)
    # A key without a budget is never held.
    free = await make_key(store, rpm=5)
    assert await budget.reserve(free, request_id="c", model_id=MODEL, prompt_tokens=10**9,
                                max_tokens=10**9) is None


async def test_concurrent_reservations_at_the_edge_never_overspend(store: Store) -> None:
    """40 concurrent requests against a USD budget that holds exactly 7 worst cases."""
    worst = PRICES.worst_case_nanos(MODEL, prompt_tokens=1000, max_tokens=1000)
    caller = await make_key(store, budget_usd=Decimal(worst * 7 + worst // 2) / 10**9)
    stores = [Store(store.url) for _ in range(4)]  # four "replicas", each with its own pool
    budgets = [Budget(s, PRICES, reservation_ttl_s=60) for s in stores]

    async def attempt(i: int) -> bool:
        try:
            await budgets[i % 4].reserve(caller, request_id=f"req-{i}", model_id=MODEL,
                                         prompt_tokens=1000, max_tokens=1000)
        except InsufficientBalanceError:
            return False
        return True

    try:
        admitted = await asyncio.gather(*(attempt(i) for i in range(40)))
    finally:
        for s in stores:
            await s.aclose()
    assert sum(admitted) == 7
    spent, reserved_tokens, _, reserved = await counters(store, caller.key_id or "")
    assert (spent, reserved_tokens, reserved) == (0, 7 * 2000, 7 * worst)
    assert caller.limits.budget_usd is not None
    assert reserved <= to_nanos(caller.limits.budget_usd)
    async with store.read() as conn:
        holds = (await conn.execute(select(budget_reservations.c.request_id))).scalars().all()
    assert sorted(holds) == sorted(f"req-{i}" for i, ok in enumerate(admitted) if ok)


async def test_holds_of_a_dead_process_expire(store: Store) -> None:
    budget = Budget(store, PRICES, reservation_ttl_s=0.2)
    caller = await make_key(store, budget_tokens=1000)
    await budget.reserve(caller, request_id="lost", model_id=MODEL, prompt_tokens=500,
                         max_tokens=500)  # never settled: its process "died"
    with pytest.raises(InsufficientBalanceError):
        await budget.reserve(caller, request_id="next", model_id=MODEL, prompt_tokens=1,
                             max_tokens=1)
    await asyncio.sleep(0.3)
    held = await budget.reserve(caller, request_id="next", model_id=MODEL, prompt_tokens=1,
                                max_tokens=1)
    assert held is not None
    assert await counters(store, caller.key_id or "") == (0, 2, 0, 1370)
    # Settling the expired one later still charges what it used, and nothing goes negative.
    lost = Reservation("lost", caller.key_id or "", MODEL, 1000, 685_000)
    await budget.settle(lost, model_id=MODEL, prompt_tokens=500, cached_tokens=0,
                        completion_tokens=10)
    assert await counters(store, caller.key_id or "") == (510, 2, 146_000, 1370)


async def test_user_balance_follows_reservations_and_spending(tmp_path: Path) -> None:
    models = [{"id": MODEL, "pricing": {"input": "0.27", "cached_input": "0.07",
                                        "output": "1.10"}}]
    app = build_app(FakeEngine(), admin_key=ADMIN, models=models,
                    **store_settings(default_url(tmp_path / "data"), tmp_path))
    async with asgi_client(app) as client:
        created = await client.post("/admin/keys", headers=bearer(ADMIN), json={
            "name": "b", "budget_usd": "0.001", "budget_tokens": 3000})
        key = created.json()["key"]
        balance = await client.get("/user/balance", headers=bearer(key))
        assert balance.status_code == 200
        assert balance.json() == {"is_available": True, "balance_infos": [
            {"currency": "USD", "total_balance": "0.001", "granted_balance": "0.001",
             "topped_up_balance": "0.00"},
            {"currency": "TOKENS", "total_balance": "3000", "granted_balance": "3000",
             "topped_up_balance": "0"}]}
        services = app.state.services
        caller = await services.auth.authenticate(request_with(key))
        budget: Budget = services.tenancy.budget
        held = await budget.reserve(caller, request_id="x", model_id=MODEL, prompt_tokens=1000,
                                    max_tokens=500)
        await budget.settle(held, model_id=MODEL, prompt_tokens=1000, cached_tokens=0,
                            completion_tokens=500)
        after = (await client.get("/user/balance", headers=bearer(key))).json()
        # 1000 * 0.27 + 500 * 1.10 = 820 micro-USD spent of 1000.
        assert after["balance_infos"][0]["total_balance"] == "0.00018"
        assert after["balance_infos"][1]["total_balance"] == "1500"
        with pytest.raises(InsufficientBalanceError):
            await budget.reserve(caller, request_id="y", model_id=MODEL, prompt_tokens=1000,
                                 max_tokens=0)
        assert (await client.get("/user/balance")).status_code == 401  # the admin key requires keys
