"""The pooled HTTP client of one upstream replica: its URLs, credentials, timeouts, requests and
the SSE lines of a streamed answer."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from seekserve.engines.remote.profiles import UpstreamProfile
from seekserve.settings import RemoteEngineSettings, ReplicaSettings, SettingsError

ANTHROPIC_VERSION = "2023-06-01"  # the Messages API version sent to an Anthropic upstream

_httpx_log = logging.getLogger("httpx")


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
            if profile.anthropic_headers:
                self._headers["x-api-key"] = key
        if profile.anthropic_headers:
            self._headers["anthropic-version"] = ANTHROPIC_VERSION
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
        self._extensions = {"timeout": self._timeout.as_dict()}
        self._client: httpx.AsyncClient | None = None
        self._direct: httpx.AsyncBaseTransport | None = None
        self._urls: dict[str, httpx.URL] = {}

    def open(self) -> None:
        if self._client is None:
            transport = self._transport
            if transport is None and not _environment_proxies():
                # The transport the client would build itself (no proxy from the environment
                # applies), held here so that `send` can hand requests to it directly.
                transport = httpx.AsyncHTTPTransport(limits=self._limits)
            self._client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                             timeout=self._timeout, limits=self._limits,
                                             transport=transport)
            self._direct = transport

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
        """POST `body` to `path` (streamed, as `send_chat`).

        The request the client would build goes straight to its transport, past the client's
        per-request layers (URL joining, auth and redirect flows, the cookie jar's parsing of
        every response, a stream wrapper): ~10% of the gateway's instructions per request in
        bench/cpu_per_request.py. The client sends itself while it holds cookies to send back
        or logs each request (the `httpx` logger at INFO), so nothing it does is lost."""
        client = self.client
        transport = self._direct
        if transport is None or client.cookies or _httpx_log.isEnabledFor(logging.INFO):
            request = client.build_request("POST", path, json=body)
            return await client.send(request, stream=True)
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = client.build_request("POST", path).url
        request = httpx.Request("POST", url, headers=client.headers, json=body,
                                extensions=self._extensions)
        response = await transport.handle_async_request(request)
        response.request = request
        if "set-cookie" in response.headers:
            client.cookies.extract_cookies(response)
        return response

    async def probe(self) -> bool:
        """One health check: any answer below 500 is a live server (a 404 on a path the
        upstream lacks still proves it up; vLLM's /health and seekserve's /ready say 5xx when
        their engine is not serving)."""
        try:
            response = await self.client.get(self.health_path, timeout=self._health_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code < 500


def _environment_proxies() -> bool:
    """Whether httpx's client would send some requests through a proxy named in the
    environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY), as it does when it builds its transports
    itself."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


async def sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The `data` payload of each SSE event (multi-line data joined; `[DONE]` included, the
    caller decides what it means); comments and other fields are skipped.

    Lines are split from the raw bytes at CR, LF or CRLF, as the SSE format defines them:
    httpx's `aiter_lines` also splits at U+2028, U+2029 and U+0085, which JSON strings may hold
    unescaped, and it costs two more generators and a text decoder per chunk."""
    encoding = response.encoding or "utf-8"
    data: list[str] = []
    pending = b""  # the start of a line whose end has not come yet
    async for chunk in response.aiter_bytes():
        chunk = pending + chunk
        if b"\r" in chunk:
            # A CR that ends the chunk may be the first half of a CRLF: it waits for the next.
            held = b"\r" if chunk.endswith(b"\r") else b""
            chunk = chunk[:len(chunk) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = chunk.split(b"\n")
            pending = lines.pop() + held
        else:
            lines = chunk.split(b"\n")
            pending = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" ").decode(encoding, errors="replace"))
            elif not line and data:
                yield "\n".join(data)
                data = []
    line = pending.removesuffix(b"\r")
    if line.startswith(b"data:"):
        data.append(line[5:].removeprefix(b" ").decode(encoding, errors="replace"))
    if data:
        yield "\n".join(data)
