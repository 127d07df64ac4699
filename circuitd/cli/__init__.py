"""The ``circuitd`` command. Errors a user can act on end as one line and exit status 2.

The command is the machine's own user, so it runs with full access (:mod:`circuitd.access`): any
local directory, any hub name. The commands that serve others in this process (``api``,
``worker``) run under the service's rules: the access they run with is inherited by their
requests and by the worker's forked children.

The subcommands live beside this module: ``analysis`` (in-process circuit discovery and its
files), ``mib`` (MIB circuit-track export and checks), ``service`` (run the service and talk to
it), ``training`` (zoo models, transcoders), ``view`` (a graph file as an offline HTML page or
an SVG picture).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from circuitd.access import full_access, service_access
from circuitd.errors import CircuitdError

Command = Callable[[argparse.Namespace], int]
SERVING = frozenset({"api", "worker"})  # commands that serve clients from this process


def build_parser() -> argparse.ArgumentParser:
    # Imported here: `python -m circuitd.cli.service` must not find its module imported already.
    from circuitd.cli.analysis import add_analysis_commands
    from circuitd.cli.mib import add_mib_commands
    from circuitd.cli.service import add_service_commands
    from circuitd.cli.training import add_training_commands
    from circuitd.cli.view import add_view_commands

    parser = argparse.ArgumentParser(prog="circuitd", description="Automated circuit discovery.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_analysis_commands(sub)
    add_mib_commands(sub)
    add_service_commands(sub)
    add_training_commands(sub)
    add_view_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with service_access() if args.command in SERVING else full_access():
            return args.func(args)
    except (CircuitdError, ValueError) as exc:
        print(f"circuitd: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitd: interrupted", file=sys.stderr)
        return 130
