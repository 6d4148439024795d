"""The guard's bearer token, shared by `otel-tokens guard`, Alertmanager's webhook and the in-app guards
that poll the state: read from a file or `OTEL_TOKENS_GUARD_TOKEN`, checked to be worth its name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ENV_GUARD_TOKEN = "OTEL_TOKENS_GUARD_TOKEN"
ENV_GUARD_TOKEN_FILE = "OTEL_TOKENS_GUARD_TOKEN_FILE"
MIN_LENGTH = 16  # characters: a guessable token is no authentication


def read_token(path: Path) -> str:
    """The token in a file (surrounding whitespace dropped); ValueError says what is wrong."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the guard token file {path}: {error}") from None
    return check(token, str(path))


def check(token: str, where: str) -> str:
    if len(token) < MIN_LENGTH or not token.isascii() or any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError(f"the guard token from {where} is not a bearer token of at least {MIN_LENGTH} printable "
                         "characters without spaces (e.g. `openssl rand -hex 32`)")
    return token


def token_from(environ: Mapping[str, str], path: Path | None = None) -> str:
    """`path` if given, else OTEL_TOKENS_GUARD_TOKEN_FILE, else OTEL_TOKENS_GUARD_TOKEN; "" when none is set."""
    if path is None and environ.get(ENV_GUARD_TOKEN_FILE):
        path = Path(environ[ENV_GUARD_TOKEN_FILE]).expanduser()
    if path is not None:
        return read_token(path)
    if environ.get(ENV_GUARD_TOKEN):
        return check(environ[ENV_GUARD_TOKEN].strip(), ENV_GUARD_TOKEN)
    return ""
