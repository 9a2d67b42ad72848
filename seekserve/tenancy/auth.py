"""The authenticator: static keys from settings (held as sha256 digests, compared in constant
time) and managed keys from the store -> a Caller.

A managed key a replica has looked up is trusted for `store.key_cache_s` (at most a few
seconds), so a key revoked or expired through any replica is refused by every replica within
that time. Unknown keys are never cached: a key created a moment ago works at once. Whether the
store holds any managed key (which makes keys required) is read at start and, until one is
found, again at most every `store.key_cache_s`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from seekserve.protocol.errors import (
    AuthenticationError,
    PermissionDeniedError,
    ServiceUnavailableError,
)
from seekserve.registry import ServedModel
from seekserve.tenancy.identity import Caller
from seekserve.tenancy.keys import KEY_PREFIX, ApiKey, KeyStore

log = logging.getLogger(__name__)

ANONYMOUS = Caller(key_digest=b"")
_MANAGED_KEY_LENGTH = len(KEY_PREFIX) + 43  # secrets.token_urlsafe(32)
_CACHE_MAX_ENTRIES = 10_000


class StaticKeyAuth:
    """The keys from settings, held as sha256 digests and compared in constant time."""

    def __init__(self, key_digests: list[bytes]) -> None:
        self._digests = list(key_digests)

    def matches(self, digest: bytes) -> bool:
        # Compare against every key so the time taken does not tell which one was close.
        matched = False
        for known in self._digests:
            matched |= secrets.compare_digest(digest, known)
        return matched


class TenantAuth:
    """Checks the presented key (`Authorization: Bearer` or `x-api-key`); the Caller is also
    left on `request.state.caller`.

    Keys are required when static keys or an admin key are configured, or once the store holds
    a managed key (revoked and expired ones count: revoking every key does not open the server).
    Otherwise the server is open (loopback only): a call without a key is anonymous.
    """

    def __init__(self, static: StaticKeyAuth, keys: KeyStore, *, require_key: bool,
                 cache_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._static = static
        self._keys = keys
        self._require_key = require_key
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey, float]] = {}
        # Keys are never deleted, so once the store has one this stays true.
        self._managed_keys = False
        self._managed_read_at = -math.inf

    @property
    def enabled(self) -> bool:
        """Whether keys are required, as last known (see `keys_required`)."""
        return self._require_key or self._managed_keys

    async def read_managed_keys(self) -> None:
        """Read whether the store holds a managed key (at start; `keys_required` re-reads)."""
        self._managed_keys = self._managed_keys or await self._keys.count() > 0
        self._managed_read_at = self._clock()

    async def keys_required(self) -> bool:
        if self._require_key or self._managed_keys:
            return True
        if self._clock() - self._managed_read_at >= self._cache_s:
            try:
                await self.read_managed_keys()
            except (OSError, SQLAlchemyError) as exc:
                raise _store_unavailable(exc) from None
        return self._managed_keys

    async def authenticate(self, request: Request) -> Caller:
        caller = await self._authenticate(request)
        request.state.caller = caller
        return caller

    async def _authenticate(self, request: Request) -> Caller:
        token = presented_key(request)
        if token is None:
            if await self.keys_required():
                raise AuthenticationError(
                    "Missing API key: send it as `Authorization: Bearer <key>` (or as "
                    "`x-api-key: <key>`, as Anthropic's clients do).",
                    code="missing_api_key",
                )
            return ANONYMOUS
        digest = hashlib.sha256(token.encode()).digest()
        if self._static.matches(digest):
            return Caller(key_digest=digest)
        # Only strings shaped like a managed key reach the store (as a digest, never as text).
        if token.startswith(KEY_PREFIX) and len(token) == _MANAGED_KEY_LENGTH:
            key = await self._lookup(digest.hex())
            if key is not None:
                self._managed_keys = True
                if not key.is_active(datetime.now(UTC)):
                    self._cache.pop(key.digest, None)
                    raise AuthenticationError("This API key has been revoked or has expired.")
                return Caller(key_digest=digest, key_id=key.id, name=key.name,
                              limits=key.limits)
        if await self.keys_required():
            raise AuthenticationError("Incorrect API key provided.")
        return ANONYMOUS

    async def _lookup(self, digest: str) -> ApiKey | None:
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self._cache_s:
            return cached[0]
        try:
            key = await self._keys.by_digest(digest)
        except (OSError, SQLAlchemyError) as exc:
            # Serving a stale entry would break the promise that a revoked key is refused
            # within seconds; the caller is told to retry instead of seeing a 500.
            raise _store_unavailable(exc) from None
        if key is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[digest] = (key, now)
        return key

    def forget(self, key: ApiKey) -> None:
        """Drop a key from this replica's cache (after revoking it here)."""
        self._cache.pop(key.digest, None)


def presented_key(request: Request) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, else `x-api-key: <key>`
    (Anthropic's header); None when it presents neither."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


def _store_unavailable(exc: Exception) -> ServiceUnavailableError:
    log.warning("API key check failed, the key store is unreachable: %s", exc)
    return ServiceUnavailableError(
        "The key store is unreachable, so the API key cannot be checked; please retry.",
        code="key_store_unavailable", headers={"Retry-After": "5"})


def caller_of(request: Request) -> Caller:
    """The Caller `TenantAuth.authenticate` found for this request (anonymous if none ran)."""
    caller: Caller = getattr(request.state, "caller", ANONYMOUS)
    return caller


def allow_model(caller: Caller, model: ServedModel, requested: str) -> None:
    """403 `model_not_allowed` unless the key's allow-list names the model (id or an alias)."""
    allowed = caller.limits.models
    if allowed is None or model.id in allowed or not allowed.isdisjoint(model.aliases):
        return
    raise PermissionDeniedError(
        f"This API key may not use the model `{requested}`; it may use: "
        f"{', '.join(sorted(allowed)) or 'no model'}.",
        param="model",
        code="model_not_allowed",
    )

