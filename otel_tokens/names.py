"""Every telemetry name the package emits, in one place.

Prometheus rules, Grafana dashboards and tests import these instead of repeating strings, so a
future semantic-conventions rename (the README's "Telemetry names" lists them) is a one-module change.
"""

from __future__ import annotations

INSTRUMENTATION_SCOPE = "otel_tokens"
# The semantic conventions these names follow (GenAI, as released in v1.41), on the tracer and meter.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"

# --- span / metric attributes (OTel GenAI semconv v1.41) ---------------------------------------
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
# Content, only when OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT opts in: JSON strings in the
# semconv message schema (role, parts[type, content...], finish_reason).
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
CONTENT_ATTRIBUTES: tuple[str, ...] = (GEN_AI_INPUT_MESSAGES, GEN_AI_OUTPUT_MESSAGES, GEN_AI_SYSTEM_INSTRUCTIONS)

# --- attribution and accounting attributes (ours) ---------------------------------------------
USER_ID = "user.id"
SESSION_ID = "session.id"
DEPARTMENT = "department"
# The app: the process's resource `service.name` (OTEL_SERVICE_NAME, `opentelemetry-instrument --service_name`),
# also written on our accounting and quota points so both export paths carry a `service_name` label.
SERVICE_NAME = "service.name"
LLM_USAGE_SOURCE = "llm.usage.source"
LLM_COST = "llm.cost"
LLM_COST_CURRENCY = "llm.cost.currency"
CURRENCY = "currency"

# --- attribute values ---------------------------------------------------------------------------
TOKEN_TYPE_INPUT = "input"
TOKEN_TYPE_OUTPUT = "output"

SOURCE_REPORTED = "reported"  # the server's usage block
SOURCE_COUNTED = "counted"  # counted locally with the model's own tokenizer or tensors: exact
SOURCE_ESTIMATED = "estimated"  # heuristic, no tokenizer

OPERATION_CHAT = "chat"
OPERATION_TEXT_COMPLETION = "text_completion"
OPERATION_EMBEDDINGS = "embeddings"
OPERATION_GENERATE_CONTENT = "generate_content"

PROVIDER_TRANSFORMERS = "transformers"
PROVIDER_OPENAI = "openai"

# --- metric instruments: (OTel name, unit) ---------------------------------------------------
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_LLM_TOKEN_USAGE = "llm.token.usage"
METRIC_LLM_COST = "llm.cost"
METRIC_LLM_REQUESTS = "llm.requests"
# Per principal (the attribution dimensions only): the accounting counters' totals summed over model, token
# type, operation and source, so the quota rules read one series per principal and process.
METRIC_QUOTA_TOKENS = "llm.quota.tokens"
METRIC_QUOTA_COST = "llm.quota.cost"

UNIT_TOKEN = "{token}"
UNIT_SECONDS = "s"
UNIT_REQUEST = "{request}"
UNIT_CURRENCY = "{currency}"

# Semconv advisory bucket boundaries (the SDK defaults are wrong for token counts).
TOKEN_USAGE_BUCKETS: tuple[float, ...] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip

# Attribution dimensions that become metric labels unless configured otherwise. session.id never does.
DEFAULT_METRIC_DIMENSIONS: tuple[str, ...] = (USER_ID, DEPARTMENT)

# Baggage keys read when no usage_context is set.
BAGGAGE_KEYS: tuple[str, ...] = (USER_ID, DEPARTMENT, SESSION_ID)

# Principals of our own, never accepted as real ids (a real id spelled so is escaped with a backslash):
# who pays for a call with no user (or no department), and where metrics fold values past the cap.
UNATTRIBUTED = "__unattributed__"
OTHER = "__other__"
RESERVED_IDS: frozenset[str] = frozenset((UNATTRIBUTED, OTHER))
PRINCIPAL_KEYS: tuple[str, ...] = (USER_ID, DEPARTMENT)  # always set on a call: UNATTRIBUTED when unknown


