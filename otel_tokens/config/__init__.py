"""The package's configuration: a YAML file and `OTEL_TOKENS_*` variables read into frozen settings.
Imports nothing that runs on the call path, so the runtime, the CLI and the tests all read it alike."""

from otel_tokens.config.errors import ConfigError, ConfigProblemsError
from otel_tokens.config.load import (
    ENV_ALLOW_TOKENIZER_DOWNLOAD,
    ENV_BUDGET_STORE,
    ENV_BUILTIN_PRICES,
    ENV_CAPTURE_CONTENT,
    ENV_CARDINALITY_LIMIT,
    ENV_CONFIG,
    ENV_CURRENCY,
    ENV_METRIC_DIMENSIONS,
    ENV_PRICE_FILE,
    ENV_PRICE_RELOAD_INTERVAL,
    ENV_PROPAGATE,
    ENV_PROVIDER_NAME,
    ENV_QUOTA_FILE,
    ENV_SERIES_LIMIT,
    ENV_STREAM_INCLUDE_USAGE,
    ENV_TRUST_BAGGAGE,
    ENV_TRUSTED_HEADERS,
    ENV_TRUSTED_PROXIES,
    ENV_UNATTRIBUTED,
    MAX_FILE_BYTES,
    load_settings,
    read_yaml,
)
from otel_tokens.config.settings import (
    BLOCK_HOLD,
    DEFAULT_SERIES_LIMIT,
    OTHER_VALUE,
    GuardRule,
    GuardSettings,
    Settings,
)

__all__ = [
    "BLOCK_HOLD", "DEFAULT_SERIES_LIMIT", "ENV_ALLOW_TOKENIZER_DOWNLOAD", "ENV_BUDGET_STORE", "ENV_BUILTIN_PRICES",
    "ENV_CAPTURE_CONTENT", "ENV_CARDINALITY_LIMIT", "ENV_CONFIG", "ENV_CURRENCY", "ENV_METRIC_DIMENSIONS",
    "ENV_PRICE_FILE", "ENV_PRICE_RELOAD_INTERVAL", "ENV_PROPAGATE", "ENV_PROVIDER_NAME", "ENV_QUOTA_FILE",
    "ENV_SERIES_LIMIT", "ENV_STREAM_INCLUDE_USAGE", "ENV_TRUSTED_HEADERS", "ENV_TRUSTED_PROXIES",
    "ENV_TRUST_BAGGAGE", "ENV_UNATTRIBUTED", "MAX_FILE_BYTES", "OTHER_VALUE", "ConfigError",
    "ConfigProblemsError", "GuardRule", "GuardSettings", "Settings", "load_settings", "read_yaml",
]
