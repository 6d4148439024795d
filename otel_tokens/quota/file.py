"""The quota file: per-principal limits in tokens and/or cost over one or more windows, in the
organization's time zone, with defaults, per-name overrides and a warning ratio.

```yaml
timezone: Asia/Shanghai     # IANA name; calendar windows begin at local midnight (default UTC)
warning_ratio: 0.8
users:
  default: {day: {tokens: 200000}, month: {cost: 50}}
  overrides:
    nightly-batch: {day: {tokens: 2000000}}
departments:
  default: {month: {tokens: 50000000, cost: 500}, year: {cost: 5000}}
  overrides: {support: {year: {cost: 12000}}}
apps:                       # keyed by service.name (OTEL_SERVICE_NAME, --service_name)
  overrides: {kb-chat: {month: {cost: 300}}}
```

Windows: `24h` (rolling), `day`, `week` (ISO, Monday), `month`, `year`. The short form
`default: {tokens: N, cost: X}` means the scope's own window (users a rolling 24 h, departments and apps the
calendar month), so quota files written before windows existed keep their meaning. An override sets what it names;
every window and kind it leaves out is the default's.

Errors name the file, the field and the value; unlike the runtime config, a bad quota file is
refused as a whole (it feeds alerting: a half-read quota file would silently drop limits).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from otel_tokens.config import read_yaml
from otel_tokens.config.errors import ConfigError, ConfigProblemsError
from otel_tokens.quota.calendar import (
    ALL_WINDOWS,
    BUCKET_SIZES,
    CONCURRENT,
    DAY,
    MINUTE,
    MONTH,
    RATE_WINDOWS,
    WEEK,
    YEAR,
    UnknownZoneError,
    bucket_divides,
    calendar_bucket,
    load_zone,
    offset_text,
    rules_table,
)
from otel_tokens.quota.grants.policy import GrantPolicy, parse_policy
from otel_tokens.quota.vocabulary import APP, BUDGET_KINDS, DEPARTMENT, KINDS, REQUESTS, SCOPES, USER, QuotaScope
from otel_tokens.text import normalize_id

_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")
_PRINCIPAL = re.compile(r"^[^\"\\\n]+$")  # ends up inside PromQL label values and YAML strings


@dataclass(frozen=True)
class Limits:
    tokens: float | None = None
    cost: float | None = None
    requests: float | None = None  # the minute's requests; the `concurrent` window's calls in flight

    def get(self, kind: str) -> float | None:
        return self.tokens if kind == "tokens" else self.cost if kind == "cost" else self.requests

    def kinds(self) -> list[str]:
        return [k for k in BUDGET_KINDS if self.get(k) is not None]


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
        return Limits(**{k: override.get(k) if override.get(k) is not None else self.default.get(k)
                         for k in BUDGET_KINDS})

    def kinds(self) -> list[str]:
        """Limit kinds set anywhere in this scope."""
        limits = [self.default, *self.overrides.values()]
        return [k for k in BUDGET_KINDS if any(lim.get(k) is not None for lim in limits)]


@dataclass(frozen=True)
class Quotas:
    warning_ratio: float = 0.8
    users: ScopeLimits = field(default_factory=ScopeLimits)  # the users' own window (rolling 24 h)
    departments: ScopeLimits = field(default_factory=ScopeLimits)  # the departments' own (calendar month)
    source: str = "(inline)"
    timezone: str = "UTC"
    # section -> window -> limits, every window the file sets, the scopes' own included
    windows: Mapping[str, Mapping[str, ScopeLimits]] = field(default_factory=dict)
    grants: GrantPolicy = field(default_factory=GrantPolicy)  # where grants live, who approves (quota/grants)

    def limits(self, scope: QuotaScope, window: str | None = None) -> ScopeLimits:
        """The scope's limits over `window` (default: the scope's own window); empty when not set."""
        if window is None or window == scope.window:
            if scope is USER:
                return self.users
            if scope is DEPARTMENT:
                return self.departments
            window = scope.window
        return self.windows.get(scope.section, {}).get(window, ScopeLimits())

    def scope_windows(self, scope: QuotaScope, rates: bool = False) -> list[str]:
        """The windows with a limit in this scope, in the canonical order; the minute and the calls in flight
        (budget mode only) with `rates`."""
        return [w for w in ALL_WINDOWS if (rates or w not in RATE_WINDOWS) and self.limits(scope, w).kinds()]


def _limits(raw: Any, source: str, where: str, problems: list[ConfigError],
            kinds: tuple[str, ...] = KINDS) -> Limits:
    """The limits of one principal; every problem is added to `problems` (and that field left out)."""
    if not isinstance(raw, Mapping):
        example = "{tokens: 20000, requests: 10}" if REQUESTS in kinds else "{tokens: 100000, cost: 5}"
        problems.append(ConfigError(source, where, raw, f"is not a mapping like {example}"))
        return Limits()
    for key in sorted(map(str, set(raw) - set(kinds))):
        problems.append(ConfigError(source, f"{where}.{key}", raw[key], f"is not a known field ({', '.join(kinds)})"))
    values = {}
    for kind in kinds:
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
    if not values and not set(raw) & set(kinds):
        problems.append(ConfigError(source, where, dict(raw), f"sets none of {', '.join(kinds)}"))
    return Limits(**values)


def _concurrent(raw: Any, source: str, where: str, problems: list[ConfigError]) -> Limits:
    """`concurrent: K`: at most K calls in flight at once."""
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw < 10**6:
        problems.append(ConfigError(source, where, raw, "is not a whole number of calls in flight (1 or more)"))
        return Limits()
    return Limits(requests=float(raw))


def _windowed(raw: Any, scope: QuotaScope, source: str, where: str,
              problems: list[ConfigError]) -> dict[str, Limits]:
    """One principal's limits per window: the short form {tokens, cost} is the scope's own window."""
    if isinstance(raw, Mapping) and raw and set(map(str, raw)) <= set(KINDS):
        return {scope.window: _limits(raw, source, where, problems)}
    if not isinstance(raw, Mapping) or not raw:
        problems.append(ConfigError(source, where, raw, "is not a mapping like {tokens: 100000, cost: 5} or "
                                    "{day: {tokens: 100000}, month: {cost: 50}}"))
        return {}
    keys = set(map(str, raw))
    if keys & set(KINDS):
        problems.append(ConfigError(source, where, dict(raw), "mixes limits ({}) with windows ({}): write every "
                                    "limit under its window".format(", ".join(sorted(keys & set(KINDS))),
                                                                      ", ".join(sorted(keys - set(KINDS))))))
        return {}
    out = {}
    for key, value in raw.items():
        if str(key) not in ALL_WINDOWS:
            problems.append(ConfigError(source, f"{where}.{key}", value,
                                        f"is not a known field (tokens, cost, or a window: {', '.join(ALL_WINDOWS)})"))
            continue
        if key == CONCURRENT:
            out[CONCURRENT] = _concurrent(value, source, f"{where}.{key}", problems)
        else:
            out[str(key)] = _limits(value, source, f"{where}.{key}", problems,
                                    (KINDS[0], REQUESTS) if key == MINUTE else KINDS)
    return out


def _scope(raw: Any, scope: QuotaScope, source: str, problems: list[ConfigError]) -> dict[str, ScopeLimits]:
    """The scope's limits per window."""
    where = scope.section
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(ConfigError(source, where, raw, "is not a mapping with `default` and/or `overrides`"))
        return {}
    for key in sorted(map(str, set(raw) - {"default", "overrides"})):
        problems.append(ConfigError(source, f"{where}.{key}", raw[key], "is not a known field (default, overrides)"))
    default = (_windowed(raw["default"], scope, source, f"{where}.default", problems)
               if raw.get("default") is not None else {})
    overrides_raw = raw.get("overrides") or {}
    if not isinstance(overrides_raw, Mapping):
        problems.append(ConfigError(source, f"{where}.overrides", overrides_raw, "is not a mapping of name to limits"))
        overrides_raw = {}
    overrides: dict[str, dict[str, Limits]] = {}
    for name, limits in overrides_raw.items():
        if not isinstance(name, str) or not _PRINCIPAL.match(name):
            problems.append(ConfigError(source, f"{where}.overrides", name,
                                        "is not a valid name (no quotes or backslashes)"))
            continue
        # the spelling calls are charged under: attribution.safe_value; an app's service.name as the counters'
        # service_name label spells it (the collector writes the resource's, unnormalized)
        normal = name if scope is APP else normalize_id(name)
        if normal in overrides:
            problems.append(ConfigError(source, f"{where}.overrides", name,
                                        f"is the same id as another override once normalized ({normal!r})"))
            continue
        overrides[normal] = _windowed(limits, scope, source, f"{where}.overrides.{name}", problems)
    windows = sorted({*default, *(w for o in overrides.values() for w in o)}, key=ALL_WINDOWS.index)
    return {window: ScopeLimits(default.get(window, Limits()),
                                {name: o[window] for name, o in overrides.items() if window in o})
            for window in windows}


