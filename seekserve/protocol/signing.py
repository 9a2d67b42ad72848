"""Signatures of the reasoning a client is handed (Anthropic thinking blocks, Responses
reasoning items): an HMAC of the text under a server key, so reasoning passed back can be
checked as this server's own, unchanged. Replicas sharing `server.cache_secret` verify each
other's signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac

_CONTEXT = b"seekserve reasoning signature v1\x00"


def signing_key(secret: bytes) -> bytes:
    """The key of reasoning signatures, derived from the server's secret (never the secret
    itself, which also derives prefix-cache salts)."""
    return hmac.new(secret, b"reasoning-signing-key", hashlib.sha256).digest()


def sign_reasoning(key: bytes, text: str) -> str:
    """The signature of `text`: URL-safe base64 of HMAC-SHA256, without padding."""
    mac = hmac.new(key, _CONTEXT + text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def verify_reasoning(key: bytes, text: str, signature: str) -> bool:
    """Whether `signature` is this key's signature of `text` (compared in constant time)."""
    # As bytes: compare_digest refuses a str with non-ASCII characters (a client's garbage).
    return hmac.compare_digest(sign_reasoning(key, text).encode(), signature.encode())
