"""Alembic environment: runs on the connection `Store.migrate` hands over, in its transaction."""

from __future__ import annotations

from alembic import context

from seekserve.tenancy.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("seekserve migrations run through Store.migrate() or `seekserve migrate`")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
