"""The `otel-tokens` command."""

from __future__ import annotations

import argparse
import sys

from . import names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-tokens", description="LLM token usage telemetry: tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="what is instrumented, where telemetry goes, how models are priced")
    doctor.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="a model name to resolve (repeatable)")
    doctor.add_argument("--provider", default=names.PROVIDER_OPENAI,
                        help="gen_ai.provider.name the named models are called through (default: openai)")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import report

        print(report(args.model, args.provider))
    return 0


if __name__ == "__main__":
    sys.exit(main())