def prometheus_name(otel_name: str, unit: str, monotonic_counter: bool = False) -> str:
    """The name Prometheus shows after the standard OTel translation (dots to `_`, `s` to
    `_seconds`, braced units dropped, `_total` on monotonic counters)."""
    name = otel_name.replace(".", "_")
    if unit == UNIT_SECONDS:
        name += "_seconds"
    if monotonic_counter:
        name += "_total"
    return name


def prometheus_label(attribute: str) -> str:
    """The Prometheus label name of an attribute key."""
    return attribute.replace(".", "_")


PROM_LLM_TOKEN_USAGE = prometheus_name(METRIC_LLM_TOKEN_USAGE, UNIT_TOKEN, monotonic_counter=True)
PROM_LLM_COST = prometheus_name(METRIC_LLM_COST, UNIT_CURRENCY, monotonic_counter=True)
PROM_LLM_REQUESTS = prometheus_name(METRIC_LLM_REQUESTS, UNIT_REQUEST, monotonic_counter=True)
PROM_QUOTA_TOKENS = prometheus_name(METRIC_QUOTA_TOKENS, UNIT_TOKEN, monotonic_counter=True)
PROM_QUOTA_COST = prometheus_name(METRIC_QUOTA_COST, UNIT_CURRENCY, monotonic_counter=True)
PROM_TOKEN_USAGE = prometheus_name(METRIC_TOKEN_USAGE, UNIT_TOKEN)
PROM_OPERATION_DURATION = prometheus_name(METRIC_OPERATION_DURATION, UNIT_SECONDS)
PROM_TIME_TO_FIRST_CHUNK = prometheus_name(METRIC_TIME_TO_FIRST_CHUNK, UNIT_SECONDS)

# --- quota enforcement (the guard) ---------------------------------------------------------------
LLM_QUOTA_ACTION = "llm.quota.action"  # span attribute: one of quota.vocabulary.ACTIONS
LLM_QUOTA_ORIGINAL_MODEL = "llm.quota.original_model"
# the server the caller asked for, when a downgrade sent the call to another (server.address names the one serving)
LLM_QUOTA_ORIGINAL_SERVER_ADDRESS = "llm.quota.original_server.address"
LLM_QUOTA_ORIGINAL_SERVER_PORT = "llm.quota.original_server.port"
METRIC_GUARD_DECISIONS = "llm.guard.decisions"  # Counter {decision}: non-allow decisions and fail-open
UNIT_DECISION = "{decision}"
GUARD_DECISION = "decision"  # llm.guard.decisions attribute: one of quota.vocabulary.ACTIONS
GUARD_SCOPE = "scope"  # llm.guard.decisions attribute: the scope that decided (user, department, unattributed), or none
GUARD_WINDOW = "window"  # llm.guard.decisions attribute: the window whose limit decided (24h, month), or none
PROM_GUARD_DECISIONS = prometheus_name(METRIC_GUARD_DECISIONS, UNIT_DECISION, monotonic_counter=True)
# The quota vocabulary (scopes, kinds, alert names, actions) is in quota/vocabulary.py.

# litellm's provider names -> gen_ai.provider.name (the semantic conventions' well-known values)
LITELLM_PROVIDERS = {
    "openai": PROVIDER_OPENAI, "text-completion-openai": PROVIDER_OPENAI,
    "azure": "azure.ai.openai", "azure_text": "azure.ai.openai", "azure_ai": "azure.ai.inference",
    "anthropic": "anthropic", "bedrock": "aws.bedrock", "vertex_ai": "gcp.vertex_ai",
    "vertex_ai_beta": "gcp.vertex_ai", "gemini": "gcp.gemini", "cohere": "cohere", "cohere_chat": "cohere",
    "deepseek": "deepseek", "groq": "groq", "mistral": "mistral_ai", "perplexity": "perplexity", "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
}
