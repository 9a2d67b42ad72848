"""Served models (ids, aliases, engine) and deployments (route + Host -> response dialect)."""

from __future__ import annotations

from dataclasses import dataclass

from seekserve.protocol.chat_dialects import Dialect
from seekserve.protocol.errors import ModelNotFoundError, NotFoundError
from seekserve.settings import Settings, ThinkingSettings


@dataclass(frozen=True)
class ServedModel:
    id: str
    aliases: tuple[str, ...]
    engine_name: str
    owned_by: str
    thinking: ThinkingSettings | None = None


@dataclass(frozen=True)
class Deployment:
    name: str
    dialect: Dialect
    endpoint_path: str | None
    hosts: frozenset[str]
    models: frozenset[str] | None  # canonical model ids; None serves every model

    def serves(self, model: ServedModel) -> bool:
        return self.models is None or model.id in self.models


class ModelRegistry:
    """Looks a requested model name (id or alias) up; unknown names are a 404 model_not_found."""

    def __init__(self, settings: Settings) -> None:
        self._models = [
            ServedModel(m.id, tuple(m.aliases), m.engine, m.owned_by, m.thinking)
            for m in settings.models
        ]
        self._by_name = {name: m for m in self._models for name in (m.id, *m.aliases)}

    def all(self) -> list[ServedModel]:
        return list(self._models)

    def resolve(self, name: str, deployment: Deployment | None = None) -> ServedModel:
        model = self._by_name.get(name)
        if model is None or (deployment is not None and not deployment.serves(model)):
            raise ModelNotFoundError(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        return model


class DeploymentRouter:
    """Picks the deployment for a request from its route and Host header."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self._by_host: dict[str, Deployment] = {}
        self._by_endpoint: dict[str, Deployment] = {}
        self._plain: Deployment | None = None
        for d in settings.deployments:
            models = None
            if d.models is not None:
                models = frozenset(registry.resolve(name).id for name in d.models)
            dep = Deployment(d.name, d.dialect, d.endpoint_path,
                             frozenset(h.lower() for h in d.hosts), models)
            if d.endpoint_path is not None:
                self._by_endpoint[d.endpoint_path] = dep
            for host in dep.hosts:
                self._by_host[host] = dep
            if d.endpoint_path is None and not d.hosts:
                self._plain = dep

    def for_plain_route(self, host: str | None) -> Deployment:
        """POST /v1/chat/completions: a deployment bound to this Host, else the plain one."""
        if host:
            host = host.lower()
            dep = self._by_host.get(host) or self._by_host.get(host.rsplit(":", 1)[0])
            if dep is not None:
                return dep
        if self._plain is None:
            raise NotFoundError("No deployment serves /v1/chat/completions on this host.",
                                code="deployment_not_found")
        return self._plain

    def for_endpoint_path(self, endpoint_path: str) -> Deployment:
        dep = self._by_endpoint.get(endpoint_path)
        if dep is None:
            raise NotFoundError(
                f"No deployment has the endpoint path `{endpoint_path}`.",
                param="endpointPath",
                code="endpoint_not_found",
            )
        return dep
