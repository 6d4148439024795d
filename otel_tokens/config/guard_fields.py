"""The `guard:` section of the config: alert mode's source, budget mode's store and limits, and the rules
(what each scope does at its limit: reject, fit, downgrade, and where a downgrade sends a call)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from otel_tokens.config.fields import (
    _ATTRIBUTE,
    _either,
    duration_seconds,
    file_path,
    parse_bool,
    positive_int,
)
from otel_tokens.config.settings import (
    BLOCK_HOLD,
    AlertSettings,
    BudgetSettings,
    DowngradeTarget,
    Endpoint,
    GuardRule,
    GuardSettings,
)
from otel_tokens.quota import vocabulary

_GUARD_FIELDS = ("enabled", "source", "poll_interval", "fail_closed", "rules", "quota_file", "store",
                 "store_timeout", "reservation_ttl", "default_max_output_tokens", "quota_reload_interval",
                 "token_file", "block_hold", "fit_min_tokens")
_STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def store_url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(_STORE_SCHEMES):
        raise ValueError("is not a redis://, rediss:// or unix:// URL of the budget store")
    return value


def store_timeout_seconds(value: Any) -> float:
    seconds = duration_seconds(value)
    if not 0 < seconds <= 1:
        raise ValueError("is not a timeout between 0 and 1 second (it is what a call may wait for the store)")
    return seconds


def reservation_ttl_seconds(value: Any) -> float:
    seconds = duration_seconds(value)
    if not 10 <= seconds <= 3600:
        raise ValueError("is not between 10 and 3600 seconds (the longest call a reservation outlives)")
    return seconds


def reload_interval_seconds(value: Any) -> float:
    seconds = duration_seconds(value)
    if seconds < 0.05:
        raise ValueError("is under 0.05 seconds (the file would be checked in a busy loop)")
    return seconds


def budget_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    """The budget-mode fields of `guard:`, checked; each error names its field."""
    checks: dict[str, Callable[[Any], Any]] = {
        "quota_file": file_path, "store": store_url, "store_timeout": store_timeout_seconds,
        "reservation_ttl": reservation_ttl_seconds,
        "default_max_output_tokens": positive_int, "quota_reload_interval": reload_interval_seconds,
        "fit_min_tokens": positive_int, "exact_input": parse_bool}
    out = {}
    for key, check in checks.items():
        if value.get(key) is not None:
            try:
                out[key] = check(value[key])
            except ValueError as exc:
                raise ValueError(f"has {key} {value[key]!r} that {exc}") from None
    return out


_TARGET_FIELDS = ("model", "base_url", "api_key_env", "provider")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def downgrade_target(value: Any, where: str) -> DowngradeTarget:
    """A downgrade's target: a model name (same server), or {model, base_url, api_key_env, provider} (another)."""
    if isinstance(value, str) and value:
        return DowngradeTarget(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"has {where} {value!r}, not a model name or a mapping of {', '.join(_TARGET_FIELDS)}")
    unknown = set(value) - set(_TARGET_FIELDS)
    if unknown:
        raise ValueError(f"has {where} with an unknown field {sorted(map(str, unknown))[0]!r}")
    model, base_url = value.get("model"), value.get("base_url")
    if not isinstance(model, str) or not model:
        raise ValueError(f"has {where}.model {model!r}, not a model name")
    if base_url is None:
        return DowngradeTarget(model)
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")) or len(base_url) > 2048:
        raise ValueError(f"has {where}.base_url {base_url!r}, not an http(s) URL")
    key_env, provider = value.get("api_key_env"), value.get("provider")
    if key_env is not None and (not isinstance(key_env, str) or not _ENV_NAME.fullmatch(key_env)):
        raise ValueError(f"has {where}.api_key_env {key_env!r}, not an environment variable's name")
    if provider is not None and (not isinstance(provider, str) or not _ATTRIBUTE.fullmatch(provider)):
        raise ValueError(f"has {where}.provider {provider!r}, not a provider name")
    try:
        parts = urlsplit(base_url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError as exc:
        raise ValueError(f"has {where}.base_url {base_url!r} that cannot be read ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"has {where}.base_url {base_url!r} with no host")
    return DowngradeTarget(model, Endpoint(base_url, parts.hostname, port, key_env, provider))


def guard_section(value: Any) -> GuardSettings:
    if not isinstance(value, Mapping):
        raise ValueError(f"is not a mapping ({', '.join(_GUARD_FIELDS)})")
    unknown = set(value) - set(_GUARD_FIELDS)
    if unknown:
        raise ValueError(f"has an unknown field {sorted(map(str, unknown))[0]!r}")
    budget = budget_fields(value)
    rules = []
    for i, raw in enumerate(value.get("rules") or []):
        where = f"rules[{i}]"
        if not isinstance(raw, Mapping) or set(raw) - {"scope", "quota", "action", "level", "downgrade"}:
            raise ValueError(f"has {where} that is not a mapping of scope, action, level, downgrade")
        if "quota" in raw and "scope" in raw:
            raise ValueError(f"has {where} with both scope and quota (quota is the old name of scope)")
        key = "quota" if "quota" in raw else "scope"  # `quota:`, the old spelling
        if raw.get(key) not in vocabulary.BY_NAME:
            raise ValueError(f"has {where}.{key} {raw.get(key)!r}, not {_either(vocabulary.BY_NAME)}")
        if raw.get("action") not in vocabulary.RULE_ACTIONS:
            raise ValueError(f"has {where}.action {raw.get('action')!r}, not {_either(vocabulary.RULE_ACTIONS)}")
        if raw.get("level", vocabulary.CRITICAL) not in vocabulary.SEVERITY_RANK:
            raise ValueError(f"has {where}.level {raw.get('level')!r}, not critical or warning")
        downgrade = raw.get("downgrade") or {}
        if raw["action"] == vocabulary.DOWNGRADE and (not isinstance(downgrade, Mapping) or not downgrade):
            raise ValueError(f"has {where}.downgrade that is not a mapping of model glob to cheaper model")
        rules.append(GuardRule(raw[key], raw["action"], raw.get("level", vocabulary.CRITICAL),
                               tuple((str(k), downgrade_target(v, f"{where}.downgrade[{str(k)!r}]"))
                                     for k, v in downgrade.items())))
    source = value.get("source")
    enabled = parse_bool(value.get("enabled", source is not None or not budget))  # alert mode
    if enabled and (not isinstance(source, str) or not source.startswith(("http://", "https://"))):
        raise ValueError(f"has source {source!r}, not an http(s) URL of the guard state or Prometheus alerts")
    token_file = file_path(value["token_file"]) if value.get("token_file") is not None else None
    alert = AlertSettings(source if enabled else "", poll_interval_seconds(value.get("poll_interval", 2.0)),
                          token_file=token_file, block_hold=block_hold_seconds(value.get("block_hold", BLOCK_HOLD)))
    return GuardSettings(alert, BudgetSettings(**budget), parse_bool(value.get("fail_closed", False)), tuple(rules))


def seconds_in(field: str, value: Any, low: float, high: float, why: str = "") -> float:
    try:
        seconds = duration_seconds(value)
    except ValueError:
        seconds = -1.0
    if not low <= seconds <= high:
        raise ValueError(f"has {field} {value!r} that is not between {low:g} and {high:g} seconds{why}")
    return seconds


def block_hold_seconds(value: Any) -> float:
    return seconds_in("block_hold", value, 0, 86400, " (how long what the last good state blocked stays blocked "
                       "while the state cannot be read)")


def poll_interval_seconds(value: Any) -> float:
    return seconds_in("poll_interval", value, 0.05, 3600)
