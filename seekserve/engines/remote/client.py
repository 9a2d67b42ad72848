"""The pooled HTTP client of one upstream replica: its URLs, credentials, timeouts, requests and
the SSE lines of a streamed answer."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from seekserve.engines.remote.translate import UpstreamProfile
from seekserve.settings import RemoteEngineSettings, ReplicaSettings, SettingsError


class ReplicaClient:
    """One shared, pooled `httpx.AsyncClient` per replica, opened in the app's event loop by
    `open` and closed by `aclose`. The API key is read from the environment once, here."""

    def __init__(self, replica: ReplicaSettings, engine: RemoteEngineSettings,
                 profile: UpstreamProfile, *, engine_name: str,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = replica.base_url.rstrip("/")
        self.model = replica.model
        self.chat_path = profile.chat_path.format(endpoint_path=replica.endpoint_path or "")
        self.health_path = engine.health_path or profile.health_path
        self._headers = {"Accept": "application/json, text/event-stream"}
        self._key: str | None = None
        if replica.api_key_env is not None:
            key = os.environ.get(replica.api_key_env)
            if not key:
                raise SettingsError(
                    f"engines.{engine_name}: replica {self.base_url} takes its API key from "
                    f"${replica.api_key_env}, which is not set")
            self._key = key
            self._headers["Authorization"] = f"Bearer {key}"
        self._timeout = httpx.Timeout(connect=engine.connect_timeout_s,
                                      read=engine.read_timeout_s,
                                      write=engine.read_timeout_s,
                                      pool=engine.connect_timeout_s)
        self._health_timeout = httpx.Timeout(engine.health_timeout_s)
        self._limits = httpx.Limits(
            # One spare connection for the health check beside a full in-flight load.
            max_connections=engine.max_in_flight + 1,
            max_keepalive_connections=engine.max_in_flight,
            keepalive_expiry=engine.keepalive_expiry_s)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def open(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                             timeout=self._timeout, limits=self._limits,
                                             transport=self._transport)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"the client of {self.base_url} is not open")
        return self._client

    def redact(self, message: str) -> str:
        """`message` from the upstream without our key in it (some servers echo what they
        were sent in their errors)."""
        return message.replace(self._key, "[redacted]") if self._key else message

    async def send_chat(self, body: dict[str, Any]) -> httpx.Response:
        """POST the chat body; the response's headers are in, its body is still to be read
        (closing the response drops the connection, which cancels the upstream request)."""
        return await self.send(self.chat_path, body)

    async def send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST `body` to `path` (streamed, as `send_chat`)."""
        request = self.client.build_request("POST", path, json=body)
        return await self.client.send(request, stream=True)

    async def probe(self) -> bool:
        """One health check: any answer below 500 is a live server (a 404 on a path the
        upstream lacks still proves it up; vLLM's /health and seekserve's /ready say 5xx when
        their engine is not serving)."""
        try:
            response = await self.client.get(self.health_path, timeout=self._health_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code < 500


async def sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The `data` payload of each SSE event (multi-line data joined; `[DONE]` included, the
    caller decides what it means); comments and other fields are skipped."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data = []
    if data:
        yield "\n".join(data)
