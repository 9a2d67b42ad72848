"""The `files` table (created by migration 0002_files), on the tenancy store's metadata."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, String, Table, Text

from seekserve.tenancy.schema import metadata

# The bytes live in the database, not on local disk: gateway replicas share one PostgreSQL.
files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),  # see `owner_of`: a key id or a key digest
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("content_type", String(100), nullable=False),  # what /content serves, set per kind
    Column("data", LargeBinary, nullable=False),
    Column("text", Text, nullable=False),  # extracted once at upload; chats read only this
    Index("ix_files_owner_created", "owner", "created_at", "id"),
)
