"""The neutral record of one LLM call: what every integration builds and the recorder consumes.

Integrations fill this and nothing else, so adding a client library means writing only its
wrapper (DESIGN.md, "Data flow").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class CallRecord:
    operation: str
    provider: str
    request_model: str
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    usage_source: str | None = None  # names.SOURCE_*; None when no count was obtained
    error_type: str | None = None
    time_to_first_chunk_s: float | None = None
    server_address: str | None = None
    server_port: int | None = None
    streaming: bool = False
    quota_action: str | None = None  # what the guard did: one of quota_scopes.ACTIONS
    original_model: str | None = None  # the model asked for, when the guard downgraded it
    # a stream closed, abandoned or cut before its end with no usage block: what was read is counted,
    # but the server may have generated up to the request's limit (budget mode settles at its reservation)
    unfinished: bool = False
    # content, filled only when capture is enabled: semconv message lists, serialized by the recorder
    input_messages: list[dict[str, Any]] | None = None
    output_messages: list[dict[str, Any]] | None = None
    system_instructions: list[dict[str, Any]] | None = None


@dataclass(slots=True, frozen=True)
class UsageEstimate:
    """A call's worst case before it is sent, what a budget guard reserves: an upper bound of the
    prompt's tokens (never below what the server will count), the most output tokens asked for
    (None: no limit given), and how many completions."""

    input_tokens: int
    max_output_tokens: int | None = None
    choices: int = 1
