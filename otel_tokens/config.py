"""One configuration surface: a YAML file (`OTEL_TOKENS_CONFIG`) and `OTEL_TOKENS_*` variables.

Variables win over the file. A bad value never stops the app: it is reported once, naming the
file (or variable), the field and the value, and that field falls back to its default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import names, quota_scopes
from .guard import GuardRule, GuardSettings
from .safety import logger

ENV_CONFIG = "OTEL_TOKENS_CONFIG"
ENV_CURRENCY = "OTEL_TOKENS_CURRENCY"
ENV_PRICE_FILE = "OTEL_TOKENS_PRICE_FILE"
ENV_BUILTIN_PRICES = "OTEL_TOKENS_BUILTIN_PRICES"
ENV_METRIC_DIMENSIONS = "OTEL_TOKENS_METRIC_DIMENSIONS"
ENV_CARDINALITY_LIMIT = "OTEL_TOKENS_CARDINALITY_LIMIT"
ENV_PRICE_RELOAD_INTERVAL = "OTEL_TOKENS_PRICE_RELOAD_INTERVAL"
ENV_PROVIDER_NAME = "OTEL_TOKENS_PROVIDER_NAME"
ENV_STREAM_INCLUDE_USAGE = "OTEL_TOKENS_STREAM_INCLUDE_USAGE"
ENV_PROPAGATE = "OTEL_TOKENS_PROPAGATE"
ENV_TRUST_BAGGAGE = "OTEL_TOKENS_TRUST_BAGGAGE"
ENV_ALLOW_TOKENIZER_DOWNLOAD = "OTEL_TOKENS_ALLOW_TOKENIZER_DOWNLOAD"
ENV_QUOTA_FILE = "OTEL_TOKENS_QUOTA_FILE"  # budget mode: the quota file (as `otel-tokens rules` reads)
ENV_BUDGET_STORE = "OTEL_TOKENS_BUDGET_STORE"  # budget mode: redis://host:port/db
ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"  # the GenAI instrumentations' switch

OTHER_VALUE = "__other__"
DEFAULT_SERIES_LIMIT = 2000  # the OTel SDK's default cardinality limit per metric stream
ENV_SERIES_LIMIT = "OTEL_TOKENS_SERIES_LIMIT"


class ConfigError(ValueError):
    """A bad value, with where it came from: `source: field: value: reason`."""

    def __init__(self, source: str, field: str, value: Any, reason: str) -> None:
        self.source, self.field, self.value, self.reason = source, field, value, reason
        super().__init__(f"{source}: {field}: {value!r} {reason}")


@dataclass(frozen=True)
class Settings:
    currency: str = "USD"
    exchange_rates: Mapping[str, float] = field(default_factory=dict)
    price_file: Path | None = None
    prices: tuple[Mapping[str, Any], ...] = ()  # inline price entries, checked before the price file
    builtin_prices: bool = True
    metric_dimensions: tuple[str, ...] = names.DEFAULT_METRIC_DIMENSIONS
    cardinality_limit: int = 5000
    series_limit: int | None = None  # None: the SDK metric reader's own limit (2000 unless configured)
    price_reload_interval: float = 1.0
    tokenizers: Mapping[str, str] = field(default_factory=dict)  # model glob -> local path, hub id, tiktoken:NAME
    allow_tokenizer_download: bool = False
    provider_name: str = names.PROVIDER_OPENAI  # gen_ai.provider.name of OpenAI-style clients
    providers: Mapping[str, str] = field(default_factory=dict)  # server host glob -> provider name
    stream_include_usage: bool = False  # ask servers for a usage chunk, hidden from the caller
    propagate: bool = True  # send traceparent and baggage (user.id, department, session.id)
    propagate_hosts: tuple[str, ...] = ()  # globs of hosts that get baggage; () = loopback, private, internal names
    trust_baggage: bool = False  # attribution from inbound baggage (internal hops only: a model server)
    guard: GuardSettings = field(default_factory=GuardSettings)  # quota enforcement, off by default
    capture_content: bool = False  # prompt and completion text on spans (gen_ai.*.messages): opt-in only
    config_file: Path | None = None
    errors: tuple[str, ...] = ()  # what was wrong and fell back, for `doctor`


# --- field checkers: return the clean value or raise ValueError(reason) ----------------------------
def _currency(value: Any) -> str:
    if not (isinstance(value, str) and len(value) == 3 and value.isalpha()):
        raise ValueError("is not a 3-letter currency code (e.g. USD, CNY)")
    return value.upper()


def _rates(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError("is not a mapping of currency code to rate")
    rates = {}
    for code, rate in value.items():
        code = _currency(code)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise ValueError(f"has a rate for {code} that is not a positive number: {rate!r}")
        rates[code] = float(rate)
    return rates


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("is not a file path")
    return Path(value).expanduser()


def _price_list(value: Any) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError("is not a list of price entries")
    return tuple(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise ValueError("is not true or false")


_CAPTURE_MODES = {"span_only": True, "span_and_event": True, "event_only": True, "no_content": False}


def _capture(value: Any) -> bool:
    """true/false, or the newer GenAI instrumentations' modes (any mode with content records it on the span)."""
    if isinstance(value, str) and value.strip().lower() in _CAPTURE_MODES:
        return _CAPTURE_MODES[value.strip().lower()]
    try:
        return _bool(value)
    except ValueError:
        raise ValueError("is not true, false, SPAN_ONLY, SPAN_AND_EVENT, EVENT_ONLY or NO_CONTENT") from None


