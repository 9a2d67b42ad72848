"""`seekserve keys create|list|revoke`, `seekserve usage`, `seekserve migrate`.

They load settings exactly as `serve` does, so they find the server's store by default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from seekserve.settings import Settings
from seekserve.tenancy.keys import ApiKey, KeyLimits, KeyNotFoundError, KeyStore, parse_expiry
from seekserve.tenancy.store import Store
from seekserve.tenancy.usage import ALL_KEYS, GroupBy, usage_report

LoadSettings = Callable[[argparse.Namespace], Settings]
AddConfig = Callable[[argparse.ArgumentParser], None]


def add_tenancy_commands(sub: Any, add_config: AddConfig, load_settings: LoadSettings) -> None:
    """Add the commands to the `seekserve` parser's subparsers."""

    def command(parser: argparse.ArgumentParser,
                run: Callable[[Store, argparse.Namespace], Awaitable[int]]) -> None:
        add_config(parser)
        parser.set_defaults(func=lambda args: _run(load_settings(args), run, args))

    keys = sub.add_parser("keys", help="manage API keys in the store")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; its plaintext is printed once")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=_positive, help="requests per minute")
    create.add_argument("--tpm", type=_positive, help="tokens per minute")
    create.add_argument("--max-concurrency", type=_positive, help="concurrent requests")
    create.add_argument("--max-user-concurrency", type=_positive,
                        help="concurrent requests per user_id")
    create.add_argument("--budget-tokens", type=_non_negative, help="tokens it may use in all")
    create.add_argument("--budget-usd", type=_usd, help="USD it may spend in all")
    create.add_argument("--budget", type=_budget, help="a budget in tokens (100000) or in "
                        "dollars ($5 or 5usd): the short form of --budget-tokens/--budget-usd")
    create.add_argument("--expires", type=_expiry, help="30d, 12h, or an ISO date/datetime")
    create.add_argument("--models", type=_names, help="comma-separated model ids or aliases")
    command(create, _keys_create)
    listing = keys_sub.add_parser("list", help="list the keys (never their plaintext)")
    command(listing, _keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", help="key id (key_...) or prefix (sk-xxxxxxx)")
    command(revoke, _keys_revoke)

    usage = sub.add_parser("usage", help="usage totals from the ledger")
    usage.add_argument("--key", help="only this key id (default: every key)")
    usage.add_argument("--by", choices=["model", "day", "key"], action="append",
                       help="group by (repeatable; default: key and model)")
    usage.add_argument("--start", type=date.fromisoformat, help="first UTC day, YYYY-MM-DD")
    usage.add_argument("--end", type=date.fromisoformat, help="last UTC day, YYYY-MM-DD")
    command(usage, _usage)

    migrate = sub.add_parser("migrate", help="upgrade the store's schema to the newest")
    command(migrate, _migrate)


def _run(settings: Settings, run: Callable[[Store, argparse.Namespace], Awaitable[int]],
         args: argparse.Namespace) -> int:
    async def main() -> int:
        store = Store.from_settings(settings)
        try:
            await store.migrate()
            return await run(store, args)
        finally:
            await store.aclose()

    return asyncio.run(main())


async def _migrate(store: Store, _: argparse.Namespace) -> int:
    print(f"{store.describe()}: schema is up to date")
    return 0


async def _keys_create(store: Store, args: argparse.Namespace) -> int:
    limits = KeyLimits(
        rpm=args.rpm, tpm=args.tpm, max_concurrency=args.max_concurrency,
        max_user_concurrency=args.max_user_concurrency,
        models=frozenset(args.models) if args.models else None,
        budget_tokens=args.budget_tokens, budget_usd=args.budget_usd,
    )
    if args.budget is not None:
        amount = args.budget
        if isinstance(amount, Decimal):
            limits = dataclasses.replace(limits, budget_usd=amount)
        else:
            limits = dataclasses.replace(limits, budget_tokens=amount)
    created = await KeyStore(store).create(args.name, limits, args.expires)
    print(f"created {created.key.id} ({created.key.name}); the key, shown only this once:")
    print(created.plaintext)
    return 0


async def _keys_list(store: Store, _: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    for key in await KeyStore(store).list():
        print(_describe(key, now))
    return 0


async def _keys_revoke(store: Store, args: argparse.Namespace) -> int:
    try:
        key = await KeyStore(store).revoke(args.key)
    except KeyNotFoundError as exc:
        print(f"seekserve: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {key.id} ({key.name}); every replica refuses it within seconds")
    return 0


async def _usage(store: Store, args: argparse.Namespace) -> int:
    group_by: list[GroupBy] = args.by or ["key", "model"]
    rows = await usage_report(store, key_id=args.key or ALL_KEYS, group_by=group_by,
                              start=args.start, end=args.end)
    columns = [*group_by, "requests", "prompt_tokens", "completion_tokens", "cached_tokens",
               "cost"]
    table = [columns] + [[str(row[c] if row[c] is not None else "-") for c in columns]
                         for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _describe(key: ApiKey, now: datetime) -> str:
    state = ("revoked" if key.revoked_at else
             "expired" if key.expires_at and key.expires_at <= now else "active")
    lim = key.limits
    extras = [f"{name}={value}" for name, value in (
        ("rpm", lim.rpm), ("tpm", lim.tpm), ("max_concurrency", lim.max_concurrency),
        ("max_user_concurrency", lim.max_user_concurrency),
        ("budget_tokens", lim.budget_tokens), ("budget_usd", lim.budget_usd),
        ("models", ",".join(sorted(lim.models)) if lim.models is not None else None),
        ("expires", key.expires_at.isoformat() if key.expires_at else None),
    ) if value is not None]
    return f"{key.id}  {key.prefix}…  {state}  {key.name}  {' '.join(extras)}".rstrip()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _usd(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError("must be a non-negative amount")
    return value


def _budget(text: str) -> int | Decimal:
    """`100000` is tokens; `$5`, `5usd` or `5 USD` is dollars."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned.startswith("$") or cleaned.endswith("usd"):
        return _usd(cleaned.removeprefix("$").removesuffix("usd"))
    if not cleaned.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a token count (100000) nor dollars ($5 or 5usd)")
    return int(cleaned)


def _expiry(text: str) -> datetime:
    try:
        return parse_expiry(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]
