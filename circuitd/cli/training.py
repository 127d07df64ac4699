"""The training commands: ``zoo train`` (a zoo model) and ``transcoders train`` (a transcoder set)."""

from __future__ import annotations

import argparse
from typing import Any

from circuitd.errors import CircuitdError


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from circuitd.models import zoo_train
    from circuitd.models.ids import ZOO_DIR

    if args.name != "synth":
        raise CircuitdError(f"zoo: no recipe to train '{args.name}' (available: synth)")
    out = Path(args.out) if args.out else ZOO_DIR / args.name
    zoo_train.train_synth(out, steps=args.steps, seed=args.seed)
    return 0


def cmd_transcoders_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    import torch

    from circuitd.models.ids import ZOO_DIR, parse_model_id
    from circuitd.models.registry import load_model
    from circuitd.transcoders.sources import TRANSCODERS_SUBDIR
    from circuitd.transcoders.train import TrainSettings, train_transcoders, write_set

    ref = parse_model_id(args.model)
    if args.out is None and ref.kind != "zoo":
        raise CircuitdError("--out: required unless the model is a zoo model (its set goes into the zoo)")
    out = args.out or ZOO_DIR / ref.name / TRANSCODERS_SUBDIR
    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings)}
    given = {k: v for k, v in given.items() if v is not None}
    given.setdefault("corpus", "synth" if args.model == "zoo:synth" else "tasks")
    settings = TrainSettings(**given)
    if args.threads:
        torch.set_num_threads(args.threads)
    tset, card = train_transcoders(load_model(args.model, args.device), settings)
    write_set(tset, card, out)
    fve = " ".join(f"{f['fve']:.3f}" for f in card["layers"])
    print(f"transcoders for {args.model} -> {out}: variance explained per layer {fve}, mean L0 "
          f"{card['mean_l0']:.1f}, replacement top-1 agreement {card['replacement_top1_agreement']:.3f}")
    return 0


def add_training_commands(sub: Any) -> None:
    """Register ``zoo train`` and ``transcoders train`` on ``circuitd``'s subparsers."""
    zoo = sub.add_parser("zoo", help="models shipped with circuitd").add_subparsers(
        dest="zoo_command", required=True
    )
    tcs = sub.add_parser("transcoders", help="transcoder sets for attribution graphs").add_subparsers(
        dest="transcoders_command", required=True
    )
    p = tcs.add_parser("train", help="train a per-layer transcoder set on a model's activations")
    p.add_argument("--model", required=True)
    p.add_argument("--out", help="output directory (default for zoo models: the shipped set)")
    p.add_argument("--corpus", help="synth (zoo:synth's mix), tasks (the task generators) or a text file")
    p.add_argument("--d-tc", dest="d_tc", type=int, help="features per layer (1024)")
    p.add_argument("--activation", choices=["topk", "relu"], help="topk (default) or relu with an L1 penalty")
    p.add_argument("--k", type=int, help="active features per token for topk (16)")
    p.add_argument("--l1", type=float, help="L1 coefficient for relu")
    p.add_argument("--steps", type=int, help="Adam steps per layer (1500)")
    p.add_argument("--batch", type=int, help="positions per step (2048)")
    p.add_argument("--lr", type=float)
    p.add_argument("--n-sequences", dest="n_sequences", type=int, help="training sequences (12000)")
    p.add_argument("--n-heldout", dest="n_heldout", type=int, help="held-out sequences for the card (1500)")
    p.add_argument("--no-skip", dest="skip", action="store_const", const=False, help="no skip connection")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 reproduces the shipped set)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_transcoders_train)

    p = zoo.add_parser("train", help="train a zoo model reproducibly on the CPU")
    p.add_argument("name")
    p.add_argument("--out", help="output directory (default: the shipped zoo directory)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_zoo_train)
