"""The config's field checkers, public so the CLI and tools check values alike: each returns the clean
value or raises ValueError(reason), which load.py reports naming the file (or variable), the field and
the value."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from otel_tokens import names
from otel_tokens.config.settings import BLOCK_HOLD, AlertSettings, BudgetSettings, GuardRule, GuardSettings
from otel_tokens.logs import logger
from otel_tokens.quota import vocabulary


# --- field checkers: return the clean value or raise ValueError(reason) ----------------------------
def currency_code(value: Any) -> str:
    if not (isinstance(value, str) and len(value) == 3 and value.isalpha()):
        raise ValueError("is not a 3-letter currency code (e.g. USD, CNY)")
    return value.upper()


def exchange_rates(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError("is not a mapping of currency code to rate")
    rates = {}
    for code, rate in value.items():
        code = currency_code(code)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1e9:
            raise ValueError(f"has a rate for {code} that is not a positive number: {rate!r}")
        rates[code] = float(rate)
    return rates


def file_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("is not a file path")
    return Path(value).expanduser()


def price_list(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError("is not a list of price entries")
    return tuple(value)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise ValueError("is not true or false")


_CAPTURE_MODES = {"span_only": True, "span_and_event": True, "event_only": True, "no_content": False}


def capture_mode(value: Any) -> bool:
    """true/false, or the newer GenAI instrumentations' modes (any mode with content records it on the span)."""
    if isinstance(value, str) and value.strip().lower() in _CAPTURE_MODES:
        return _CAPTURE_MODES[value.strip().lower()]
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError("is not true, false, SPAN_ONLY, SPAN_AND_EVENT, EVENT_ONLY or NO_CONTENT") from None


_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")
# what a typo of the attribution keys looks like; a custom usage_context(**extra) key is fine
_NEAR = {"user": names.USER_ID, "user_id": names.USER_ID, "userid": names.USER_ID, "uid": names.USER_ID,
         "dept": names.DEPARTMENT, "department_id": names.DEPARTMENT, "departement": names.DEPARTMENT,
         "team": names.DEPARTMENT}


def dimension_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("is not a list of attribute names")
    for name in value:
        if not _ATTRIBUTE.fullmatch(name):
            raise ValueError(f"has {name!r}, which is not an attribute name (letters, digits, _ . -)")
        near = _NEAR.get(name.lower()) or next(iter(difflib.get_close_matches(
            name, (names.USER_ID, names.DEPARTMENT), n=1, cutoff=0.75)), None)
        if near is not None and near != name and near not in value:
            logger.warning("otel-tokens: metric_dimensions names %r: did you mean %r? Without it the metrics "
                           "carry no %s label, and quotas and dashboards see nobody (kept as a custom key)",
                           name, near, names.prometheus_label(near))
    if names.SESSION_ID in value:
        raise ValueError(f"names {names.SESSION_ID}, which is never a metric label (unbounded)")
    return tuple(dict.fromkeys(value))


def host_globs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("is not a list of host globs (e.g. ['*.corp.example', '10.*'])")
    return tuple(v.strip() for v in value)


_HEADER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
# Headers a client always controls or that carry credentials (which would become metric labels).
_NEVER_TRUSTED = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie", "host", "baggage",
                            "traceparent", "tracestate", "user-agent", "referer", "origin", "content-type",
                            "content-length", "x-api-key", "api-key"))


def trusted_proxies(value: Any) -> tuple[str, ...]:
    """CIDRs (or addresses) of the authenticating proxy, and `unix` for a proxy on a Unix socket; a string
    reads `10.0.0.5,10.1.0.0/16`. Checked here, parsed where requests are read."""
    import ipaddress

    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("is not a list of the proxy's addresses or CIDRs (e.g. [10.0.0.5, 10.1.0.0/16])")
    out = []
    for item in value:
        if item == "unix":
            out.append(item)
            continue
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise ValueError(f"holds {item!r}, not an IP address or CIDR (or unix)") from None
    return tuple(out)


def trusted_headers(value: Any) -> dict[str, str]:
    """{attribute: header}; a string reads `user.id=X-Forwarded-User,department=X-Forwarded-Groups`."""
    if isinstance(value, str):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if not all(len(pair) == 2 for pair in pairs):
            raise ValueError("is not a list of attribute=Header pairs (e.g. user.id=X-Forwarded-User)")
        value = {k.strip(): v.strip() for k, v in pairs}
        if len(value) < len(pairs):
            raise ValueError("maps one attribute twice")
    if not isinstance(value, Mapping) or not value:
        raise ValueError("is not a mapping of attribute to request header (e.g. {user.id: X-Forwarded-User})")
    out = {}
    for attribute, header in value.items():
        if attribute not in names.BAGGAGE_KEYS:
            raise ValueError(f"maps {attribute!r}, not one of {', '.join(names.BAGGAGE_KEYS)}")
        if not isinstance(header, str) or not header or not set(header.lower()) <= _HEADER_CHARS:
            raise ValueError(f"maps {attribute} to {header!r}, which is not an HTTP header name")
        if header.lower() in _NEVER_TRUSTED:
            raise ValueError(f"maps {attribute} to {header}, which every client sets or which carries "
                             "credentials: name the header your authenticating proxy sets")
        out[attribute] = header.lower()
    if len(set(out.values())) < len(out):
        raise ValueError("maps two attributes to the same header")
    return out


