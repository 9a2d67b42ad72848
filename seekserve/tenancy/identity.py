"""Who a request is for: the authenticated caller, and the one identity derived from (API key,
`user_id`) that every isolation key comes from: the prefix-cache salt, the upstream affinity
key, the end user's pseudonym sent upstream and the rate limiter's key."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from seekserve.tenancy.keys import NO_LIMITS, KeyLimits


@dataclass(frozen=True)
class Caller:
    """Who is calling: the digest of their key (empty when the server runs without keys)."""

    key_digest: bytes
    key_id: str | None = None  # a managed key's id; None for a static key or an open server
    name: str | None = None  # a managed key's name
    limits: KeyLimits = NO_LIMITS  # a managed key's limits and allowed models

    @property
    def limiter_key(self) -> str:
        """Whose counters a request counts against: the managed key, else the static key (by
        a prefix of its digest), else the one anonymous caller of an open server."""
        if self.key_id is not None:
            return self.key_id
        if self.key_digest:
            return "static-" + self.key_digest.hex()[:16]
        return "anonymous"

    @property
    def owner(self) -> str:
        """Who owns what this caller stores (files): a managed key's id, else the hex digest
        of the static key (the key itself is never stored); "" on an open server."""
        return self.key_id if self.key_id is not None else self.key_digest.hex()


@dataclass(frozen=True)
class RequestIdentity:
    """(caller, user_id), computed once after authentication (implements
    chat.backend.Isolation)."""

    caller: Caller
    user_id: str | None
    cache_salt: bytes  # HMAC of (key, user_id) under the server's cache secret
    # sha256 of (key, user_id) without any per-process secret: every gateway replica agrees.
    _pair_digest: bytes = field(repr=False)

    @classmethod
    def of(cls, caller: Caller, user_id: str | None, *, cache_secret: bytes) -> RequestIdentity:
        pair = caller.key_digest + b"\x00" + (user_id or "").encode()
        return cls(caller, user_id, hmac.new(cache_secret, pair, hashlib.sha256).digest(),
                   hashlib.sha256(pair).digest())

    @property
    def affinity(self) -> bytes:
        """What a pass-through request's replica is chosen by, so one user stays on the
        replica that holds its prefix cache."""
        return self._pair_digest

    @property
    def upstream_user(self) -> str | None:
        """The end user as an upstream sees it: a stable pseudonym of (key, user_id), so two
        tenants' equal user_ids never share an upstream's cache or safety state, and end-user
        ids stay here."""
        return None if self.user_id is None else "u-" + self._pair_digest.hex()[:32]

    @property
    def limiter_key(self) -> str:
        return self.caller.limiter_key
