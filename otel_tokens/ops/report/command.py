"""`otel-tokens report`: options, errors as one line and an exit status, the chosen format."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from otel_tokens.config.load import ENV_QUOTA_FILE
from otel_tokens.ops.report import statement_render
from otel_tokens.ops.report.focus import to_focus
from otel_tokens.ops.report.mail import SmtpSettings, build_message, recipients, send, smtp_settings
from otel_tokens.ops.report.model import (
    CALENDAR_DIGESTS,
    CONNECTION_ERROR,
    DATA_ERROR,
    FORMATS,
    PROG,
    UNATTRIBUTED,
    USAGE_ERROR,
    Report,
    ReportError,
    parse_window,
)
from otel_tokens.ops.report.period import Period, between, digest_window, month, zone_of
from otel_tokens.ops.report.png import draw_png
from otel_tokens.ops.report.queries import build, token_timeline
from otel_tokens.ops.report.render import print_table, to_csv, to_json, to_markdown
from otel_tokens.ops.report.statement import build_statement
from otel_tokens.prometheus_api import BAD_URL, NOT_PROMETHEUS, REFUSED, UNREACHABLE, Prometheus, PrometheusError

# --- command ----------------------------------------------------------------------------------------
_PROMETHEUS_EXIT = {BAD_URL: USAGE_ERROR, REFUSED: DATA_ERROR, UNREACHABLE: CONNECTION_ERROR,
                    NOT_PROMETHEUS: CONNECTION_ERROR}


def _options(args: argparse.Namespace) -> tuple[Prometheus, float, str, int, str]:
    fmt = (args.format or "table").lower()
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {args.format!r}: choose one of {', '.join(FORMATS)}", USAGE_ERROR)
    if not args.prometheus:
        raise ReportError("--prometheus URL is required (e.g. --prometheus http://localhost:9090)", USAGE_ERROR)
    window = (args.window or "24h").strip()
    if window not in CALENDAR_DIGESTS:
        parse_window(window)
    try:
        top = int(args.top)
    except (TypeError, ValueError):
        top = 0
    if top < 1:
        raise ReportError(f"bad --top {args.top!r}: use a whole number from 1", USAGE_ERROR)
    if args.at is None:
        at = time.time()
    else:
        try:
            at = float(args.at)
        except ValueError:
            at = math.nan
        if not math.isfinite(at) or at <= 0:
            raise ReportError(f"bad --at {args.at!r}: use a unix time in seconds", USAGE_ERROR)
    return Prometheus(args.prometheus), at, window, top, fmt


def _period(args: argparse.Namespace, fmt: str) -> Period | None:
    """--month or --from/--to: a statement; neither: the digest over --window."""
    chosen = [o for o, v in (("--month", args.month), ("--from", args.since)) if v is not None]
    if len(chosen) > 1:
        raise ReportError("use --month or --from/--to, not both", USAGE_ERROR)
    if args.until is not None and args.since is None:
        raise ReportError("--to needs --from", USAGE_ERROR)
    if chosen and (args.window is not None or args.at is not None or args.png or args.mail_to):
        raise ReportError("--window, --at, --png and --mail-to are for the trailing-window digest, not a statement "
                          "(--month, --from/--to)", USAGE_ERROR)
    if not chosen:
        if fmt == "focus":
            raise ReportError("--format focus needs a period: --month YYYY-MM or --from/--to", USAGE_ERROR)
        return None
    zone = _zone(args)
    return month(args.month, zone) if args.month is not None else between(args.since, args.until, time.time(), zone)


def _zone(args: argparse.Namespace) -> str:
    """--timezone, else the quota file's `timezone:` (--quota-file or OTEL_TOKENS_QUOTA_FILE), else UTC."""
    if args.timezone:
        return zone_of(args.timezone)
    path = args.quota_file or os.environ.get(ENV_QUOTA_FILE)
    if not path:
        return "UTC"
    from otel_tokens.config.errors import ConfigError
    from otel_tokens.quota.file import load_quotas

    try:
        return load_quotas(Path(path), budget=True).timezone
    except ConfigError as error:
        raise ReportError(f"cannot read the time zone of the quota file: {error}", USAGE_ERROR) from None


def _statement(args: argparse.Namespace, prom: Prometheus, period: Period, top: int, fmt: str,
               stdout: TextIO, stderr: TextIO) -> None:
    statement = build_statement(prom, period)
    if fmt == "focus":
        stdout.write(to_focus(statement, args.billing_account))
    elif fmt == "json":
        stdout.write(statement_render.to_json(statement))
    elif fmt == "csv":
        stdout.write(statement_render.to_csv(statement))
    elif fmt == "markdown" or not _has_rich(stderr):
        stdout.write(statement_render.to_markdown(statement, top))
    else:
        statement_render.print_table(statement, top, stdout)


