"""The `otel-tokens` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from otel_tokens import names
from otel_tokens.config.settings import BLOCK_HOLD


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-tokens", description="LLM token usage telemetry: tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="what is instrumented, where telemetry goes, how models are priced")
    doctor.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="a model name to resolve (repeatable)")
    doctor.add_argument("--provider", default=names.PROVIDER_OPENAI,
                        help="gen_ai.provider.name the named models are called through (default: openai)")
    guard = commands.add_parser("guard", help="serve the rule engine's quota alerts to in-process guards: apps "
                                "read GET /state; Alertmanager's webhook on /alertmanager prompts a re-read")
    guard.add_argument("--listen", default="127.0.0.1:9095", metavar="HOST:PORT",
                       help="address to serve on (default 127.0.0.1:9095; other than loopback only with a token)")
    guard.add_argument("--token-file", type=Path, help="bearer token required of Alertmanager and the apps "
                       "(default: OTEL_TOKENS_GUARD_TOKEN_FILE, else OTEL_TOKENS_GUARD_TOKEN)")
    guard.add_argument("--ruler", action="append", default=[], metavar="URL",
                       help="Prometheus or vmalert base URL (or its .../api/v1/alerts) whose own alert state the "
                            "guard follows; repeat for an HA pair or shards (their union). Credentials: "
                            "OTEL_TOKENS_PROMETHEUS_USER / _PASSWORD_FILE, or user:password@ in the URL")
    guard.add_argument("--resync", action="append", default=[], metavar="URL", help=argparse.SUPPRESS)
    guard.add_argument("--resync-interval", type=float, default=30.0, metavar="SECONDS",
                       help="seconds between two reads of the rulers besides the webhook's prompts (default 30)")
    guard.add_argument("--stale-after", type=float, metavar="SECONDS",
                       help="answer 503 (the apps keep their blocks and act as configured) when the rulers "
                            "have not answered for this long (default 3 x --resync-interval, at least 60)")
    guard.add_argument("--hold", type=float, default=BLOCK_HOLD, metavar="SECONDS",
                       help="the longest a block outlives the rulers' last word on it while they cannot lift "
                            f"it (a ruler restarting, one of several down; default {BLOCK_HOLD:g})")
    guard.add_argument("--quota-file", type=Path, help="serve approvals of grants (POST /grants/<id>/approve with an "
                       "approver's own token) for this quota file (default: OTEL_TOKENS_QUOTA_FILE, if set)")
    guard.add_argument("--rules", type=Path, help="re-render this rule file after each approval")
    guard.add_argument("--reload", metavar="URL", help="then ask this Prometheus (or vmalert) to reload")
    guard.add_argument("--for", dest="for_", default="15s", help="the alerts' `for` the rules were rendered with")
    guard.add_argument("--audit-log", type=Path, help="default: OTEL_TOKENS_AUDIT_LOG, else the quota file's; "
                       "anchored every minute from here")
    stack = commands.add_parser("stack-secrets", help="make the credentials the shipped compose stack requires "
                                "(DIR/.env and DIR/secrets/; existing ones are kept)")
    stack.add_argument("directory", type=Path, nargs="?", default=Path("collector"),
                       help="the folder of docker-compose.yml (default: collector)")
    rules = commands.add_parser("rules", help="validate a quota file and render it into a Prometheus rule file")
    rules.add_argument("quota_file", type=Path)
    rules.add_argument("-o", "--output", type=Path, help="rule file to write (default: standard output)")
    rules.add_argument("--for", dest="for_", default="15s", help="how long a quota condition holds before it "
                       "fires (default 15s; part of the delay budget in docs/quotas.md)")
    rules.add_argument("--check", action="store_true", help="run `promtool check rules` on the result")
    rules.add_argument("--reload", metavar="URL", help="then ask the Prometheus at URL to reload (POST /-/reload); "
                       "warns, as --prometheus does, when it keeps less data than the rules read back")
    rules.add_argument("--prometheus", metavar="URL", help="warn when the Prometheus or VictoriaMetrics at URL keeps "
                       "less data than the rules read back (a department's previous month: 62 days)")
    backfill = commands.add_parser("rules-backfill", help="write TSDB blocks of a rule file's first-level rollups "
                                   "computed from the raw history, for rules deployed on existing data")
    backfill.add_argument("--rules", type=Path, required=True, help="the rule file `otel-tokens rules` wrote")
    backfill.add_argument("--prometheus", required=True, metavar="URL", help="a Prometheus holding the raw history")
    backfill.add_argument("--start", type=int, required=True, metavar="UNIX", help="first second to backfill")
    backfill.add_argument("--end", type=int, required=True, metavar="UNIX", help="last second to backfill")
    backfill.add_argument("--output", type=Path, required=True, metavar="DIR", help="where to write the blocks")
    backfill.add_argument("--eval-interval", default="60s", help="step for groups without an interval (default 60s)")
    backfill.add_argument("--counters", choices=("accounting", "quota"), default="accounting",
                          help="the raw history to compute the rollups from: the accounting counters (default: "
                               "llm_token_usage_total, llm_cost_total, also from before an upgrade) or the "
                               "per-principal llm_quota_* counters the live rules read")
    from otel_tokens.ops.quota_cli import add_parser

    add_parser(commands)
    report_parser = commands.add_parser("report", help="usage digest from Prometheus: totals, top users, departments "
                                        "and models, quota use; table, markdown, json, csv, png")
    from otel_tokens.ops.report import add_arguments, one_line_error

    add_arguments(report_parser)
    report_parser.error = one_line_error  # type: ignore[method-assign]  # one line, not usage + message
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command == "report":
            one_line_error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # what parse_args says
    if args.command == "report":
        from otel_tokens.ops.report import run

        return run(args)
    if args.command == "doctor":
        from otel_tokens.ops.doctor import report

        print(report(args.model, args.provider))
        return 0
    if args.command == "guard":
        return _guard(args)
    if args.command == "stack-secrets":
        return _stack_secrets(args.directory)
    if args.command == "rules-backfill":
        return _backfill(args)
    if args.command == "quota":
        from otel_tokens.ops.quota_cli import run

        return run(args)
    return _rules(args)


def _guard(args: argparse.Namespace) -> int:
    import os

    from otel_tokens.config.secrets import token_from
    from otel_tokens.ops.alert_endpoint import serve
    from otel_tokens.ops.alert_resync import Resync
    from otel_tokens.quota.alert.ruler import Rulers

    listen = args.listen
    host, _, port = listen.rpartition(":")
    urls = args.ruler + args.resync  # --resync: the old name, for rule engines only
    stale_after = args.stale_after if args.stale_after is not None else max(60.0, 3 * args.resync_interval)
    for name, value, low, high in (("--resync-interval", args.resync_interval, 1, 3600),
                                   ("--stale-after", stale_after, 5, 86400), ("--hold", args.hold, 0, 86400)):
        if not low <= value <= high:
            print(f"otel-tokens guard: {name} {value} is not between {low} and {high} seconds", file=sys.stderr)
            return 2
    # --resync once took Alertmanager's base URL too: such a deployment must stop here, not run on a
    # source it can never read (its apps would fail open without a word)
    refused = [url for url in urls if "/api/v2/" in url] + [
        url for url in args.resync if not url.rstrip("/").endswith("/api/v1/alerts")]
    if not urls or refused:
        print("otel-tokens guard: give --ruler URL, the Prometheus or vmalert whose /api/v1/alerts the guard "
              "follows" + (f" ({refused[0]!r} looks like Alertmanager, whose API takes alerts and resolutions "
                           "from anyone who reaches it)" if refused else ""), file=sys.stderr)
        return 2
    try:
        rulers = Rulers(urls)
    except ValueError as error:
        print(f"otel-tokens guard: {error}", file=sys.stderr)
        return 2
    try:
        token = token_from(os.environ, args.token_file)
        server = serve(host or "127.0.0.1", int(port), token=token)
    except ImportError:
        print("otel-tokens guard: needs waitress: pip install 'otel-tokens[guard]'", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"otel-tokens guard: cannot listen on {listen!r}: {error}", file=sys.stderr)
        return 2
    quota_file = args.quota_file or (Path(os.environ["OTEL_TOKENS_QUOTA_FILE"])
                                     if os.environ.get("OTEL_TOKENS_QUOTA_FILE") else None)
    if quota_file is not None:
        from otel_tokens.ops.grant_endpoint import GrantEndpoint, anchor_every

        server.app.grants = GrantEndpoint(quota_file, args.rules, args.reload, args.audit_log,
                                         args.for_)
        anchor_every(server.app.grants, 60.0)
    server.app.require_sync(stale_after)  # polls get 503 (apps keep their blocks) until the rulers answer
    resync = Resync(server.state, rulers, args.resync_interval, args.hold, on_synced=server.app.synced)
    server.app.on_webhook = resync.prompt
    resync.start()  # its first read runs in that thread: start-up does not wait on the rulers
    print(f"otel-tokens guard: following {rulers}; Alertmanager webhook http://{listen}/alertmanager (a prompt to "
          f"read again), state http://{listen}/state{'' if token else ' (no token: loopback only)'}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    resync.stopped.set()
    return 0


def _stack_secrets(directory: Path) -> int:
    from otel_tokens.ops.stack_secrets import write

    if not (directory / "docker-compose.yml").is_file():
        print(f"otel-tokens stack-secrets: {directory} holds no docker-compose.yml", file=sys.stderr)
        return 2
    try:
        created = write(directory)
    except ImportError:
        print("otel-tokens stack-secrets: needs bcrypt: pip install 'otel-tokens[stack]'", file=sys.stderr)
        return 2
    print("\n".join(f"created {what}" for what in created) or "every secret is already there")
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from otel_tokens.config.errors import ConfigError
    from otel_tokens.ops.backfill import backfill

    try:
        names_ = backfill(args.rules, args.prometheus, args.start, args.end, args.output, args.eval_interval,
                          args.counters)
    except ConfigError as error:
        print(f"otel-tokens rules-backfill: {error}", file=sys.stderr)
        return 2
    print(f"wrote blocks of {', '.join(names_)} to {args.output}: move them into Prometheus's data directory "
          "and restart it", file=sys.stderr)
    return 0


def _rules(args: argparse.Namespace) -> int:
    from otel_tokens.config.errors import ConfigError
    from otel_tokens.ops.rules import render_text
    from otel_tokens.quota.file import budget_only, load_quotas
    from otel_tokens.quota.grants.file import load_grants

    try:
        quotas = load_quotas(args.quota_file)
        assert quotas.grants.file is not None
        text = render_text(quotas, args.for_, grants=load_grants(quotas.grants.file))  # the grants beside it too
    except ConfigError as error:
        print(f"otel-tokens rules: {error}", file=sys.stderr)
        return 2
    for note in budget_only(quotas):
        print(f"otel-tokens rules: {note}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        if args.check and not _promtool_check(tmp):
            tmp.unlink()
            return 1
        tmp.replace(args.output)  # atomic: Prometheus never reads a half-written file
        print(f"wrote {args.output}", file=sys.stderr)
    if args.check and args.output is None:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            f.write(text)
            f.flush()
            if not _promtool_check(Path(f.name)):
                return 1
    for url in dict.fromkeys(u for u in (args.prometheus, args.reload) if u):
        import yaml

        from otel_tokens.ops.retention import retention_warnings

        for warning in retention_warnings(yaml.safe_load(text), url):
            print(f"otel-tokens rules: warning: {warning}", file=sys.stderr)
    if args.reload:
        return _reload(args.reload)
    return 0


def _promtool_check(path: Path) -> bool:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        print("otel-tokens rules: --check needs promtool (Debian: apt-get install prometheus)", file=sys.stderr)
        return False
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"otel-tokens rules: promtool rejected the rules:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return False
    return True


def _reload(url: str) -> int:
    from otel_tokens.prometheus_api import Prometheus, PrometheusError

    try:
        Prometheus(url).reload()
    except PrometheusError as error:
        print(f"otel-tokens rules: reload failed: {error} "
              "(is Prometheus running with --web.enable-lifecycle?)", file=sys.stderr)
        return 3
    print(f"reloaded {url}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
