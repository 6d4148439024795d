"""`otel-tokens doctor`: what would be instrumented, where telemetry goes, how each model is priced.

Run as a command for the static picture (`otel-tokens doctor --model gpt-4o`), or call
`otel_tokens.ops.doctor.report()` inside the app to also see the models it has seen, the counts that
were estimated and the label values that were folded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from otel_tokens import names
from otel_tokens.config import ENV_BUDGET_STORE, ENV_CONFIG, ENV_QUOTA_FILE, ENV_SERIES_LIMIT, load_settings
from otel_tokens.config.errors import ConfigError
from otel_tokens.config.settings import Settings
from otel_tokens.logs import logger
from otel_tokens.pricing import PriceBook
from otel_tokens.prometheus_api import ENV_USER, redacted
from otel_tokens.quota.budget.store import RedisBudgetStore, redact
from otel_tokens.quota.calendar import tzdata_version
from otel_tokens.quota.file import load_quotas
from otel_tokens.quota.vocabulary import SCOPES
from otel_tokens.recording.recorder import Recorder
from otel_tokens.recording.sdk_readers import sdk_series_limit, service_name
from otel_tokens.sdk_setup import agent_protocol, fix_for, missing_exporters, wanted_exporters
from otel_tokens.tokens.counting import TokenCounter
from otel_tokens.version import __version__

_EXPORT_VARIABLES = (
    ("OTEL_SERVICE_NAME", "unknown_service"),
    ("OTEL_TRACES_EXPORTER", "otlp"),
    ("OTEL_METRICS_EXPORTER", "otlp"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318 (http) / :4317 (grpc)"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "60000 ms"),
    ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "(none)"),
    ("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false"),
)


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _active_recorder() -> Recorder | None:
    from otel_tokens.instrumentor import TokenUsageInstrumentor

    return TokenUsageInstrumentor().recorder


def _guard_lines(settings: Settings, recorder: Recorder | None, warnings: list[str]) -> list[str]:
    """Both guard modes: what is on, and for budget mode whether its quota file and store answer."""
    guard = settings.guard
    lines = ["Quota guard"]
    lines.append(f"  alert mode (the rule engine's alert state)         "
                 f"{redacted(guard.alert.source) if guard.alert.enabled else 'off'}")
    if guard.alert.enabled and "/api/v1/alerts" in guard.alert.source:
        credentials = ("in the URL" if "@" in guard.alert.source else f"from {ENV_USER}" if os.environ.get(ENV_USER)
                       else "none")
        lines.append(f"  ruler credentials                                  {credentials}")
    if guard.alert.enabled and "/api/v1/alerts" not in guard.alert.source:
        lines.append(f"  guard endpoint token                               "
                     f"{'set' if guard.alert.token else 'NONE (a guard endpoint with a token answers 401)'}")
    lines.extend(_endpoint_lines(settings, warnings))
    if not guard.budget.enabled:
        lines += [f"  budget mode (hard quotas)                          off (set {ENV_QUOTA_FILE} and "
                  f"{ENV_BUDGET_STORE})", ""]
        return lines
    budget = recorder.enforcement.budget if recorder is not None else None
    limits = guard.budget
    store = budget.store if budget is not None else RedisBudgetStore(limits.store, max(limits.store_timeout, 0.5))
    try:
        quotas = budget.quotas if budget is not None and budget.quotas is not None else load_quotas(
            guard.budget.quota_file, budget=True)  # type: ignore[arg-type]
        zone = "UTC" if quotas.timezone == "UTC" else f"{quotas.timezone}, tzdata {tzdata_version()}"
        file_state = f"{guard.budget.quota_file} (warning ratio {quotas.warning_ratio:g}; calendar in {zone})"
        charged = "; ".join(f"{scope.section} {', '.join(windows)}" for scope in SCOPES
                            if (windows := quotas.scope_windows(scope)))
    except ConfigError as error:
        file_state, charged = f"{guard.budget.quota_file}: INVALID", "none"
        warnings.append(f"budget mode: {error}")
    reachable = store.ping()
    if not reachable:
        warnings.append(f"budget mode: the store {redact(guard.budget.store)} does not answer; calls "
                        f"{'are refused' if guard.fail_closed else 'go through unchecked'} (fail "
                        f"{'closed' if guard.fail_closed else 'open'})")
    lines.append(f"  budget mode (hard quotas)                          on, {len(guard.rules) or 'no'} rules"
                 f"{'' if guard.rules else ' (fit at 100 %: shortened to what remains, else refused)'}")
    lines.append(f"  quota file                                         {file_state}")
    lines.append(f"  windows with a limit                               {charged}")
    lines.append(f"  store                                              {redact(guard.budget.store)} "
                 f"({'answers' if reachable else 'DOES NOT ANSWER'}{', cluster' if store.cluster else ''})")
    lines.append(f"  store timeout / reservation ttl / default output   {guard.budget.store_timeout * 1000:g} ms / "
                 f"{guard.budget.reservation_ttl:g} s / {guard.budget.default_max_output_tokens} tokens")
    lines.append("")
    return lines


def _endpoint_lines(settings: Settings, warnings: list[str]) -> list[str]:
    """Where each downgrade to another server sends its calls, and whether that server's key is there to send."""
    lines = []
    for rule in settings.guard.rules:
        for glob, target in rule.downgrade:
            endpoint = target.endpoint
            if endpoint is None:
                continue
            key = "no key (sends EMPTY)"
            if endpoint.api_key_env:
                key = f"key from {endpoint.api_key_env}" + ("" if os.environ.get(endpoint.api_key_env) else " NOT SET")
                if not os.environ.get(endpoint.api_key_env):
                    warnings.append(f"guard: the downgrade of {glob!r} to {redacted(endpoint.base_url)} reads its key "
                                    f"from {endpoint.api_key_env}, which is not set: that server is sent \"EMPTY\"")
            lines.append(f"  downgrade ({rule.scope}, {rule.level}) {glob} -> {target.model} at "
                         f"{redacted(endpoint.base_url)}, {key}")
    return lines


