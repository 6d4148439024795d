"""Who is charged for a call: the app's own context, trusted inbound sources, and what goes out."""

from otel_tokens.attribution.context import current_attribution, usage_context

__all__ = ["current_attribution", "usage_context"]
