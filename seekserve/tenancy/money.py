"""Money as integer nano-units (1e-9 of the currency): exact in SQL, shown as decimal strings."""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

NANOS = 10**9


def to_nanos(amount: Decimal, *, round_up: bool = False) -> int:
    """Costs round up (never undercharge), budgets round down (never overgrant)."""
    return int((amount * NANOS).to_integral_value(ROUND_CEILING if round_up else ROUND_FLOOR))


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS


def format_amount(nanos: int) -> str:
    """At least two decimals (as DeepSeek shows balances), more when the amount needs them."""
    amount = from_nanos(nanos).normalize()
    _, _, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    return f"{amount:.{max(2, -exponent)}f}"
