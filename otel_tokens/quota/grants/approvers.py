"""Who may approve a grant: a file the operator controls, each approver's name with the SHA-256 of a token only
that approver holds. The approver is whoever's token was presented, never a name typed beside it (the guard's
own token is shared by Alertmanager and every app: any app could approve with it).

```yaml
approvers:
  zhang.wei: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
```
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import yaml

from otel_tokens.config.errors import ConfigError
from otel_tokens.config.load import read_yaml
from otel_tokens.quota.grants.file import clean_text

_HEX = re.compile(r"^[0-9a-f]{64}$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def load_approvers(path: Path) -> dict[str, str]:
    """Name -> token hash; ConfigError naming the file, the entry and the value."""
    source = f"approvers file {path}"
    data = read_yaml(path, "approvers file")
    entries = data.get("approvers") if isinstance(data, Mapping) else None
    if not isinstance(entries, Mapping):
        raise ConfigError(source, "approvers", data, "is not a mapping of name to {sha256: ...}")
    out = {}
    for name, entry in entries.items():
        try:
            clean_text(name, "an approver's name")
        except ValueError as error:
            raise ConfigError(source, "approvers", name, str(error)) from None
        digest = entry.get("sha256") if isinstance(entry, Mapping) else None
        if not isinstance(digest, str) or not _HEX.match(digest):
            raise ConfigError(source, f"approvers.{name}.sha256", digest, "is not a SHA-256 in lower-case hex")
        out[str(name)] = digest
    return out


def identify(path: Path, token: str) -> str | None:
    """The approver whose token this is, or None. Every entry is compared (in constant time), so the answer's
    timing does not tell which name came close."""
    if not token or not token.strip():
        return None
    presented, found = token_hash(token), None
    for name, digest in load_approvers(path).items():
        if hmac.compare_digest(presented, digest):
            found = name
    return found


def add_approver(path: Path, name: str) -> str:
    """A new token for `name` (replacing any earlier one), its hash written to the file; the token itself is
    returned once and stored nowhere."""
    clean_text(name, "the approver's name")
    entries: dict[str, dict[str, str]] = {}
    if path.exists():
        entries = {n: {"sha256": d} for n, d in load_approvers(path).items()}
    token = secrets.token_urlsafe(32)
    entries[name] = {"sha256": token_hash(token)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# Approvers of quota grants: name -> SHA-256 of their token (otel-tokens quota approver NAME)\n")
        yaml.safe_dump({"approvers": entries}, handle, sort_keys=True, allow_unicode=True)
    os.replace(tmp, path)
    return token
