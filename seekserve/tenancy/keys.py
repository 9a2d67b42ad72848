"""Managed API keys: created with their limits, stored as sha256 digests, looked up, revoked."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import RowMapping

from seekserve.settings import RateLimitSettings
from seekserve.tenancy.money import format_amount, from_nanos, to_nanos
from seekserve.tenancy.schema import api_keys
from seekserve.tenancy.store import Store

KEY_PREFIX = "sk-"
DISPLAY_PREFIX_CHARS = 10  # "sk-" and 7 characters of the secret


class KeyNotFoundError(LookupError):
    """No key has that id or prefix (or more than one has that prefix)."""


@dataclass(frozen=True)
class KeyLimits:
    """What one key may use; None means no limit of that kind (rate limits may add defaults)."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    max_user_concurrency: int | None = None
    models: frozenset[str] | None = None  # model ids or aliases; None allows every model
    budget_tokens: int | None = None
    budget_usd: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_concurrency", "max_user_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for no limit), not {value}")

    @property
    def has_budget(self) -> bool:
        return self.budget_tokens is not None or self.budget_usd is not None

    @property
    def unlimited(self) -> bool:
        """No rate or concurrency limit of any kind (budgets and models aside)."""
        return (self.rpm is None and self.tpm is None and self.max_concurrency is None
                and self.max_user_concurrency is None)

    def with_rate_defaults(self, settings: RateLimitSettings) -> KeyLimits:
        """These limits, or the configured defaults for a key that carries no rate limits of
        its own (a static key, a managed key created without them)."""
        if not self.unlimited:
            return self
        return replace(self, rpm=settings.default_rpm, tpm=settings.default_tpm,
                       max_concurrency=settings.default_max_concurrency,
                       max_user_concurrency=settings.default_user_max_concurrency)


NO_LIMITS = KeyLimits()


@dataclass(frozen=True)
class ApiKey:
    """A stored key; its plaintext is never kept."""

    id: str
    digest: str  # sha256 hex of the plaintext
    prefix: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: KeyLimits

    def is_active(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def public(self) -> dict[str, Any]:
        """The JSON shape of the admin API and `keys list` (no digest, no plaintext)."""
        lim = self.limits
        return {
            "id": self.id,
            "prefix": f"{self.prefix}…",
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "rpm": lim.rpm,
            "tpm": lim.tpm,
            "max_concurrency": lim.max_concurrency,
            "max_user_concurrency": lim.max_user_concurrency,
            "models": sorted(lim.models) if lim.models is not None else None,
            "budget_tokens": lim.budget_tokens,
            "budget_usd": (format_amount(to_nanos(lim.budget_usd))
                           if lim.budget_usd is not None else None),
        }


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    plaintext: str  # shown to the operator once, never stored


def digest_of(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(value: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `2w` (from now), an ISO date (its midnight UTC) or an ISO datetime."""
    now = now or datetime.now(UTC)
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(f"expiry {value!r} is neither a duration like 30d nor an ISO date"
                         ) from None


class KeyStore:
    """Managed keys in the store. Every query is parameterised by SQLAlchemy."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, name: str, limits: KeyLimits = NO_LIMITS,
                     expires_at: datetime | None = None) -> CreatedKey:
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            digest=digest_of(plaintext),
            prefix=plaintext[:DISPLAY_PREFIX_CHARS],
            name=name,
            created_at=datetime.now(UTC),
            expires_at=utc(expires_at) if expires_at else None,
            revoked_at=None,
            limits=limits,
        )
        async with self._store.write() as conn:
            await conn.execute(insert(api_keys).values(
                id=key.id, digest=key.digest, prefix=key.prefix, name=key.name,
                created_at=key.created_at, expires_at=key.expires_at,
                rpm=limits.rpm, tpm=limits.tpm, max_concurrency=limits.max_concurrency,
                max_user_concurrency=limits.max_user_concurrency,
                models=sorted(limits.models) if limits.models is not None else None,
                budget_tokens=limits.budget_tokens,
                budget_nanos=(to_nanos(limits.budget_usd)
                              if limits.budget_usd is not None else None),
            ))
        return CreatedKey(key, plaintext)

    async def by_digest(self, digest: str) -> ApiKey | None:
        async with self._store.read() as conn:
            row = (await conn.execute(
                select(api_keys).where(api_keys.c.digest == digest))).mappings().first()
        return _from_row(row) if row else None

    async def count(self) -> int:
        """How many managed keys were ever created (revoked and expired ones included)."""
        async with self._store.read() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(api_keys))).scalar_one())

    async def get(self, key_id: str) -> ApiKey | None:
        async with self._store.read() as conn:
            row = (await conn.execute(
                select(api_keys).where(api_keys.c.id == key_id))).mappings().first()
        return _from_row(row) if row else None

    async def list(self) -> list[ApiKey]:
        async with self._store.read() as conn:
            rows = (await conn.execute(
                select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id))).mappings()
            return [_from_row(row) for row in rows]

    async def find(self, ref: str) -> ApiKey:
        """The key with this id, display prefix (`sk-abcdefg` or `sk-abcdefg…`) or plaintext."""
        ref = ref.strip().removesuffix("…")
        async with self._store.read() as conn:
            rows = (await conn.execute(select(api_keys).where(or_(
                api_keys.c.id == ref,
                api_keys.c.prefix == ref,
                api_keys.c.digest == digest_of(ref),
            )).limit(2))).mappings().all()
        if len(rows) != 1:
            which = "no key" if not rows else "more than one key"
            raise KeyNotFoundError(f"{which} has the id or prefix {ref!r}")
        return _from_row(rows[0])

    async def revoke(self, ref: str) -> ApiKey:
        """Revoke by id, prefix or plaintext; revoking twice keeps the first time."""
        key = await self.find(ref)
        now = datetime.now(UTC)
        async with self._store.write() as conn:
            await conn.execute(update(api_keys)
                               .where(api_keys.c.id == key.id, api_keys.c.revoked_at.is_(None))
                               .values(revoked_at=now))
        revoked = await self.get(key.id)
        assert revoked is not None
        return revoked


def _from_row(row: RowMapping) -> ApiKey:
    models = row["models"]
    return ApiKey(
        id=row["id"],
        digest=row["digest"],
        prefix=row["prefix"],
        name=row["name"],
        created_at=utc(row["created_at"]),
        expires_at=utc(row["expires_at"]) if row["expires_at"] else None,
        revoked_at=utc(row["revoked_at"]) if row["revoked_at"] else None,
        limits=KeyLimits(
            rpm=row["rpm"],
            tpm=row["tpm"],
            max_concurrency=row["max_concurrency"],
            max_user_concurrency=row["max_user_concurrency"],
            models=frozenset(models) if models is not None else None,
            budget_tokens=row["budget_tokens"],
            budget_usd=(from_nanos(row["budget_nanos"])
                        if row["budget_nanos"] is not None else None),
        ),
    )
