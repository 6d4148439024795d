"""One configuration surface: a YAML file (`OTEL_TOKENS_CONFIG`) and `OTEL_TOKENS_*` variables.

Variables win over the file. A bad value never stops the app: it is reported once, naming the
file (or variable), the field and the value, and that field falls back to its default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from otel_tokens import names
from otel_tokens.config.errors import ConfigError
from otel_tokens.config.fields import FAIL_SAFE, FIELDS, file_path, parse_bool
from otel_tokens.config.guard_fields import guard_section, store_url
from otel_tokens.config.providers import provider_for_host
from otel_tokens.config.secrets import ENV_GUARD_TOKEN, ENV_GUARD_TOKEN_FILE, token_from
from otel_tokens.config.settings import AlertSettings, DowngradeTarget, GuardSettings, Settings
from otel_tokens.logs import logger

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
ENV_TRUSTED_HEADERS = "OTEL_TOKENS_TRUSTED_HEADERS"
ENV_TRUSTED_PROXIES = "OTEL_TOKENS_TRUSTED_PROXIES"
ENV_UNATTRIBUTED = "OTEL_TOKENS_UNATTRIBUTED"
ENV_DIRECTORY = "OTEL_TOKENS_DIRECTORY"
ENV_AUDIT_LOG = "OTEL_TOKENS_AUDIT_LOG"  # grants, reloads and refusals: JSON lines (otel_tokens/audit)
ENV_TRUSTED_GROUPS = "OTEL_TOKENS_TRUSTED_GROUPS"
ENV_DIRECTORY_PRECEDENCE = "OTEL_TOKENS_DIRECTORY_PRECEDENCE"
ENV_ALLOW_TOKENIZER_DOWNLOAD = "OTEL_TOKENS_ALLOW_TOKENIZER_DOWNLOAD"
ENV_QUOTA_FILE = "OTEL_TOKENS_QUOTA_FILE"  # budget mode: the quota file (as `otel-tokens rules` reads)
ENV_BUDGET_STORE = "OTEL_TOKENS_BUDGET_STORE"  # budget mode: redis://host:port/db
ENV_CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"  # the GenAI instrumentations' switch

OTHER_VALUE = names.OTHER
DEFAULT_SERIES_LIMIT = 2000  # the OTel SDK's default cardinality limit per metric stream
ENV_SERIES_LIMIT = "OTEL_TOKENS_SERIES_LIMIT"


_FIELDS = {**FIELDS, "guard": guard_section}
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
    ENV_TRUSTED_HEADERS: "trusted_headers",
    ENV_TRUSTED_PROXIES: "trusted_proxies",
    ENV_UNATTRIBUTED: "unattributed",
    ENV_DIRECTORY: "directory",
    ENV_AUDIT_LOG: "audit_log",
    ENV_TRUSTED_GROUPS: "trusted_groups",
    ENV_DIRECTORY_PRECEDENCE: "directory_precedence",
    ENV_ALLOW_TOKENIZER_DOWNLOAD: "allow_tokenizer_download",
    ENV_CAPTURE_CONTENT: "capture_content",
}


def _report(errors: list[str], error: ConfigError, consequence: str) -> None:
    message = f"otel-tokens: {error}; {consequence}"
    errors.append(message)
    logger.warning("%s", message)


def _guard_refused(values: dict[str, Any], raw: Any, source: str) -> str:
    """A `guard:` section with a bad field is refused whole, but a `fail_closed: true` in it still holds:
    an operator who asked to refuse calls when enforcement cannot work must not get an open door because
    of a typo elsewhere in the section. With a `source` (alert mode asked for), every call is refused
    until the file is fixed; budget mode from the environment fails closed too."""
    try:
        fail_closed = isinstance(raw, Mapping) and bool(raw.get("fail_closed")) and parse_bool(raw["fail_closed"])
    except ValueError:
        fail_closed = False
    if not fail_closed:
        return "the guard section is off"
    alert_mode = isinstance(raw, Mapping) and raw.get("source") is not None
    invalid = f"(the guard section of {source} is invalid)" if alert_mode else ""
    values["guard"] = GuardSettings(AlertSettings(invalid), fail_closed=True)
    return ("the guard section is off but fail_closed holds: every call is refused until it is fixed"
            if alert_mode else "the guard section is off but fail_closed holds for budget mode")


def _fall_back(values: dict[str, Any], key: str) -> str:
    """What a field that cannot be read becomes: its default, or for a security setting its safe reading."""
    if key in FAIL_SAFE:
        values[key], consequence = FAIL_SAFE[key]
        return consequence
    return "using the default"


MAX_FILE_BYTES = 8 << 20  # a config, price or quota file larger than this is a mistake (or /dev/zero)


def read_yaml(path: Path, what: str) -> Any:
    """Parsed YAML, or ConfigError naming the file. Only a regular file, at most MAX_FILE_BYTES: a
    device or a FIFO named by mistake must not hang start-up."""
    import stat

    import yaml

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path}", "(file)", str(path), "is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{what} {path}", "(file)", str(path), f"is larger than {MAX_FILE_BYTES} bytes")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"{what} {path}", "(file)", str(path), f"is larger than {MAX_FILE_BYTES} bytes")
        text = data.decode("utf-8")
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


def _relative_to(folder: Path, guard: GuardSettings) -> GuardSettings:
    """The guard's files named relative to the config file, not the working directory."""
    quota_file, token_file = guard.budget.quota_file, guard.alert.token_file
    if quota_file is not None and not quota_file.is_absolute():
        guard = replace(guard, budget=replace(guard.budget, quota_file=folder / quota_file))
    if token_file is not None and not token_file.is_absolute():
        guard = replace(guard, alert=replace(guard.alert, token_file=folder / token_file))
    return guard


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
                consequence = _guard_refused(values, raw, source) if key == "guard" else _fall_back(values, key)
                _report(errors, ConfigError(source, key, raw, str(exc)), consequence)
                continue
            if key in ("price_file", "directory", "audit_log") and not value.is_absolute():
                value = config_file.parent / value  # relative to the config file, not the cwd
            if key == "guard":
                value = _relative_to(config_file.parent, value)
            values[key] = value
    for variable, key in _ENV_FIELDS.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[key] = _FIELDS[key](raw)
        except ValueError as exc:
            _report(errors, ConfigError("environment", variable, raw, str(exc)), _fall_back(values, key))
    guard = values.get("guard", GuardSettings())
    alert = guard.alert
    if alert.token_file is not None or env.get(ENV_GUARD_TOKEN) or env.get(ENV_GUARD_TOKEN_FILE):
        try:
            values["guard"] = replace(guard, alert=replace(alert, token=token_from(env, alert.token_file)))
        except ValueError as exc:
            where = ("guard.token_file" if alert.token_file is not None else
                     ENV_GUARD_TOKEN_FILE if env.get(ENV_GUARD_TOKEN_FILE) else ENV_GUARD_TOKEN)
            _report(errors, ConfigError("config" if alert.token_file else "environment", where, "(secret)",
                                        str(exc)), "the guard sends no token")
    budget = {}
    for variable, key, check in ((ENV_QUOTA_FILE, "quota_file", file_path), (ENV_BUDGET_STORE, "store", store_url)):
        raw = env.get(variable)
        if raw:
            try:
                budget[key] = check(raw)
            except ValueError as exc:
                _report(errors, ConfigError("environment", variable, raw, str(exc)), "budget mode stays off")
    if budget:
        guard = values.get("guard", GuardSettings())
        values["guard"] = replace(guard, budget=replace(guard.budget, **budget))
    if "guard" in values:
        values["guard"] = _with_providers(values["guard"], values.get("providers") or {})
    return Settings(**values, config_file=config_file, errors=tuple(errors))


def _with_providers(guard: GuardSettings, providers: Mapping[str, str]) -> GuardSettings:
    """Each downgrade endpoint's provider named, where the config gave none, by the `providers:` host globs: the
    reservation and the recorded call price the served model alike."""

    def named(target: DowngradeTarget) -> DowngradeTarget:
        endpoint = target.endpoint
        if endpoint is None or endpoint.provider is not None:
            return target
        found = provider_for_host(providers, endpoint.host, endpoint.port, "")
        return replace(target, endpoint=replace(endpoint, provider=found)) if found else target

    rules = tuple(replace(r, downgrade=tuple((glob, named(t)) for glob, t in r.downgrade)) for r in guard.rules)
    return replace(guard, rules=rules)
