"""Uploaded files of the Files API: their bytes and extracted text, owned by an API key.

Revision ID: 0002_files
Revises: 0001_tenancy
Create Date: 2026-05-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_files"
down_revision: str | None = "0001_tenancy"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_index("ix_files_owner_created", "files", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("files")
