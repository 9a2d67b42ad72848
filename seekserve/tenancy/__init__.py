"""Tenancy: managed API keys, budgets, the usage ledger and the store they share."""
