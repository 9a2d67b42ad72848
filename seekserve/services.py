"""Everything one app instance serves with, built from settings once and kept on app.state (no
module globals): models and deployments, a chat backend per engine (chosen here, once), the
engines, tenancy, files, metrics and, while the app runs, accounting."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from seekserve.chat.backend import ChatBackend
from seekserve.chat.local import LocalChat
from seekserve.chat.passthrough import build_passthroughs
from seekserve.engines.base import Engine, EngineState
from seekserve.files.service import Files
from seekserve.metrics import Metrics
from seekserve.protocol.errors import InvalidRequestError
from seekserve.protocol.signing import signing_key
from seekserve.registry import DeploymentRouter, ModelRegistry, ServedModel
from seekserve.settings import Settings
from seekserve.tenancy.accounting import Accounting
from seekserve.tenancy.auth import TenantAuth
from seekserve.tenancy.identity import Caller, RequestIdentity
from seekserve.tenancy.service import Tenancy


class Serving(Protocol):
    """What the app starts, drains, stops and reports on: token engines and pass-through
    backends alike."""

    async def start(self) -> None: ...

    async def drain(self, grace_s: float) -> None: ...

    async def aclose(self) -> None: ...

    def state(self) -> EngineState: ...


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    router: DeploymentRouter
    tenancy: Tenancy
    files: Files
    metrics: Metrics
    # Token engines by name (what the local chat backends run on).
    engines: Mapping[str, Engine]
    # The chat backend of each engine, by engine name: local over a token engine, or a
    # pass-through to a chat upstream.
    backends: Mapping[str, ChatBackend[Any]]
    # Every engine and pass-through by name: started, drained and reported on.
    serving: Mapping[str, Serving]
    cache_secret: bytes
    created: int = field(default_factory=lambda: int(time.time()))
    started: bool = False
    # Built when the app starts (its Redis connections and HTTP client belong to the loop).
    accounting: Accounting | None = None
    _running: list[Serving] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, engines: Mapping[str, Engine],
              metrics: Metrics | None = None) -> Services:
        registry = ModelRegistry(settings)
        tenancy = Tenancy.build(settings)
        passthroughs = build_passthroughs(settings.engines, settings.limits)
        backends: dict[str, ChatBackend[Any]] = {
            name: LocalChat(engine, settings.limits) for name, engine in engines.items()}
        backends.update(passthroughs)
        secret = settings.server.cache_secret
        return cls(
            settings=settings,
            registry=registry,
            router=DeploymentRouter(settings, registry),
            tenancy=tenancy,
            files=Files(tenancy.store, settings.files, settings.limits),
            metrics=metrics or Metrics(),
            engines=engines,
            backends=backends,
            serving={**engines, **passthroughs},
            cache_secret=(secret.get_secret_value().encode() if secret
                          else secrets.token_bytes(32)),
        )

    @property
    def auth(self) -> TenantAuth:
        return self.tenancy.auth

    def backend_for(self, model: ServedModel) -> ChatBackend[Any]:
        backend = self.backends.get(model.engine_name)
        if backend is None:
            raise InvalidRequestError(
                f"The model `{model.id}` has no engine to serve it here (engine "
                f"`{model.engine_name}` is not running).", param="model",
                code="unsupported_model")
        return backend

    @property
    def signing_key(self) -> bytes:
        """The key that signs reasoning handed to clients (derived from the cache secret, so
        replicas that share it verify each other's signatures)."""
        return signing_key(self.cache_secret)

    def identity(self, caller: Caller, user_id: str | None) -> RequestIdentity:
        """The request's identity: every isolation key of (API key, user_id), derived once."""
        return RequestIdentity.of(caller, user_id, cache_secret=self.cache_secret)

    async def start(self) -> None:
        """Open the store and the ledger, build accounting, start every engine and backend."""
        await self.tenancy.start()
        self.accounting = Accounting.build(self.settings, self.tenancy, self.metrics)
        started: list[Serving] = []
        try:
            for part in self.serving.values():
                await part.start()
                started.append(part)
        except BaseException:
            await self._close(started)
            raise
        self._running = started
        self.started = True

    async def aclose(self) -> None:
        """Stop the engines, settle what is still running into the ledger, drain the ledger."""
        self.started = False
        await self._close(self._running)

    async def _close(self, started: list[Serving]) -> None:
        try:
            for part in started:
                await part.aclose()
        finally:
            try:
                if self.accounting is not None:
                    await self.accounting.aclose()  # settles what is still running
            finally:
                await self.tenancy.stop()  # drains the usage ledger

    async def drain(self, grace_s: float) -> None:
        """Refuse new work; give running requests `grace_s` to finish, then end them."""
        await asyncio.gather(*(part.drain(grace_s) for part in self.serving.values()))

    def engine_states(self) -> dict[str, Serving]:
        """Every engine, token or pass-through, by name: what /ready and the gauges read."""
        return dict(self.serving)

    def model_cards(self) -> list[dict[str, Any]]:
        return [
            {"id": name, "object": "model", "created": self.created, "owned_by": m.owned_by}
            for m in self.registry.all()
            for name in (m.id, *m.aliases)
        ]