def _series_lines(settings: Settings, recorder: Recorder | None, warnings: list[str]) -> list[str]:
    """The series limit: label sets per metric, and so principals per process in the quota counters; checked
    against the users the quota file names and against what this process folded."""
    limit = recorder.accounting.series_limit if recorder else (settings.series_limit or sdk_series_limit())
    per_dimension = settings.cardinality_limit or limit
    lines = [f"  series limit ({ENV_SERIES_LIMIT})            {limit} label sets per metric: principals per "
             "process in llm.quota.*",
             f"  cardinality limit per dimension                    {per_dimension}"]
    quota_file = settings.guard.budget.quota_file or os.environ.get(ENV_QUOTA_FILE)
    if quota_file:
        with contextlib.suppress(ConfigError):
            named = len(load_quotas(Path(quota_file), budget=True).users.overrides)
            if named > min(limit, per_dimension) * 0.9:
                warnings.append(f"the quota file {quota_file} names {named} users and the series limit is {limit}: "
                                "a process serving more principals counts the rest as '__other__' in llm.quota.*, "
                                f"where their quota rules cannot see them; set {ENV_SERIES_LIMIT} above the "
                                "principals per process")
    folded = recorder.accounting.principals.folded_calls if recorder else 0
    if folded:
        warnings.append(f"{folded} calls were counted as '__other__' in llm.quota.* (over {limit} principals in "
                        f"this process): their quota rules cannot see them; raise {ENV_SERIES_LIMIT}")
    return lines


