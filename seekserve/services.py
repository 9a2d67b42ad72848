"""Everything one app instance serves with, kept on app.state (no module globals)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from seekserve.api.auth import StaticKeyAuth
from seekserve.chat.service import ChatService
from seekserve.engines.base import Engine
from seekserve.registry import DeploymentRouter, ModelRegistry
from seekserve.settings import Settings


@dataclass
class Services:
    settings: Settings
    engines: Mapping[str, Engine]
    registry: ModelRegistry
    router: DeploymentRouter
    chat: ChatService
    auth: StaticKeyAuth
    started: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, settings: Settings, engines: Mapping[str, Engine]) -> Services:
        registry = ModelRegistry(settings)
        return cls(
            settings=settings,
            engines=engines,
            registry=registry,
            router=DeploymentRouter(settings, registry),
            chat=ChatService(engines, settings.limits),
            auth=StaticKeyAuth(settings.api_key_hashes()),
        )

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