def _timezone(raw: Any, source: str, problems: list[ConfigError]) -> str:
    if raw is None:
        return "UTC"
    try:
        load_zone(raw)
    except UnknownZoneError as error:
        problems.append(ConfigError(source, "timezone", raw, str(error).split(": ")[0]))
        return "UTC"
    return str(raw)


def parse_quotas(data: Any, source: str) -> Quotas:
    """The quotas, or ConfigProblemsError listing every problem of the file at once."""
    if data is None:
        raise ConfigError(source, "(file)", "", "is empty: a quota file sets `users:`, `departments:` and/or `apps:`")
    if not isinstance(data, Mapping):
        raise ConfigError(source, "(top level)", type(data).__name__, "is not a mapping")
    problems: list[ConfigError] = []
    known = ("timezone", "warning_ratio", "grants", *(scope.section for scope in SCOPES))
    for key in sorted(map(str, set(data) - set(known))):
        problems.append(ConfigError(source, key, data[key], f"is not a known field ({', '.join(known)})"))
    ratio = data.get("warning_ratio", 0.8)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        problems.append(ConfigError(source, "warning_ratio", ratio, "is not a number between 0 and 1 (exclusive)"))
        ratio = 0.8
    zone = _timezone(data.get("timezone"), source, problems)
    windows = {scope.section: _scope(data.get(scope.section), scope, source, problems) for scope in SCOPES}
    policy = parse_policy(data.get("grants"), source, problems)
    quotas = Quotas(float(ratio), windows[USER.section].get(USER.window, ScopeLimits()),
                    windows[DEPARTMENT.section].get(DEPARTMENT.window, ScopeLimits()), source, zone, windows, policy)
    if problems:
        raise ConfigProblemsError(problems)
    if not any(limits.kinds() for scoped in windows.values() for limits in scoped.values()):
        raise ConfigError(source, "(top level)", dict(data), "sets no limit for users, departments or apps")
    return quotas


