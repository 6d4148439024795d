"""Which provider (gen_ai.provider.name) a server is: the `providers:` host globs of the config."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping


def provider_for_host(providers: Mapping[str, str], host: str | None, port: int | None, default: str) -> str:
    """The provider a `providers:` host glob names for this server, else `default`."""
    if host:
        for pattern, name in providers.items():
            if fnmatch.fnmatch(host, pattern) or fnmatch.fnmatch(f"{host}:{port}", pattern):
                return name
    return default
