"""The `seekserve` command: serve, models, model pull, keys, usage, migrate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seekserve.settings import LlamaCppEngineSettings, Settings, SettingsError


def _load_settings(args: argparse.Namespace) -> Settings:
    config = args.config or os.environ.get("SEEKSERVE_CONFIG")
    server: dict[str, Any] = {}
    if getattr(args, "host", None) is not None:
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    settings = Settings.load(Path(config) if config else None)
    if server:
        merged = settings.server.model_dump() | server
        settings = settings.model_copy(update={"server": type(settings.server)(**merged)})
    return settings


def key_sources(settings: Settings, managed_keys: int) -> list[str]:
    """The configured ways in, each of which makes keys required on every API request."""
    sources = []
    if settings.api_keys:
        count = len(settings.api_keys)
        sources.append(f"{count} static key{'s' if count != 1 else ''} (SEEKSERVE_API_KEYS)")
    if managed_keys:
        sources.append(f"{managed_keys} managed key{'s' if managed_keys != 1 else ''} in the "
                       "store (`seekserve keys list`)")
    if settings.admin_key is not None:
        sources.append("the admin key (SEEKSERVE_ADMIN_KEY)")
    return sources


def _banner(settings: Settings, managed_keys: int = 0,
            engines: Mapping[str, str] | None = None) -> str:
    """What `serve` prints once it is ready: models, the key sources, and the token engines'
    descriptions by name (the embedded one names its device and backend)."""
    host = settings.server.host
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{settings.server.port}"
    models = [name for m in settings.models for name in (m.id, *m.aliases)]
    sources = key_sources(settings, managed_keys)
    auth = " -H 'Authorization: Bearer $SEEKSERVE_API_KEY'" if sources else ""
    body = json.dumps({"model": models[0] if models else "deepseek-v4-pro",
                       "messages": [{"role": "user", "content": "Hello!"}]})
    lines = [
        f"seekserve is ready at {base}/v1",
        f"  models: {', '.join(models)}",
        "  keys required: " + "; ".join(sources) if sources
        else "  keys: none required (open to local processes)",
    ]
    lines.extend(f"  engine {name}: {what}" for name, what in (engines or {}).items())
    for dep in settings.deployments:
        if dep.endpoint_path:
            lines.append(f"  {dep.dialect} shape: POST {base}/v1/ai/{dep.endpoint_path}"
                         "/chat/completions")
        if dep.hosts:
            lines.append(f"  {dep.dialect} shape: POST {base}/v1/chat/completions with Host "
                         f"{' or '.join(dep.hosts)}")
    lines.append("  try:")
    lines.append(f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
                 f"-d '{body}'")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from seekserve.app import check_bind_safety, create_app, resolve_model_path
    from seekserve.http_protocol import BoundedConfig
    from seekserve.server import DrainingServer, request_bounds
    from seekserve.tenancy.service import count_managed_keys

    settings = _load_settings(args)
    logging.basicConfig(level=settings.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The access log is one JSON object per line, nothing around it.
    access = logging.getLogger("seekserve.access")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    # httpx logs a line per upstream request at INFO: one per remote chat, measured ~4% of a
    # gateway's CPU by bench/gateway_overhead.py. Failures are logged by the remote engine.
    if settings.server.log_level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        managed_keys = asyncio.run(count_managed_keys(settings))
    except (OSError, SQLAlchemyError) as exc:
        raise SettingsError(f"the key store cannot be read: {exc}") from None
    warning = check_bind_safety(settings, managed_keys)
    if warning:
        print(f"seekserve: warning: {warning}", file=sys.stderr)
    # Assemble the default model up front, so its progress bar shows before the server starts.
    for spec in settings.engines.values():
        if isinstance(spec, LlamaCppEngineSettings):
            resolve_model_path(spec, settings.data_dir)
    def ready() -> None:
        engines = {name: e.description for name, e in app.state.services.engines.items()}
        print(_banner(settings, managed_keys, engines), flush=True)

    app = create_app(settings, on_ready=ready)
    grace = settings.server.shutdown_grace_s
    config = BoundedConfig(app, bounds=request_bounds(settings.server),
                           host=settings.server.host, port=settings.server.port,
                           log_level=settings.server.log_level, access_log=False,
                           timeout_graceful_shutdown=math.ceil(grace) + 5)
    server = DrainingServer(config, drain=lambda: app.state.services.drain(grace))
    server.run()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    settings = _load_settings(args)
    for model in settings.models:
        spec = settings.engines[model.engine]
        if isinstance(spec, LlamaCppEngineSettings):
            source = str(spec.model_path) if spec.model_path else "default (Qwen2.5-Coder-0.5B)"
        else:
            source = f"{spec.upstream}, {len(spec.replicas)} replicas"
        aliases = f" (aliases: {', '.join(model.aliases)})" if model.aliases else ""
        print(f"{model.id}{aliases}  engine={model.engine} [{spec.kind}: {source}]")
    return 0


def cmd_model_pull(args: argparse.Namespace) -> int:
    from seekserve.app import resolve_model_path

    settings = _load_settings(args)
    for name, spec in settings.engines.items():
        if isinstance(spec, LlamaCppEngineSettings):  # a remote engine has no model file here
            print(f"{name}: {resolve_model_path(spec, settings.data_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seekserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML or TOML settings file (or SEEKSERVE_CONFIG)")

    serve = sub.add_parser("serve", help="run the API server")
    add_config(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="list the served models")
    add_config(models)
    models.set_defaults(func=cmd_models)

    model = sub.add_parser("model", help="manage model files")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    pull = model_sub.add_parser("pull", help="assemble the configured models into the data dir")
    add_config(pull)
    pull.set_defaults(func=cmd_model_pull)

    from seekserve.tenancy.cli import add_tenancy_commands

    add_tenancy_commands(sub, add_config, _load_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        print(f"seekserve: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from seekserve.engines.default_model import ModelFetchError

        if isinstance(exc, ModelFetchError):
            print(f"seekserve: {exc}", file=sys.stderr)
            return 1
        raise
    return code
