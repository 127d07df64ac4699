"""The ``circuitd`` command. Errors a user can act on end as one line and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from circuitd.errors import CircuitdError

Command = Callable[[argparse.Namespace], int]


def cmd_edges(args: argparse.Namespace) -> int:
    from circuitd.edges import EdgeGraph
    from circuitd.models.registry import model_shape

    graph = EdgeGraph(model_shape(args.model), split_qkv=not args.no_split_qkv)
    s = graph.shape
    print(f"model: {args.model} ({s.n_layers} layers, {s.n_heads} heads, d_model {s.d_model})")
    print(f"sources: {graph.n_sources}")
    print(f"q/k/v split: {'no' if args.no_split_qkv else 'yes'}")
    print(f"edges: {graph.n_edges}")
    return 0


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from circuitd.models import zoo_train
    from circuitd.models.registry import ZOO_DIR

    if args.name != "synth":
        raise CircuitdError(f"zoo: no recipe to train '{args.name}' (available: synth)")
    out = Path(args.out) if args.out else ZOO_DIR / args.name
    zoo_train.train_synth(out, steps=args.steps, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitd", description="Automated circuit discovery.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edges", help="count the edges of a model's edge graph")
    p.add_argument("--model", required=True)
    p.add_argument("--no-split-qkv", action="store_true", help="one input per head, not q/k/v")
    p.set_defaults(func=cmd_edges)

    zoo = sub.add_parser("zoo", help="models shipped with circuitd").add_subparsers(
        dest="zoo_command", required=True
    )
    p = zoo.add_parser("train", help="train a zoo model reproducibly on the CPU")
    p.add_argument("name")
    p.add_argument("--out", help="output directory (default: the shipped zoo directory)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_zoo_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CircuitdError as exc:
        print(f"circuitd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