def _directory_lines(settings: Settings, warnings: list[str]) -> list[str]:
    """The directory as the process would read it now: how many users, or what is wrong with it."""
    from otel_tokens.attribution.directory import INSTALLED, load_directory
    from otel_tokens.config.errors import ConfigError

    if settings.directory is None:
        return ["  who pays: directory                                (none)"]
    live = INSTALLED[0]
    try:
        count = len(live.users) if live is not None else len(load_directory(
            settings.directory, {names.DEPARTMENT, *settings.metric_dimensions} - {names.USER_ID, names.SESSION_ID}))
    except ConfigError as error:
        warnings.append(str(error))
        count = 0
    return [f"  who pays: directory                                {settings.directory} ({count} users; "
            f"{settings.directory_precedence} wins a conflict with a request)"]


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """The package's log records inside the block, kept for the report instead of printed."""
    import logging

    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    handler, propagate = Keep(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def report(models: Iterable[str] = (), provider: str = names.PROVIDER_OPENAI,
           settings: Settings | None = None, recorder: Recorder | None = None) -> str:
    """The doctor's report as text; uses the live recorder of this process when there is one."""
    from otel_tokens.instrumentor import INTEGRATIONS

    recorder = recorder or _active_recorder()
    settings = recorder.settings if recorder else (settings or load_settings())
    prices = recorder.prices if recorder else PriceBook(settings)
    counter = recorder.tokens if recorder else TokenCounter(settings.tokenizers, settings.allow_tokenizer_download)
    warnings: list[str] = []
    lines = [f"otel-tokens {__version__}", ""]

    lines.append("Instrumentation")
    for module, import_name in INTEGRATIONS:
        installed = _installed(import_name)
        if installed is None:
            state = "not installed: not instrumented"
        elif recorder is not None:
            state = f"{installed}: instrumented in this process"
        else:
            state = f"{installed}: instrumented when the app runs under opentelemetry-instrument"
        lines.append(f"  {import_name:14s} {state}   (requires {module.REQUIREMENT})")
    lines.append("")

    lines.append("Export (standard OpenTelemetry variables)")
    for variable, default in _EXPORT_VARIABLES:
        value = os.environ.get(variable)
        lines.append(f"  {variable:50s} {value if value is not None else default + ' (default)'}")
    protocol, why = agent_protocol()
    lines.append(f"  {'OTLP protocol under opentelemetry-instrument':50s} {protocol} ({why})")
    wanted, missing = wanted_exporters(), missing_exporters()
    for signal, components in wanted.items():
        shown = ", ".join(c + (" MISSING" if (signal, c) in missing else "") for c in components) or "none"
        lines.append(f"  {signal + ' exporter the agent loads':50s} {shown}")
    if missing:
        warnings.append("opentelemetry-instrument would fail to configure the SDK and export nothing (it stops "
                        f"before loading any instrumentation): {fix_for(missing)}")
    lines.append("")

    lines.append("Configuration")
    lines.append(f"  {ENV_CONFIG:50s} {settings.config_file or '(not set)'}")
    lines.append(f"  reporting currency                                 {settings.currency}"
                 + (f" (rates: {dict(settings.exchange_rates)})" if settings.exchange_rates else ""))
    lines.append(f"  price file                                         {settings.price_file or '(none)'}")
    lines.append(f"  built-in prices                                    {'on' if settings.builtin_prices else 'off'}")
    lines.append(f"  metric dimensions                                  {', '.join(settings.metric_dimensions)}")
    lines += _series_lines(settings, recorder, warnings)
    app = settings.app or (recorder.settings.app if recorder is not None else None) or service_name()
    lines.append(f"  app (service.name: the apps quota scope)           {app}")
    headers = ", ".join(f"{a} <- {h}" for a, h in settings.trusted_headers.items()) or "(none)"
    lines.append(f"  who pays: trusted request headers                  {headers}")
    if settings.trusted_groups is not None:
        header, groups = settings.trusted_groups
        lines.append(f"  who pays: department from group header             {header} ({len(groups)} groups mapped)")
    lines += _directory_lines(settings, warnings)
    lines.append(f"  who pays: inbound baggage                          "
                 f"{'trusted' if settings.trust_baggage else 'ignored (trust_baggage off)'}")
    lines.append(f"  calls with no user                                 "
                 f"{'refused' if settings.unattributed == 'reject' else 'charged to ' + names.UNATTRIBUTED}")
    warnings.extend(settings.errors)
    warnings.extend(prices.errors)
    lines.append("")
    lines.extend(_guard_lines(settings, recorder, warnings))

    stats = recorder.stats() if recorder else None
    named = [(provider, m) for m in models]
    seen = list(stats.models) if stats else []
    lines.append("Models (price per million tokens)")
    if not named and not seen:
        lines.append("  (none named or seen; name some with --model)")
    for prov, model in [*named, *seen]:
        price = prices.lookup(prov, model)
        if prov == names.PROVIDER_TRANSFORMERS:
            tokenizer = "exact, from the generate tensors"
        else:
            with _captured_warnings() as said:  # what a call would log, said once, in the Warnings section
                counter.tokenizer(model)
            warnings.extend(said)
            tokenizer = f"server usage, else {counter.resolved.get(model, 'estimated')}"
        if price is None:
            lines.append(f"  {model} ({prov}): NO PRICE: calls get no cost; tokens: {tokenizer}")
            warnings.append(f"model {model!r} ({prov}) has no price: add it to the price file")
            continue
        cached = "" if price.cached_input is None else f", cached input {price.cached_input:g}"
        rate = prices.rate(price.currency)
        conversion = "" if price.currency == settings.currency else (
            f" = x{rate:g} {settings.currency}" if rate else f" (NO RATE to {settings.currency}: no cost)")
        lines.append(f"  {model} ({prov}): input {price.input:g}, output {price.output:g}{cached} {price.currency}"
                     f"{conversion}; matched {price.match!r} from {price.origin}"
                     f"{f', {price.date}' if price.date else ''}{f', {price.source}' if price.source else ''};"
                     f" tokens: {tokenizer}")
        if rate is None:
            warnings.append(f"no exchange rate from {price.currency} to {settings.currency}")

    if stats is not None:
        estimated = stats.calls_by_source.get(names.SOURCE_ESTIMATED, 0)
        total = sum(stats.calls_by_source.values())
        if estimated:
            warnings.append(f"{estimated} of {total} calls had estimated token counts (no tokenizer)")
        for dimension, folded in stats.folded.items():
            if folded:
                warnings.append(f"{folded} calls had their {dimension} folded into '__other__' "
                                f"(over {stats.cardinality_limit} distinct values)")
        if stats.series_folded_calls:
            warnings.append(f"{stats.series_folded_calls} calls were folded to stay under the metric reader's "
                            "series limit (raise its cardinality limit and series_limit)")
        for prov, model in stats.unpriced:
            warnings.append(f"model {model!r} ({prov}) was called and has no price")
    lines.append("")
    lines.append("Warnings" if warnings else "No warnings")
    lines.extend(f"  - {w.removeprefix('otel-tokens: ')}" for w in dict.fromkeys(warnings))
    return "\n".join(lines)
