"""The quota file: per-user limits over a rolling 24 h and per-department limits per calendar month
(UTC), in tokens and/or cost, with defaults, per-name overrides and a warning ratio.

```yaml
warning_ratio: 0.8
users:                      # rolling 24 h
  default: {tokens: 200000, cost: 5}
  overrides:
    nightly-batch: {tokens: 2000000}
departments:                # calendar month, UTC
  default: {tokens: 50000000}
  overrides:
    support: {tokens: 80000000, cost: 1000}
```

Errors name the file, the field and the value; unlike the runtime config, a bad quota file is
refused as a whole (it feeds alerting: a half-read quota file would silently drop limits).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_tokens.config import read_yaml
from otel_tokens.config.errors import ConfigError, ConfigProblemsError
from otel_tokens.quota.vocabulary import DEPARTMENT, KINDS, USER, QuotaScope
from otel_tokens.text import normalize_id

_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")
_PRINCIPAL = re.compile(r"^[^\"\\\n]+$")  # ends up inside PromQL label values and YAML strings


@dataclass(frozen=True)
class Limits:
    tokens: float | None = None
    cost: float | None = None

    def get(self, kind: str) -> float | None:
        return self.tokens if kind == "tokens" else self.cost


@dataclass(frozen=True)
class ScopeLimits:
    """The limits of one quota scope (users or departments)."""

    default: Limits = field(default_factory=Limits)
    overrides: Mapping[str, Limits] = field(default_factory=dict)

    def of(self, principal: str) -> Limits:
        """The principal's limits: its override's kinds, the default's for the kinds it leaves out (as the
        rules do: `limit_override or on(user_id) ... limit_default`, per kind)."""
        override = self.overrides.get(principal)
        if override is None:
            return self.default
        return Limits(*(override.get(k) if override.get(k) is not None else self.default.get(k) for k in KINDS))

    def kinds(self) -> list[str]:
        """Limit kinds set anywhere in this scope."""
        limits = [self.default, *self.overrides.values()]
        return [k for k in KINDS if any(lim.get(k) is not None for lim in limits)]


@dataclass(frozen=True)
class Quotas:
    warning_ratio: float = 0.8
    users: ScopeLimits = field(default_factory=ScopeLimits)
    departments: ScopeLimits = field(default_factory=ScopeLimits)
    source: str = "(inline)"

    def limits(self, scope: QuotaScope) -> ScopeLimits:
        return self.users if scope is USER else self.departments


def _limits(raw: Any, source: str, where: str, problems: list[ConfigError]) -> Limits:
    """The limits of one principal; every problem is added to `problems` (and that field left out)."""
    if not isinstance(raw, Mapping):
        problems.append(ConfigError(source, where, raw, "is not a mapping like {tokens: 100000, cost: 5}"))
        return Limits()
    for key in sorted(map(str, set(raw) - set(KINDS))):
        problems.append(ConfigError(source, f"{where}.{key}", raw[key], "is not a known field (tokens, cost)"))
    values = {}
    for kind in KINDS:
        value = raw.get(kind)
        if value is None:
            continue
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip().replace("_", "")):
            value = float(value.strip().replace("_", ""))  # YAML 1.1 reads `1e6` (no dot) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(ConfigError(source, f"{where}.{kind}", value, "is not a positive number (write 200000, "
                                        "2e5 or 200_000)"))
        elif not value < 1e15:  # inf included: budget mode holds limits as exact integers
            problems.append(ConfigError(source, f"{where}.{kind}", value, "is not below 10^15"))
        else:
            values[kind] = float(value)
    if not values and not set(raw) & set(KINDS):
        problems.append(ConfigError(source, where, dict(raw), "sets neither tokens nor cost"))
    return Limits(**values)


def _scope(raw: Any, source: str, where: str, problems: list[ConfigError]) -> ScopeLimits:
    if raw is None:
        return ScopeLimits()
    if not isinstance(raw, Mapping):
        problems.append(ConfigError(source, where, raw, "is not a mapping with `default` and/or `overrides`"))
        return ScopeLimits()
    for key in sorted(map(str, set(raw) - {"default", "overrides"})):
        problems.append(ConfigError(source, f"{where}.{key}", raw[key], "is not a known field (default, overrides)"))
    default = (_limits(raw["default"], source, f"{where}.default", problems) if raw.get("default") is not None
               else Limits())
    overrides_raw = raw.get("overrides") or {}
    if not isinstance(overrides_raw, Mapping):
        problems.append(ConfigError(source, f"{where}.overrides", overrides_raw, "is not a mapping of name to limits"))
        overrides_raw = {}
    overrides = {}
    for name, limits in overrides_raw.items():
        if not isinstance(name, str) or not _PRINCIPAL.match(name):
            problems.append(ConfigError(source, f"{where}.overrides", name,
                                        "is not a valid name (no quotes or backslashes)"))
            continue
        normal = normalize_id(name)  # the spelling calls are charged under (attribution.safe_value)
        if normal in overrides:
            problems.append(ConfigError(source, f"{where}.overrides", name,
                                        f"is the same id as another override once normalized ({normal!r})"))
            continue
        overrides[normal] = _limits(limits, source, f"{where}.overrides.{name}", problems)
    return ScopeLimits(default, overrides)


def parse_quotas(data: Any, source: str) -> Quotas:
    """The quotas, or ConfigProblemsError listing every problem of the file at once."""
    if data is None:
        raise ConfigError(source, "(file)", "", "is empty: a quota file sets `users:` and/or `departments:`")
    if not isinstance(data, Mapping):
        raise ConfigError(source, "(top level)", type(data).__name__, "is not a mapping")
    problems: list[ConfigError] = []
    known = ("warning_ratio", USER.section, DEPARTMENT.section)
    for key in sorted(map(str, set(data) - set(known))):
        problems.append(ConfigError(source, key, data[key], f"is not a known field ({', '.join(known)})"))
    ratio = data.get("warning_ratio", 0.8)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        problems.append(ConfigError(source, "warning_ratio", ratio, "is not a number between 0 and 1 (exclusive)"))
        ratio = 0.8
    quotas = Quotas(float(ratio), _scope(data.get(USER.section), source, USER.section, problems),
                    _scope(data.get(DEPARTMENT.section), source, DEPARTMENT.section, problems), source)
    if problems:
        raise ConfigProblemsError(problems)
    if not quotas.users.kinds() and not quotas.departments.kinds():
        raise ConfigError(source, "(top level)", dict(data), "sets no limit for users or departments")
    return quotas


def load_quotas(path: Path) -> Quotas:
    """The quota file, validated; raises ConfigError naming file, field and value."""
    source = f"quota file {path}"
    return parse_quotas(read_yaml(path, "quota file"), source)


def suspicious_changes(old: Quotas, new: Quotas) -> list[str]:
    """What a reload does that is more often a bad edit (a file cut short, a digit too many) than a
    decision: overrides that vanished (those principals fall back to the default) and limits raised more
    than tenfold. Each item names the scope, the principal and the numbers, for one warning line."""
    found = []
    for scope in (USER, DEPARTMENT):
        before, after = old.limits(scope), new.limits(scope)
        for name in sorted(set(before.overrides) - set(after.overrides)):
            found.append(f"{scope.section} override {name!r} dropped (now the default)")
        pairs = [("default", before.default, after.default)] + [
            (repr(name), before.overrides[name], after.overrides[name])
            for name in sorted(set(before.overrides) & set(after.overrides))]
        for who, was, now in pairs:
            for kind in KINDS:
                a, b = was.get(kind), now.get(kind)
                if a is not None and (b is None or b > 10 * a):
                    found.append(f"{scope.section} {who} {kind} limit {a:g} -> {'none' if b is None else f'{b:g}'}")
    return found
