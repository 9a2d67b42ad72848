"""Tenancy as one unit on the app: the store, keys, authenticator, budgets and usage ledger."""

from __future__ import annotations

from dataclasses import dataclass

from seekserve.settings import Settings
from seekserve.tenancy.auth import StaticKeyAuth, TenantAuth
from seekserve.tenancy.budget import Budget, Prices
from seekserve.tenancy.keys import KeyStore
from seekserve.tenancy.ledger import Ledger
from seekserve.tenancy.store import Store


def keys_required(settings: Settings) -> bool:
    """Keys are required by the configuration: static keys or an admin key (managed keys in the
    store require them too; `TenantAuth` reads those)."""
    return bool(settings.api_keys) or settings.admin_key is not None


async def count_managed_keys(settings: Settings) -> int:
    """How many managed keys the configured store holds (migrating it first, as serving does)."""
    store = Store.from_settings(settings)
    try:
        await store.migrate()
        return await KeyStore(store).count()
    finally:
        await store.aclose()


@dataclass
class Tenancy:
    store: Store
    keys: KeyStore
    auth: TenantAuth
    budget: Budget
    ledger: Ledger

    @classmethod
    def build(cls, settings: Settings) -> Tenancy:
        """Nothing is opened here; `start` migrates the store and opens the journal."""
        store = Store.from_settings(settings)
        keys = KeyStore(store)
        return cls(
            store=store,
            keys=keys,
            auth=TenantAuth(StaticKeyAuth(settings.api_key_hashes()), keys,
                            require_key=keys_required(settings),
                            cache_s=settings.store.key_cache_s),
            budget=Budget(store, Prices.from_settings(settings),
                          reservation_ttl_s=settings.store.reservation_ttl_s),
            ledger=Ledger(store, settings.store.journal_dir or settings.data_dir / "ledger",
                          flush_interval_s=settings.store.flush_interval_s),
        )

    async def start(self) -> None:
        await self.store.migrate()
        await self.auth.read_managed_keys()
        await self.ledger.start()

    async def stop(self) -> None:
        """Drain the ledger into the store, then close the store."""
        try:
            await self.ledger.stop()
        finally:
            await self.store.aclose()