RULES_WINDOWS: Mapping[str, tuple[str, ...]] = {USER.name: (USER.window, DAY, WEEK, MONTH, YEAR),
                                                DEPARTMENT.name: (DAY, DEPARTMENT.window, WEEK, YEAR),
                                                APP.name: (DAY, APP.window, WEEK, YEAR)}
HOURLY_WINDOWS = (WEEK, MONTH, YEAR)  # summed from hourly buckets in the rules (half or quarter hours off whole hours)


def require_built(quotas: Quotas, budget: bool = False) -> Quotas:
    """The quotas, or ConfigProblemsError naming each window and zone the rules read but do not yet render
    (so neither the rules nor an operator reading them silently drops a limit the file sets). Budget mode
    (`budget`) enforces every window in any zone: its buckets are computed from the offset in seconds."""
    if budget:
        return quotas
    problems = []
    hourly = [f"{scope.section} {window}" for scope in SCOPES for window in quotas.scope_windows(scope)
              if window in HOURLY_WINDOWS]
    if quotas.timezone != "UTC" and hourly:
        table = rules_table(quotas.timezone)
        if calendar_bucket(table) is None:
            uneven = bucket_divides(table, BUCKET_SIZES[-1])
            problems.append(ConfigError(quotas.source, "timezone", quotas.timezone,
                                        f"has the UTC offset {offset_text(uneven[0])}, not a whole quarter hour: the "
                                        "rules' calendar buckets cannot begin at its local midnight (the "
                                        f"{', '.join(hourly)} there are enforced by budget mode only; the 24h and "
                                        "the days work in any zone)"))
    for scope in SCOPES:
        built = RULES_WINDOWS[scope.name]
        for window in quotas.scope_windows(scope):
            if window not in built:
                limits = quotas.limits(scope, window)
                where = ("default" if limits.default.kinds() else
                         f"overrides.{next(name for name, lim in limits.overrides.items() if lim.kinds())}")
                problems.append(ConfigError(quotas.source, f"{scope.section}.{where}.{window}", window,
                                            f"is read, but the rules of the {window} window of {scope.section} are "
                                            f"not built yet in this version (only {', '.join(built)}): budget "
                                            "mode enforces it"))
    if problems:
        raise ConfigProblemsError(problems)
    return quotas


def budget_only(quotas: Quotas) -> list[str]:
    """What the rules leave to budget mode: the minute and the calls in flight, which an alert (evaluated every
    10 s, fired after its `for`, routed after group_wait) could only report after the burst it should stop."""
    return [f"{scope.section} {window}: enforced by budget mode only, not rendered (an alert would come after the "
            "minute it is about)" for scope in SCOPES for window in RATE_WINDOWS
            if quotas.limits(scope, window).kinds()]


def load_quotas(path: Path, budget: bool = False) -> Quotas:
    """The quota file, validated, with only what the rules render (or, for budget mode, every window); raises
    ConfigError naming file, field and value."""
    source = f"quota file {path}"
    quotas = require_built(parse_quotas(read_yaml(path, "quota file"), source), budget)
    return replace(quotas, grants=quotas.grants.resolved(path))


def suspicious_changes(old: Quotas, new: Quotas) -> list[str]:
    """What a reload does that is more often a bad edit (a file cut short, a digit too many) than a
    decision: overrides that vanished (those principals fall back to the default) and limits raised more
    than tenfold. Each item names the scope, the principal and the numbers, for one warning line."""
    found = []
    for scope in SCOPES:
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
