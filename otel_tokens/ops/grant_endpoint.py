"""Approving grants without a terminal on the server: `POST /grants/<id>/approve` (or `/reject`) on the guard
server, for a chat-ops bot or a ticket system's webhook, and `GET /grants` for what waits.

The caller is the approver whose token it presents (`Authorization: Bearer <approver token>`, checked against the
quota file's grants.approvers hashes); the guard's own token, which Alertmanager and every app hold, approves
nothing. The request rides the guard server's limits (body and header caps, deadlines, connections per peer);
ids are checked before any file is read. Each approval goes through the same desk as the CLI (ops/grant_desk.py):
locked file update, audit record, the rules re-rendered and the ruler reloaded where the guard was told to."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otel_tokens.config.errors import ConfigError
from otel_tokens.ops.grant_desk import GrantDesk, GrantError
from otel_tokens.quota.file import load_quotas
from otel_tokens.quota.grants.file import grant_record

PATH = re.compile(r"^/grants/(?P<id>g-[0-9a-f]{8,32})/(?P<action>approve|reject)$")
PREFIX = "/grants"


@dataclass
class GrantEndpoint:
    quota_file: Path
    rules: Path | None = None
    reload: str | None = None
    audit_log: Path | None = None
    for_: str = "15s"  # the alerts' `for` the rules were rendered with
    clock: Callable[[], float] = time.time

    def handle(self, method: str, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body)."""
        from otel_tokens.ops.quota_cli import audit_log, publisher
        from otel_tokens.quota.grants.approvers import identify

        match = PATH.match(path)
        if path != PREFIX and match is None:
            return 404, {"error": "not found: GET /grants, POST /grants/<id>/approve or /grants/<id>/reject"}
        wanted = "GET" if path == PREFIX else "POST"
        if method != wanted:
            return 405, {"error": f"{path} takes {wanted} only"}
        try:
            quotas = load_quotas(self.quota_file, budget=True)
        except ConfigError as error:
            return 503, {"error": f"the quota file cannot be read: {error}"}
        if quotas.grants.approvers is None:
            return 404, {"error": "the quota file names no grants.approvers: approvals are not enabled"}
        scheme, _, token = (authorization or "").partition(" ")
        try:
            approver = identify(quotas.grants.approvers, token) if scheme.lower() == "bearer" else None
        except ConfigError as error:
            return 503, {"error": f"the approvers file cannot be read: {error}"}
        if approver is None:
            return 401, {"error": "an approver's bearer token is required"}
        audit = audit_log(quotas, self.audit_log)
        desk = GrantDesk(quotas, audit, publisher(quotas, self.rules, self.reload, self.for_), self.clock)
        if match is None:
            now = self.clock()
            return 200, {"pending": [grant_record(g) for g in desk.file.load() if g.state(now) == "pending"]}
        try:
            if match["action"] == "approve":
                grant = desk.approve(match["id"], approver)
            else:
                grant = desk.revoke(match["id"], approver, "rejected")
        except GrantError as error:
            return error.status, {"error": str(error)}
        except OSError as error:
            return 503, {"error": f"the grants file cannot be written: {error.strerror or error}"}
        except Exception as error:
            from otel_tokens.audit import AuditError

            if not isinstance(error, AuditError):
                raise
            return 503, {"error": f"nothing changed: {error}"}
        if audit is not None:
            from otel_tokens.audit import anchor

            anchor(audit)
        return 200, {"grant": grant_record(grant), "by": approver}


def anchor_every(endpoint: GrantEndpoint, seconds: float) -> None:
    """Anchor the audit log's head from the guard's user every `seconds`, so that what the apps appended (their
    refusals) is covered by an anchor they cannot write, not only what the CLI and approvals wrote."""
    import threading

    from otel_tokens.logs import log_once

    def loop() -> None:
        from otel_tokens.audit import anchor
        from otel_tokens.ops.quota_cli import audit_log

        while True:
            time.sleep(seconds)
            try:
                audit = audit_log(load_quotas(endpoint.quota_file, budget=True), endpoint.audit_log)
                if audit is not None and audit.path.exists():
                    anchor(audit)
            except Exception as error:  # a bad quota file or a full disk: said once, tried again next time
                log_once(f"anchor:{endpoint.quota_file}", "otel-tokens guard: cannot anchor the audit log: %s", error)

    threading.Thread(target=loop, name="otel-tokens-anchor", daemon=True).start()
