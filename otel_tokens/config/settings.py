"""The settings every part of the package reads, as plain frozen values: no behaviour, no runtime import."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_tokens import names
from otel_tokens.quota import vocabulary

OTHER_VALUE = names.OTHER
DEFAULT_SERIES_LIMIT = 2000  # the OTel SDK's default cardinality limit per metric stream
BLOCK_HOLD = 3600.0  # seconds what the last good alert state blocked stays blocked while it cannot be read


@dataclass(frozen=True)
class Endpoint:
    """Another OpenAI-compatible server a downgrade sends the call to (the company's vLLM, Ollama, Xinference).
    Its key is read from `api_key_env` when a call is moved; the caller's own key never goes there."""

    base_url: str
    host: str | None = None
    port: int | None = None
    api_key_env: str | None = None
    provider: str | None = None  # gen_ai.provider.name there (None: the `providers:` host globs, else the caller's)


@dataclass(frozen=True)
class DowngradeTarget:
    """What a downgrade sends a call to: a cheaper model, on the same server or on `endpoint`."""

    model: str
    endpoint: Endpoint | None = None

    def moves(self, model: str | None) -> bool:
        return self.model != model or self.endpoint is not None


@dataclass(frozen=True)
class GuardRule:
    scope: str  # a scope name (quota/vocabulary.py): "user" | "department"
    action: str  # one of vocabulary.RULE_ACTIONS
    level: str = vocabulary.CRITICAL  # act at critical only, or at warning too
    downgrade: tuple[tuple[str, DowngradeTarget], ...] = ()  # (source model glob, where it goes instead)

    def __post_init__(self) -> None:  # a plain model name as target (the Python spelling before endpoints)
        if any(isinstance(target, str) for _, target in self.downgrade):
            object.__setattr__(self, "downgrade", tuple(
                (glob, DowngradeTarget(target) if isinstance(target, str) else target)
                for glob, target in self.downgrade))


@dataclass(frozen=True)
class AlertSettings:
    """Alert mode: the guard follows the ruler's alerts (or the guard endpoint's state) at `source`."""

    source: str = ""  # http://guard:9095/state, or a Prometheus base URL ending in /api/v1/alerts; "": off
    poll_interval: float = 2.0
    token: str = field(default="", repr=False)  # bearer token for the guard endpoint (OTEL_TOKENS_GUARD_TOKEN)
    token_file: Path | None = None  # where `token` is read from (guard.token_file, OTEL_TOKENS_GUARD_TOKEN_FILE)
    # seconds of failed polls during which the last state is still enforced (a restart, a held connection
    # cap): only then does the guard fail open or closed
    stale_grace: float = 30.0
    # seconds after the last good state during which what it blocked stays blocked, whatever the source
    # does meanwhile (down, flooded, a ruler restarting)
    block_hold: float = BLOCK_HOLD

    @property
    def enabled(self) -> bool:
        return bool(self.source)


@dataclass(frozen=True)
class BudgetSettings:
    """Budget mode: every call reserves its worst case in a shared store; on when both the quota file
    and the store are set (they may come from the file and the environment apart)."""

    quota_file: Path | None = None
    store: str = ""  # redis://host:port/db, rediss://..., unix://...
    store_timeout: float = 0.05  # seconds; the most a call waits for the store
    reservation_ttl: float = 600.0  # a reservation never settled (process killed) is reclaimed after this
    default_max_output_tokens: int = 4096  # reserved for a call that sets no output limit
    quota_reload_interval: float = 1.0
    fit_min_tokens: int = 16  # a `fit` rule: the smallest output limit per choice a call is fitted to, else refused
    # near a limit, a chat prompt is counted with the model's configured HuggingFace tokenizer and chat template
    # (what vLLM counts) instead of bounded by its bytes: False keeps the byte bound, which trusts no tokenizer
    exact_input: bool = True

    @property
    def enabled(self) -> bool:
        return self.quota_file is not None and bool(self.store)


@dataclass(frozen=True)
class GuardSettings:
    """Quota enforcement (the `guard:` section): the two modes apart, and what both obey."""

    alert: AlertSettings = field(default_factory=AlertSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    fail_closed: bool = False
    rules: tuple[GuardRule, ...] = ()


@dataclass(frozen=True)
class Settings:
    currency: str = "USD"
    exchange_rates: Mapping[str, float] = field(default_factory=dict)
    price_file: Path | None = None
    prices: tuple[Mapping[str, Any], ...] = ()  # inline price entries, checked before the price file
    builtin_prices: bool = True
    metric_dimensions: tuple[str, ...] = names.DEFAULT_METRIC_DIMENSIONS
    cardinality_limit: int | None = None  # None: the series limit (distinct values per dimension)
    series_limit: int | None = None  # None: the SDK metric reader's own limit (2000 unless configured)
    price_reload_interval: float = 1.0
    tokenizers: Mapping[str, str] = field(default_factory=dict)  # model glob -> local path, hub id, tiktoken:NAME
    allow_tokenizer_download: bool = False
    provider_name: str = names.PROVIDER_OPENAI  # gen_ai.provider.name of OpenAI-style clients
    providers: Mapping[str, str] = field(default_factory=dict)  # server host glob -> provider name
    stream_include_usage: bool = True  # ask servers for a usage chunk, hidden from the caller (off per server
    # that refuses it)
    propagate: bool = True  # send traceparent and baggage (user.id, department, session.id)
    propagate_hosts: tuple[str, ...] = ()  # globs of hosts that get baggage; () = loopback, private, internal names
    trust_baggage: bool = False  # attribution from inbound baggage (internal hops only: a model server)
    # attribute (user.id, department, session.id) -> request header an authenticating proxy sets; none by default
    trusted_headers: Mapping[str, str] = field(default_factory=dict)
    # the peers whose trusted headers count (the authenticating proxy); () = any peer, warned at start
    trusted_proxies: tuple[str, ...] = ()
    # a proxy's group-list header and the department each group means: (header, {group: department})
    trusted_groups: tuple[str, Mapping[str, str]] | None = None
    unattributed: str = vocabulary.ALLOW  # a call with no user: allow (charged to __unattributed__) | reject
    directory: Path | None = None  # user id -> department (and other dimensions): CSV or YAML, operator data
    directory_precedence: str = "request"  # on a conflict with trusted headers / baggage: request | directory
    guard: GuardSettings = field(default_factory=GuardSettings)  # quota enforcement, off by default
    audit_log: Path | None = None  # refusals, quota reloads (default: the quota file's grants.audit_log)
    capture_content: bool = False  # prompt and completion text on spans (gen_ai.*.messages): opt-in only
    config_file: Path | None = None
    app: str | None = None  # the process's service.name, read from the SDK's resource at instrument time
    errors: tuple[str, ...] = ()  # what was wrong and fell back, for `doctor`
