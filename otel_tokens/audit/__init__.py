"""Tamper-evident audit log of quota grants, approvals, revokes, resets, reloads and guard refusals:
hash-chained JSON lines that every process appends to under one lock, anchors that pin the chain's head,
and the verifier compliance review runs. Standard library only."""

from otel_tokens.audit.log import AuditError, AuditLog
from otel_tokens.audit.verify import anchor, default_anchor, verify

__all__ = ["AuditError", "AuditLog", "anchor", "default_anchor", "verify"]