def _mail(prom: Prometheus, report: Report, png_path: str | None, settings: SmtpSettings, to: list[str],
          stderr: TextIO) -> None:
    """Send the digest instead of printing it (a timer's job has no reader), the chart attached."""
    png = None
    if png_path:
        png = Path(png_path).read_bytes()
    else:
        with tempfile.TemporaryDirectory(prefix="otel-tokens-report-") as tmp:
            users = [r.name for r in report.rows["user"] if r.name != UNATTRIBUTED]
            try:
                draw_png(f"{tmp}/usage.png", report, *token_timeline(prom, report.at, report.window_seconds, users))
                png = Path(tmp, "usage.png").read_bytes()
            except ReportError as error:  # no matplotlib: the mail goes without its chart
                print(f"{PROG}: {error}; mailing without the chart", file=stderr)
    send(build_message(report, to, settings.sender, png), settings, to)
    print(f"{PROG}: mailed the digest to {', '.join(to)} via {settings.smarthost}", file=stderr)


def _has_rich(stderr: TextIO) -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        print(f"{PROG}: the table needs rich (pip install 'otel-tokens[report]'); printing markdown", file=stderr)
        return False
    return True


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The `report` subcommand: print the digest or a statement; errors are one line on stderr and an
    exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        prom, at, window, top, fmt = _options(args)
        period = _period(args, fmt)
        if period is not None:
            _statement(args, prom, period, top, fmt, stdout, stderr)
            return 0
        mail = (smtp_settings(), recipients(args.mail_to)) if args.mail_to else None
        zone = _zone(args)
        end, seconds, previous_at, previous_seconds = digest_window(window, at, zone)
        report = build(prom, end, seconds, top, window, zone, (previous_at, previous_seconds), quotas_at=at)
        if args.png:
            users = [r.name for r in report.rows["user"] if r.name != UNATTRIBUTED]
            draw_png(args.png, report, *token_timeline(prom, report.at, report.window_seconds, users))
        if mail is not None:
            _mail(prom, report, args.png, *mail, stderr)
            return 0
        if fmt == "json":
            stdout.write(to_json(report))
        elif fmt == "csv":
            stdout.write(to_csv(report))
        elif fmt == "markdown" or not _has_rich(stderr):
            stdout.write(to_markdown(report))
        else:
            print_table(report, stdout)
        if args.png:
            print(f"wrote {args.png}", file=stderr)
    except ReportError as error:
        print(f"{PROG}: {error}", file=stderr)
        return error.code
    except PrometheusError as error:
        print(f"{PROG}: {error}", file=stderr)
        return _PROMETHEUS_EXIT[error.kind]
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return 130
    except Exception as error:  # never a traceback for a reporting tool; say what broke in one line
        print(f"{PROG}: internal error: {type(error).__name__}: {error}", file=stderr)
        return DATA_ERROR
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://localhost:9090")
    parser.add_argument("--window", default=None, help="Prometheus duration to report on (default 24h; the "
                        "previous window of the same length is the comparison), or `yesterday` / `today`: the local "
                        "day in the organization's zone (--timezone), against the day before / the same hours "
                        "yesterday")
    parser.add_argument("--top", default="5", metavar="N",
                        help="users, departments, apps and models to list (default 5)")
    parser.add_argument("--format", default="table", metavar="FORMAT",
                        help=f"{' | '.join(FORMATS)} (default table)")
    parser.add_argument("--png", metavar="FILE", help="also draw tokens by top user and cost by department and by app")
    parser.add_argument("--at", metavar="UNIX_TIME", help="end of the window (default now)")
    parser.add_argument("--mail-to", action="append", metavar="ADDR",
                        help="mail the digest (text + HTML, the chart attached) instead of printing it; repeat or "
                        "comma-separate; the relay from SMTP_SMARTHOST, SMTP_FROM, SMTP_AUTH_USERNAME, "
                        "SMTP_AUTH_PASSWORD, SMTP_REQUIRE_TLS (as alertmanager.yml)")
    parser.add_argument("--timezone", metavar="TZ", help="the organization's zone (IANA, e.g. Asia/Shanghai): its "
                        "days and months begin at local midnight; times, quota resets and `yesterday` are local "
                        "(default: the quota file's, else UTC)")
    parser.add_argument("--quota-file", metavar="FILE", help=f"the quota file whose `timezone:` to use "
                        f"(default ${ENV_QUOTA_FILE})")
    statement = parser.add_argument_group("statements (exact, every row)")
    statement.add_argument("--month", metavar="YYYY-MM", help="a calendar month in the zone, e.g. 2026-11")
    statement.add_argument("--from", dest="since", metavar="WHEN",
                           help="start: a date (2026-11-01, local midnight), an ISO timestamp or unix seconds")
    statement.add_argument("--to", dest="until", metavar="WHEN",
                           help="end (default now): a date is inclusive (--to 2026-11-30 ends at the next midnight)")
    statement.add_argument("--billing-account", default="otel-tokens", metavar="ID",
                           help="BillingAccountId of the FOCUS export (default otel-tokens)")


def one_line_error(message: str) -> None:
    """argparse's error(), as one line (argparse prints usage and the message on two)."""
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)

