"""Short-lived signed tokens for the server-sent event routes.

A browser's ``EventSource`` cannot send headers, so it cannot send ``X-API-Key``. A client
that has the key asks ``POST /api/v1/monitoring/stream-token`` for a token and opens the
stream with ``?token=...``. A token is ``<expiry>.<HMAC-SHA256(key, expiry)>``: it
carries no state on the server, is accepted only by the stream routes, and only until it
expires (an open stream is not cut when its token expires; a reconnection needs a new one).
The signing key is derived from the API key, so tokens die with a key change.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable

__all__ = ["StreamTokens"]


class StreamTokens:
    """Issues and checks stream tokens. Without an API key a random per-process secret
    signs them (the streams are then open anyway)."""

    def __init__(
        self,
        api_key: str | None,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secret = api_key.encode() if api_key is not None else secrets.token_bytes(32)
        self._key = hmac.new(secret, b"vpsweb-tasks stream token", hashlib.sha256).digest()
        self.ttl = ttl
        self._clock = clock

    def _sign(self, expires: int) -> str:
        return hmac.new(self._key, str(expires).encode(), hashlib.sha256).hexdigest()

    def issue(self) -> tuple[str, int]:
        """A new token and its expiry (epoch seconds)."""
        expires = math.ceil(self._clock() + self.ttl)
        return f"{expires}.{self._sign(expires)}", expires

    def valid(self, token: str) -> bool:
        if len(token) > 200:  # far longer than any token issued
            return False
        expiry, _, signature = token.partition(".")
        if not expiry.isdigit() or len(expiry) > 12:
            return False
        expected = self._sign(int(expiry))
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return False
        return self._clock() < int(expiry)
