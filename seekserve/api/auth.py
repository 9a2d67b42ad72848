"""Bearer API keys: held as sha256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from seekserve.errors import AuthenticationError
from seekserve.tenancy.keys import NO_LIMITS, KeyLimits


@dataclass(frozen=True)
class Caller:
    """Who is calling: the digest of their key (empty when the server runs without keys)."""

    key_digest: bytes
    key_id: str | None = None  # a managed key's id; None for a static key or an open server
    name: str | None = None  # a managed key's name
    limits: KeyLimits = NO_LIMITS  # a managed key's limits and allowed models


class StaticKeyAuth:
    """Checks `Authorization: Bearer <key>` against a fixed set of key digests."""

    def __init__(self, key_digests: list[bytes]) -> None:
        self._digests = list(key_digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authenticate(self, request: Request) -> Caller:
        if not self._digests:
            return Caller(key_digest=b"")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(
                "Missing API key: send it as `Authorization: Bearer <key>`.",
                code="missing_api_key",
            )
        digest = hashlib.sha256(token.strip().encode()).digest()
        if not self.matches(digest):
            raise AuthenticationError("Incorrect API key provided.")
        return Caller(key_digest=digest)

    def matches(self, digest: bytes) -> bool:
        # Compare against every key so the time taken does not tell which one was close.
        matched = False
        for known in self._digests:
            matched |= secrets.compare_digest(digest, known)
        return matched
