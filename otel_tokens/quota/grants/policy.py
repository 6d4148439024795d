"""The quota file's `grants:` section: where grants live, whether they need an approver, and who may approve.

```yaml
grants:
  approval: required        # none (default): `quota grant` takes effect at once
  approvers: approvers.yaml # name -> sha256 of that approver's token (`otel-tokens quota approver NAME`)
  pending_hours: 24         # an unapproved request lapses after this many hours
  file: quotas.grants.yaml  # default: beside the quota file, <stem>.grants.yaml
  audit_log: audit.jsonl    # default: none (OTEL_TOKENS_AUDIT_LOG)
```
Relative paths are relative to the quota file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from otel_tokens.config.errors import ConfigError

NONE, REQUIRED = "none", "required"
FIELDS = ("approval", "approvers", "pending_hours", "file", "audit_log")


@dataclass(frozen=True)
class GrantPolicy:
    approval: str = NONE
    approvers: Path | None = None
    pending_expiry: float = 86400.0
    file: Path | None = None  # None until resolved against the quota file's path
    audit_log: Path | None = None

    @property
    def required(self) -> bool:
        return self.approval == REQUIRED

    def resolved(self, quota_file: Path) -> GrantPolicy:
        """Paths relative to the quota file's folder; the grants file defaulted beside it."""
        folder = quota_file.parent

        def at(path: Path | None) -> Path | None:
            return None if path is None else path if path.is_absolute() else folder / path

        return replace(self, approvers=at(self.approvers), audit_log=at(self.audit_log),
                       file=at(self.file) or quota_file.with_name(f"{quota_file.stem}.grants.yaml"))


def parse_policy(raw: Any, source: str, problems: list[ConfigError]) -> GrantPolicy:
    """The section, every problem added to `problems` (and that field left at its default)."""
    if raw is None:
        return GrantPolicy()
    if not isinstance(raw, Mapping):
        problems.append(ConfigError(source, "grants", raw, "is not a mapping like {approval: required, approvers: "
                                    "approvers.yaml}"))
        return GrantPolicy()
    for key in sorted(map(str, set(raw) - set(FIELDS))):
        problems.append(ConfigError(source, f"grants.{key}", raw[key], f"is not a known field ({', '.join(FIELDS)})"))
    values: dict[str, Any] = {}
    approval = raw.get("approval", NONE)
    if approval not in (NONE, REQUIRED):
        problems.append(ConfigError(source, "grants.approval", approval, "is not `none` or `required`"))
    else:
        values["approval"] = approval
    for key in ("approvers", "file", "audit_log"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            problems.append(ConfigError(source, f"grants.{key}", value, "is not a file path"))
        else:
            values[key] = Path(value).expanduser()
    hours = raw.get("pending_hours")
    if hours is not None:
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0.1 <= hours <= 720:
            problems.append(ConfigError(source, "grants.pending_hours", hours, "is not a number of hours between "
                                        "0.1 and 720"))
        else:
            values["pending_expiry"] = float(hours) * 3600
    if values.get("approval") == REQUIRED and "approvers" not in values:
        problems.append(ConfigError(source, "grants.approvers", None, "is required with `approval: required`: the "
                                    "file of approvers' token hashes (otel-tokens quota approver NAME)"))
    return GrantPolicy(**values)
