"""Alembic migration scripts of the tenancy store (run by `Store.migrate`)."""
