"""Checks a request's bearer token against the guard's (config/secrets.py reads it)."""

from __future__ import annotations

import hmac


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries the token (constant-time comparison)."""
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 7235)
        return False
    return hmac.compare_digest(credentials.strip().encode("latin-1", "replace"), token.encode())
