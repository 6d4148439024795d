"""`otel-tokens quota ...`: grants, resets, approvals and the audit log from a terminal. The quota file and the
store come from --quota-file / --store or the same OTEL_TOKENS_QUOTA_FILE / OTEL_TOKENS_BUDGET_STORE the apps use;
with --rules FILE (and --reload URL) each change re-renders the rule file the ruler reads, so a grant's start
counts there too (its end needs nothing: the rendered series stops on its own)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from otel_tokens.config.errors import ConfigError
from otel_tokens.ops.grant_desk import GrantDesk, GrantError, principal_id
from otel_tokens.quota.calendar import load_zone
from otel_tokens.quota.file import Quotas, load_quotas
from otel_tokens.quota.grants.model import Grant
from otel_tokens.quota.vocabulary import BY_NAME

ENV_QUOTA_FILE, ENV_STORE, ENV_AUDIT = "OTEL_TOKENS_QUOTA_FILE", "OTEL_TOKENS_BUDGET_STORE", "OTEL_TOKENS_AUDIT_LOG"
ENV_APPROVER_TOKEN, ENV_APPROVER_TOKEN_FILE = "OTEL_TOKENS_APPROVER_TOKEN", "OTEL_TOKENS_APPROVER_TOKEN_FILE"
UNITS = {"m": 60, "h": 3600, "d": 86400}


def add_parser(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quota-file", type=Path, help="default: OTEL_TOKENS_QUOTA_FILE")
    common.add_argument("--store", help="the budget store, for usage (default: OTEL_TOKENS_BUDGET_STORE)")
    common.add_argument("--audit-log", type=Path, help="default: OTEL_TOKENS_AUDIT_LOG, else the quota file's "
                        "grants.audit_log")
    common.add_argument("--rules", type=Path, help="re-render this rule file after each change")
    common.add_argument("--reload", metavar="URL", help="then ask this Prometheus (or vmalert) to reload")
    common.add_argument("--for", dest="for_", default="15s", help="the alerts' `for`, as `otel-tokens rules --for` "
                        "rendered them (default 15s)")
    quota = commands.add_parser("quota", help="temporary increases (grants), resets, approvals, the audit log")
    actions = quota.add_subparsers(dest="action", required=True)

    def who(parser: argparse.ArgumentParser, required: bool = True) -> None:
        group = parser.add_mutually_exclusive_group(required=required)
        for scope in BY_NAME:
            group.add_argument(f"--{scope}", metavar="NAME")

    grant = actions.add_parser("grant", parents=[common], help="raise a principal's limit in one window until a time")
    who(grant)
    grant.add_argument("--tokens", type=float)
    grant.add_argument("--cost", type=float)
    grant.add_argument("--window", help="default: the one window with a limit of that kind")
    grant.add_argument("--until", help="+2h, +30m, +1d, an ISO time (the quota file's zone unless it names one), "
                       "or `end` (default: the window's end; the sliding windows': a day from now)")
    grant.add_argument("--beyond-window", action="store_true", help="let --until reach past the window's end")
    for parser in (grant, reset := actions.add_parser("reset", parents=[common], help="grant the window's usage "
                                                      "until it ends: the principal starts over, nothing deleted")):
        parser.add_argument("--reason", required=True)
        parser.add_argument("--by", required=True, help="who asks (the requester, when approval is required)")
    who(reset)
    reset.add_argument("--window", action="append", help="default: every window with a limit (repeatable)")
    approve = actions.add_parser("approve", parents=[common], help="approve a pending grant with your own token")
    reject = actions.add_parser("reject", parents=[common], help="refuse a pending grant with your own token")
    for parser in (approve, reject):
        parser.add_argument("id")
        parser.add_argument("--token-file", type=Path, help="your approver token (default: "
                            "OTEL_TOKENS_APPROVER_TOKEN_FILE, else OTEL_TOKENS_APPROVER_TOKEN)")
    revoke = actions.add_parser("revoke", parents=[common], help="end a grant now")
    revoke.add_argument("id")
    revoke.add_argument("--by", required=True)
    listing = actions.add_parser("list", parents=[common], help="the grants (pending and in force; --all: every one)")
    who(listing, required=False)
    listing.add_argument("--all", action="store_true")
    show = actions.add_parser("show", parents=[common], help="usage, limit, grants and what remains, per window")
    who(show)
    audit = actions.add_parser("audit", parents=[common], help="check the audit log's chain and anchors")
    audit.add_argument("--verify", action="store_true", help="(the default)")
    audit.add_argument("--anchor", action="store_true", help="record the log's head in its anchor file")
    approver = actions.add_parser("approver", parents=[common], help="make NAME an approver: writes the hash of a "
                                  "new token to grants.approvers and prints the token once")
    approver.add_argument("name")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (GrantError, ConfigError, ValueError) as error:
        print(f"otel-tokens quota {args.action}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"otel-tokens quota {args.action}: {error}", file=sys.stderr)
        return 3
    except Exception as error:
        from otel_tokens.audit import AuditError

        if not isinstance(error, AuditError):
            raise
        print(f"otel-tokens quota {args.action}: nothing changed: {error}", file=sys.stderr)
        return 3


def _run(args: argparse.Namespace) -> int:
    path = args.quota_file or (Path(os.environ[ENV_QUOTA_FILE]) if os.environ.get(ENV_QUOTA_FILE) else None)
    if path is None:
        raise GrantError("give --quota-file or set OTEL_TOKENS_QUOTA_FILE")
    quotas = load_quotas(path, budget=True)
    audit = audit_log(quotas, args.audit_log)
    if args.action == "audit":
        return _audit(args, audit)
    if args.action == "approver":
        return _approver(quotas, args.name)
    desk = GrantDesk(quotas, audit, publisher(quotas, args.rules, args.reload, args.for_))
    scope, principal = next(((s, getattr(args, s)) for s in BY_NAME if getattr(args, s, None)), (None, None))
    action = args.action
    if action == "grant":
        assert scope is not None and principal is not None
        amounts = {k: v for k, v in (("tokens", args.tokens), ("cost", args.cost)) if v is not None}
        until = parse_until(args.until, quotas.timezone) if args.until not in (None, "end") else None
        made = desk.grant(scope, principal, amounts, args.reason, args.by, args.window, until, args.beyond_window)
        print(describe(made, time.time(), quotas.timezone))
    elif action == "reset":
        assert scope is not None and principal is not None
        from otel_tokens.ops.grant_show import usage_of

        windows = args.window or [w for w in desk.windows_with(scope, principal, []) if w not in ("minute",
                                                                                                  "concurrent")]
        used = usage_of(quotas, _store(args), scope, principal_id(scope, principal), windows)
        for made in desk.reset(scope, principal, used, args.reason, args.by):
            print(describe(made, time.time(), quotas.timezone))
    elif action in ("approve", "reject"):
        approver = _approver_identity(quotas, args.token_file)
        made = desk.approve(args.id, approver) if action == "approve" else desk.revoke(args.id, approver, "rejected")
        print(describe(made, time.time(), quotas.timezone))
    elif action == "revoke":
        print(describe(desk.revoke(args.id, args.by), time.time(), quotas.timezone))
    else:
        from otel_tokens.ops.grant_show import listing, show

        print(listing(desk, scope, principal, args.all) if action == "list" else
              show(desk, _store(args), scope or "user", principal_id(scope or "user", principal or "")))
    if audit is not None and action not in ("list", "show"):
        from otel_tokens.audit import anchor

        anchor(audit)  # the CLI's user, not the apps, writes the anchor file
    return 0


def audit_log(quotas: Quotas, given: Path | None) -> Any:
    from otel_tokens.audit import AuditLog

    path = given or (Path(os.environ[ENV_AUDIT]) if os.environ.get(ENV_AUDIT) else None) or quotas.grants.audit_log
    return AuditLog(path) if path is not None else None


def publisher(quotas: Quotas, rules: Path | None, reload: str | None, for_: str = "15s") -> Any:
    if rules is None:
        return None

    def publish(grants: list[Grant]) -> None:
        from otel_tokens.ops.rules import render_text

        text = render_text(quotas, for_, grants=grants)
        tmp = rules.with_name(f".{rules.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(rules)
        if reload:
            from otel_tokens.prometheus_api import Prometheus

            Prometheus(reload).reload()

    return publish


def parse_until(text: str, zone: str) -> float:
    """+2h / +30m / +1d from now, or an ISO 8601 time (without an offset: in the quota file's zone)."""
    text = text.strip()
    if text.startswith("+") and text[-1:] in UNITS and text[1:-1].replace(".", "", 1).isdigit():
        return time.time() + float(text[1:-1]) * UNITS[text[-1]]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise GrantError(f"--until {text!r} is not +2h, +30m, +1d, an ISO 8601 time or `end`") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=load_zone(zone))
    return moment.timestamp()


