"""Managed API keys, budget reservations, the usage ledger.

Revision ID: 0001_tenancy
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_tenancy"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("max_concurrency", sa.Integer),
        sa.Column("max_user_concurrency", sa.Integer),
        sa.Column("models", sa.JSON),
        sa.Column("budget_tokens", sa.BigInteger),
        sa.Column("budget_nanos", sa.BigInteger),
        sa.Column("spent_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("spent_nanos", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_nanos", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_table(
        "budget_reservations",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("nanos", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_budget_reservations_key_expiry", "budget_reservations",
                    ["key_id", "expires_at"])
    op.create_table(
        "usage",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("deployment", sa.String(200), nullable=False),
        sa.Column("route", sa.String(300), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("cache_hit_tokens", sa.Integer, nullable=False),
        sa.Column("cache_miss_tokens", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("queue_s", sa.Float),
        sa.Column("ttft_s", sa.Float),
        sa.Column("total_s", sa.Float),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
    )
    op.create_index("ix_usage_key_id", "usage", ["key_id"])
    op.create_index("ix_usage_key_day", "usage", ["key_id", "day"])


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("budget_reservations")
    op.drop_table("api_keys")
