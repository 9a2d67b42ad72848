"""The `seekserve` command: serve, models, model pull, keys, usage, migrate."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
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


def _banner(settings: Settings) -> str:
    host = settings.server.host
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{settings.server.port}"
    models = [name for m in settings.models for name in (m.id, *m.aliases)]
    auth = " -H 'Authorization: Bearer $SEEKSERVE_API_KEY'" if settings.api_keys else ""
    body = json.dumps({"model": models[0] if models else "deepseek-v4-pro",
                       "messages": [{"role": "user", "content": "Hello!"}]})
    lines = [
        f"seekserve is ready at {base}/v1",
        f"  models: {', '.join(models)}",
    ]
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
    import uvicorn

    from seekserve.app import check_bind_safety, create_app, resolve_model_path
    from seekserve.server import DrainingServer

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
    warning = check_bind_safety(settings)
    if warning:
        print(f"seekserve: warning: {warning}", file=sys.stderr)
    # Assemble the default model up front, so its progress bar shows before the server starts.
    for spec in settings.engines.values():
        if isinstance(spec, LlamaCppEngineSettings):
            resolve_model_path(spec, settings.data_dir)
    app = create_app(settings, on_ready=lambda: print(_banner(settings), flush=True))
    grace = settings.server.shutdown_grace_s
    config = uvicorn.Config(app, host=settings.server.host, port=settings.server.port,
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