def _dimensions(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("is not a list of attribute names")
    if names.SESSION_ID in value:
        raise ValueError(f"names {names.SESSION_ID}, which is never a metric label (unbounded)")
    return tuple(dict.fromkeys(value))


def _host_globs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("is not a list of host globs (e.g. ['*.corp.example', '10.*'])")
    return tuple(v.strip() for v in value)


def _positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("is not a positive integer")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError("is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("is not a non-negative number of seconds")
    return float(value)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                 for k, v in value.items()):
        raise ValueError("is not a mapping of non-empty names to non-empty strings")
    return dict(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("is not a non-empty name")
    return value.strip()


def _either(choices: Any) -> str:
    return " or ".join(choices)


_GUARD_FIELDS = ("enabled", "source", "poll_interval", "fail_closed", "rules", "quota_file", "store",
                 "store_timeout", "reservation_ttl", "default_max_output_tokens", "quota_reload_interval")
_STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def _store(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(_STORE_SCHEMES):
        raise ValueError("is not a redis://, rediss:// or unix:// URL of the budget store")
    return value


def _store_timeout(value: Any) -> float:
    seconds = _seconds(value)
    if not 0 < seconds <= 1:
        raise ValueError("is not a timeout between 0 and 1 second (it is what a call may wait for the store)")
    return seconds


def _reservation_ttl(value: Any) -> float:
    seconds = _seconds(value)
    if not 10 <= seconds <= 3600:
        raise ValueError("is not between 10 and 3600 seconds (the longest call a reservation outlives)")
    return seconds


def _reload_interval(value: Any) -> float:
    seconds = _seconds(value)
    if seconds < 0.05:
        raise ValueError("is under 0.05 seconds (the file would be checked in a busy loop)")
    return seconds


def _budget_fields(value: Mapping[str, Any]) -> dict[str, Any]:
    """The budget-mode fields of `guard:`, checked; each error names its field."""
    checks: dict[str, Callable[[Any], Any]] = {
        "quota_file": _path, "store": _store, "store_timeout": _store_timeout, "reservation_ttl": _reservation_ttl,
        "default_max_output_tokens": _positive_int, "quota_reload_interval": _reload_interval}
    out = {}
    for key, check in checks.items():
        if value.get(key) is not None:
            try:
                out[key] = check(value[key])
            except ValueError as exc:
                raise ValueError(f"has {key} {value[key]!r} that {exc}") from None
    return out


def _guard(value: Any) -> GuardSettings:
    if not isinstance(value, Mapping):
        raise ValueError(f"is not a mapping ({', '.join(_GUARD_FIELDS)})")
    unknown = set(value) - set(_GUARD_FIELDS)
    if unknown:
        raise ValueError(f"has an unknown field {sorted(map(str, unknown))[0]!r}")
    budget = _budget_fields(value)
    rules = []
    for i, raw in enumerate(value.get("rules") or []):
        where = f"rules[{i}]"
        if not isinstance(raw, Mapping) or set(raw) - {"quota", "action", "level", "downgrade"}:
            raise ValueError(f"has {where} that is not a mapping of quota, action, level, downgrade")
        if raw.get("quota") not in quota_scopes.BY_NAME:
            raise ValueError(f"has {where}.quota {raw.get('quota')!r}, not {_either(quota_scopes.BY_NAME)}")
        if raw.get("action") not in quota_scopes.RULE_ACTIONS:
            raise ValueError(f"has {where}.action {raw.get('action')!r}, not {_either(quota_scopes.RULE_ACTIONS)}")
        if raw.get("level", quota_scopes.CRITICAL) not in quota_scopes.SEVERITY_RANK:
            raise ValueError(f"has {where}.level {raw.get('level')!r}, not critical or warning")
        downgrade = raw.get("downgrade") or {}
        if raw["action"] == quota_scopes.DOWNGRADE and (not isinstance(downgrade, Mapping) or not downgrade):
            raise ValueError(f"has {where}.downgrade that is not a mapping of model glob to cheaper model")
        rules.append(GuardRule(raw["quota"], raw["action"], raw.get("level", quota_scopes.CRITICAL),
                               tuple((str(k), str(v)) for k, v in downgrade.items())))
    source = value.get("source")
    enabled = _bool(value.get("enabled", source is not None or not budget))  # alert mode
    if enabled and (not isinstance(source, str) or not source.startswith(("http://", "https://"))):
        raise ValueError(f"has source {source!r}, not an http(s) URL of the guard state or Prometheus alerts")
    return GuardSettings(enabled, source or "", _seconds(value.get("poll_interval", 2.0)) or 2.0,
                         _bool(value.get("fail_closed", False)), tuple(rules), **budget)


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "currency": _currency,
    "exchange_rates": _rates,
    "price_file": _path,
    "prices": _price_list,
    "builtin_prices": _bool,
    "metric_dimensions": _dimensions,
    "cardinality_limit": _positive_int,
    "series_limit": _positive_int,
    "price_reload_interval": _seconds,
    "tokenizers": _string_map,
    "allow_tokenizer_download": _bool,
    "provider_name": _name,
    "providers": _string_map,
    "stream_include_usage": _bool,
    "propagate": _bool,
    "propagate_hosts": _host_globs,
    "trust_baggage": _bool,
    "guard": _guard,
    "capture_content": _capture,
}
_ENV_FIELDS = {
    ENV_CURRENCY: "currency",
    ENV_PRICE_FILE: "price_file",
    ENV_BUILTIN_PRICES: "builtin_prices",
    ENV_METRIC_DIMENSIONS: "metric_dimensions",
    ENV_CARDINALITY_LIMIT: "cardinality_limit",
    ENV_SERIES_LIMIT: "series_limit",
    ENV_PRICE_RELOAD_INTERVAL: "price_reload_interval",
    ENV_PROVIDER_NAME: "provider_name",
    ENV_STREAM_INCLUDE_USAGE: "stream_include_usage",
    ENV_PROPAGATE: "propagate",
    ENV_TRUST_BAGGAGE: "trust_baggage",
    ENV_ALLOW_TOKENIZER_DOWNLOAD: "allow_tokenizer_download",
    ENV_CAPTURE_CONTENT: "capture_content",
}


def _report(errors: list[str], error: ConfigError, consequence: str) -> None:
    message = f"otel-tokens: {error}; {consequence}"
    errors.append(message)
    logger.warning("%s", message)


def read_yaml(path: Path, what: str) -> Any:
    """Parsed YAML, or ConfigError naming the file."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {path}", "(file)", str(path), f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}", f"byte {exc.start}", str(path), "is not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise ConfigError(f"{what} {path}", where, str(path), f"is not valid YAML: {getattr(exc, 'problem', exc)}"
                          ) from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `OTEL_TOKENS_CONFIG` and the `OTEL_TOKENS_*` variables; never raises."""
    env = os.environ if environ is None else environ
    errors: list[str] = []
    values: dict[str, Any] = {}
    config_file = None
    if env.get(ENV_CONFIG):
        config_file = Path(env[ENV_CONFIG]).expanduser()
        source = f"config {config_file}"
        try:
            data = read_yaml(config_file, "config")
        except ConfigError as exc:
            _report(errors, exc, "using the defaults")
            data = None
        if data is not None and not isinstance(data, Mapping):
            _report(errors, ConfigError(source, "(top level)", type(data).__name__, "is not a mapping"),
                    "using the defaults")
            data = None
        for key, raw in (data or {}).items():
            check = _FIELDS.get(key)
            if check is None:
                _report(errors, ConfigError(source, str(key), raw, f"is not a known field ({', '.join(_FIELDS)})"),
                        "ignored")
                continue
            try:
                value = check(raw)
            except ValueError as exc:
                _report(errors, ConfigError(source, key, raw, str(exc)), "using the default")
                continue
            if key == "price_file" and not value.is_absolute():
                value = config_file.parent / value  # relative to the config file, not the cwd
            if key == "guard" and value.quota_file is not None and not value.quota_file.is_absolute():
                value = replace(value, quota_file=config_file.parent / value.quota_file)
            values[key] = value
    for variable, key in _ENV_FIELDS.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[key] = _FIELDS[key](raw)
        except ValueError as exc:
            _report(errors, ConfigError("environment", variable, raw, str(exc)), "using the default")
    budget = {}
    for variable, key, check in ((ENV_QUOTA_FILE, "quota_file", _path), (ENV_BUDGET_STORE, "store", _store)):
        raw = env.get(variable)
        if raw:
            try:
                budget[key] = check(raw)
            except ValueError as exc:
                _report(errors, ConfigError("environment", variable, raw, str(exc)), "budget mode stays off")
    if budget:
        values["guard"] = replace(values.get("guard", GuardSettings()), **budget)
    return Settings(**values, config_file=config_file, errors=tuple(errors))