def describe(grant: Grant, now: float, zone: str) -> str:
    amounts = ", ".join(f"{grant.amount(k):g} {k}" for k in ("tokens", "cost") if grant.amount(k))
    until = datetime.fromtimestamp(grant.until, load_zone(zone)).isoformat(timespec="seconds")
    return (f"{grant.id} {grant.state(now)}: {grant.kind} of {amounts} to {grant.scope} {grant.principal!r} in the "
            f"{grant.window} window until {until} (requested by {grant.requested_by}"
            + (f", approved by {grant.approved_by}" if grant.approved_by else "") + ")")


def _store(args: argparse.Namespace) -> Any:
    url = args.store or os.environ.get(ENV_STORE)
    if not url:
        return None
    from otel_tokens.quota.budget.store import RedisBudgetStore

    return RedisBudgetStore(url, timeout=2.0)


def _approver_identity(quotas: Quotas, token_file: Path | None) -> str:
    from otel_tokens.quota.grants.approvers import identify

    if quotas.grants.approvers is None:
        raise GrantError("the quota file names no grants.approvers file")
    token_path = token_file or (Path(os.environ[ENV_APPROVER_TOKEN_FILE])
                                if os.environ.get(ENV_APPROVER_TOKEN_FILE) else None)
    token = token_path.read_text(encoding="utf-8").strip() if token_path else os.environ.get(ENV_APPROVER_TOKEN, "")
    name = identify(quotas.grants.approvers, token)
    if name is None:
        raise GrantError("the approver token is missing or is no approver's (see `otel-tokens quota approver`)")
    return name


def _approver(quotas: Quotas, name: str) -> int:
    from otel_tokens.quota.grants.approvers import add_approver

    if quotas.grants.approvers is None:
        raise GrantError("the quota file names no grants.approvers file to write")
    token = add_approver(quotas.grants.approvers, name)
    print(token)
    print(f"{name} added to {quotas.grants.approvers}; the token above is shown once", file=sys.stderr)
    return 0


def _audit(args: argparse.Namespace, audit: Any) -> int:
    from otel_tokens.audit import anchor, verify

    if audit is None:
        raise GrantError("no audit log: give --audit-log, OTEL_TOKENS_AUDIT_LOG or the quota file's grants.audit_log")
    if args.anchor:
        seq, _ = anchor(audit)
        print(f"anchored {audit.path} at record {seq}")
        return 0
    problems = verify(audit.path)
    for problem in problems:
        print(problem)
    print(f"{audit.path}: {'intact' if not problems else f'{len(problems)} problems'}", file=sys.stderr)
    return 1 if problems else 0
