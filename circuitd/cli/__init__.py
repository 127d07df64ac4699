"""The ``circuitd`` command. Errors a user can act on end as one line and exit status 2.

The subcommands live beside this module: ``analysis`` (in-process circuit discovery and its
files), ``service`` (run the service and talk to it), ``training`` (zoo models, transcoders).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from circuitd.errors import CircuitdError

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    # Imported here: `python -m circuitd.cli.service` must not find its module imported already.
    from circuitd.cli.analysis import add_analysis_commands
    from circuitd.cli.service import add_service_commands
    from circuitd.cli.training import add_training_commands

    parser = argparse.ArgumentParser(prog="circuitd", description="Automated circuit discovery.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_analysis_commands(sub)
    add_service_commands(sub)
    add_training_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CircuitdError, ValueError) as exc:
        print(f"circuitd: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitd: interrupted", file=sys.stderr)
        return 130
