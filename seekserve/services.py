"""Everything one app instance serves with, kept on app.state (no module globals)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from seekserve.api.auth import Caller
from seekserve.chat.service import ChatService
from seekserve.engines.base import Engine
from seekserve.engines.remote.passthrough import RemoteEngine, build_remote_engines
from seekserve.files.service import Files
from seekserve.metrics import ReportsState
from seekserve.registry import DeploymentRouter, ModelRegistry, ServedModel
from seekserve.settings import Settings
from seekserve.tenancy.auth import TenantAuth
from seekserve.tenancy.service import Tenancy


@dataclass
class Services:
    settings: Settings
    engines: Mapping[str, Engine]
    registry: ModelRegistry
    router: DeploymentRouter
    chat: ChatService
    auth: TenantAuth
    tenancy: Tenancy
    files: Files
    # Engines of `kind: remote`, by name: chat pass-through, not token engines.
    remotes: Mapping[str, RemoteEngine] = field(default_factory=dict)
    started: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    cache_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def build(cls, settings: Settings, engines: Mapping[str, Engine]) -> Services:
        registry = ModelRegistry(settings)
        tenancy = Tenancy.build(settings)
        return cls(
            settings=settings,
            engines=engines,
            registry=registry,
            router=DeploymentRouter(settings, registry),
            chat=ChatService(engines, settings.limits),
            auth=tenancy.auth,
            tenancy=tenancy,
            remotes=build_remote_engines(settings.engines),
            files=Files(tenancy.store, settings.files, settings.limits),
            cache_secret=(settings.server.cache_secret.get_secret_value().encode()
                          if settings.server.cache_secret else secrets.token_bytes(32)),
        )

    def cache_salt(self, caller: Caller, user_id: str | None) -> bytes:
        """The prefix-cache isolation key of (API key, user_id); clients cannot choose it."""
        message = caller.key_digest + b"\x00" + (user_id or "").encode()
        return hmac.new(self.cache_secret, message, hashlib.sha256).digest()

    async def drain(self, grace_s: float) -> None:
        """Refuse new work; give running requests `grace_s` to finish, then end them."""
        await asyncio.gather(*(engine.drain(grace_s) for engine in self.engines.values()),
                             *(remote.drain(grace_s) for remote in self.remotes.values()))

    def remote_for(self, model: ServedModel) -> RemoteEngine | None:
        """The remote engine that serves `model`, or None when a token engine does."""
        return self.remotes.get(model.engine_name)

    def engine_states(self) -> dict[str, ReportsState]:
        """Every engine, token or remote, by name: what /ready and the gauges read."""
        return {**self.engines, **self.remotes}

    @staticmethod
    def of(request: Request) -> Services:
        services: Services = request.app.state.services
        return services

    def model_cards(self) -> list[dict[str, Any]]:
        return [
            {"id": name, "object": "model", "created": self.created, "owned_by": m.owned_by}
            for m in self.registry.all()
            for name in (m.id, *m.aliases)
        ]