def trusted_groups(value: Any) -> tuple[str, dict[str, str]]:
    """(header, {group: department}): the department from a proxy's group-list header (X-Forwarded-Groups:
    a,b). A string reads `X-Forwarded-Groups:cs-team=support,ai-lab=research`."""
    if isinstance(value, str):
        header, _, pairs = value.partition(":")
        split = [part.split("=", 1) for part in pairs.split(",") if part.strip()]
        if not all(len(pair) == 2 for pair in split):
            raise ValueError("is not Header:group=department,... (e.g. X-Forwarded-Groups:cs-team=support)")
        value = {"header": header.strip(), "departments": {g.strip(): d.strip() for g, d in split}}
    if not isinstance(value, Mapping) or set(value) != {"header", "departments"}:
        raise ValueError("is not {header: X-Forwarded-Groups, departments: {group: department, ...}}")
    header = trusted_headers({names.DEPARTMENT: value["header"]})[names.DEPARTMENT]
    departments = value["departments"]
    if not isinstance(departments, Mapping) or not departments:
        raise ValueError("has no departments: map each group to its department ({cs-team: support})")
    out = {}
    for group, department in departments.items():
        if not isinstance(group, str) or not group.strip() or "," in group:
            raise ValueError(f"has group {group!r}, not one group name")
        if not isinstance(department, str) or not department.strip() or "," in department:
            raise ValueError(f"maps group {group!r} to {department!r}, not one department")
        out[group.strip()] = department.strip()
    return header, out


def unattributed_policy(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in vocabulary.UNATTRIBUTED_POLICIES:
        raise ValueError(f"is not {_either(vocabulary.UNATTRIBUTED_POLICIES)}")
    return value.strip().lower()


# A security setting that cannot be read is taken at its safe reading, not at its default.
FAIL_SAFE = {"unattributed": (vocabulary.REJECT, "refusing calls with no user until it is fixed"),
             "trusted_proxies": (("none",), "no peer's trusted headers count until it is fixed")}


def positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000_000:
        raise ValueError("is not an integer between 1 and 10,000,000")
    return value


def duration_seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
        raise ValueError("is not a number of seconds between 0 and 86400")  # nan and inf fail here too
    return float(value)


def string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                 for k, v in value.items()):
        raise ValueError("is not a mapping of non-empty names to non-empty strings")
    return dict(value)


def plain_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is not a non-empty name")
    return value.strip()


def _either(choices: Any) -> str:
    return " or ".join(choices)


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
        "fit_min_tokens": positive_int}
    out = {}
    for key, check in checks.items():
        if value.get(key) is not None:
            try:
                out[key] = check(value[key])
            except ValueError as exc:
                raise ValueError(f"has {key} {value[key]!r} that {exc}") from None
    return out


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
                               tuple((str(k), str(v)) for k, v in downgrade.items())))
    source = value.get("source")
    enabled = parse_bool(value.get("enabled", source is not None or not budget))  # alert mode
    if enabled and (not isinstance(source, str) or not source.startswith(("http://", "https://"))):
        raise ValueError(f"has source {source!r}, not an http(s) URL of the guard state or Prometheus alerts")
    token_file = file_path(value["token_file"]) if value.get("token_file") is not None else None
    alert = AlertSettings(source if enabled else "", poll_interval_seconds(value.get("poll_interval", 2.0)),
                          token_file=token_file, block_hold=block_hold_seconds(value.get("block_hold", BLOCK_HOLD)))
    return GuardSettings(alert, BudgetSettings(**budget), parse_bool(value.get("fail_closed", False)), tuple(rules))


DIRECTORY_PRECEDENCES = ("request", "directory")  # who wins when the directory and a request disagree


def directory_precedence(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in DIRECTORY_PRECEDENCES:
        raise ValueError(f"is not one of {', '.join(DIRECTORY_PRECEDENCES)} (which wins when the directory and a "
                         "request's trusted headers or baggage disagree)")
    return text


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


FIELDS: dict[str, Callable[[Any], Any]] = {
    "currency": currency_code,
    "exchange_rates": exchange_rates,
    "price_file": file_path,
    "prices": price_list,
    "builtin_prices": parse_bool,
    "metric_dimensions": dimension_names,
    "cardinality_limit": positive_int,
    "series_limit": positive_int,
    "price_reload_interval": duration_seconds,
    "tokenizers": string_map,
    "allow_tokenizer_download": parse_bool,
    "provider_name": plain_name,
    "providers": string_map,
    "stream_include_usage": parse_bool,
    "propagate": parse_bool,
    "propagate_hosts": host_globs,
    "trust_baggage": parse_bool,
    "trusted_headers": trusted_headers,
    "trusted_proxies": trusted_proxies,
    "unattributed": unattributed_policy,
    "directory": file_path,
    "audit_log": file_path,
    "trusted_groups": trusted_groups,
    "directory_precedence": directory_precedence,
    "guard": guard_section,
    "capture_content": capture_mode,
}
