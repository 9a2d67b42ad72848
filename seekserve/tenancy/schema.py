"""The tables of the tenancy store; Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

# Money is held as integer nano-units (1e-9) of the currency, so the budget arithmetic in one
# UPDATE is exact on SQLite and PostgreSQL alike.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("digest", String(64), nullable=False, unique=True),  # sha256 hex of the plaintext
    Column("prefix", String(16), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("max_concurrency", Integer),
    Column("max_user_concurrency", Integer),
    Column("models", JSON),
    Column("budget_tokens", BigInteger),
    Column("budget_nanos", BigInteger),
    Column("spent_tokens", BigInteger, nullable=False, server_default="0"),
    Column("reserved_tokens", BigInteger, nullable=False, server_default="0"),
    Column("spent_nanos", BigInteger, nullable=False, server_default="0"),
    Column("reserved_nanos", BigInteger, nullable=False, server_default="0"),
)

budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("nanos", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_budget_reservations_key_expiry", "key_id", "expires_at"),
)

usage = Table(
    "usage",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("key_id", String(32), index=True),
    Column("user_id", String(256)),
    Column("model", String(256), nullable=False),
    Column("deployment", String(200), nullable=False),
    Column("route", String(300), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("cache_hit_tokens", Integer, nullable=False),
    Column("cache_miss_tokens", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("queue_s", Float),
    Column("ttft_s", Float),
    Column("total_s", Float),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("currency", String(8), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),  # UTC date of created_at, so grouping is portable
    Index("ix_usage_key_day", "key_id", "day"),
)
