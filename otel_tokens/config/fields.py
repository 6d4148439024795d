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


DIRECTORY_PRECEDENCES = ("request", "directory")  # who wins when the directory and a request disagree


def directory_precedence(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in DIRECTORY_PRECEDENCES:
        raise ValueError(f"is not one of {', '.join(DIRECTORY_PRECEDENCES)} (which wins when the directory and a "
                         "request's trusted headers or baggage disagree)")
    return text


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
    "capture_content": capture_mode,
}

