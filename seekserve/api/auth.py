"""Bearer API keys: held as sha256 digests, compared in constant time."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from starlette.requests import Request

from seekserve.errors import AuthenticationError


@dataclass(frozen=True)
class Caller:
    """Who is calling: the digest of their key (empty when the server runs without keys)."""

    key_digest: bytes


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
        # Compare against every key so the time taken does not tell which one was close.
        matched = False
        for known in self._digests:
            matched |= secrets.compare_digest(digest, known)
        if not matched:
            raise AuthenticationError("Incorrect API key provided.")
        return Caller(key_digest=digest)
