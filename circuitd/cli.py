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


def _task_arg(value: str):
    """A generator name stays a name; a JSON file becomes an inline task."""
    from pathlib import Path

    from circuitd.tasks import GENERATORS, load_task_data

    if value in GENERATORS:
        return value
    if not Path(value).is_file():
        raise CircuitdError(f"--task: '{value}' is neither a generator ({', '.join(GENERATORS)}) nor a file")
    return load_task_data(value, None, 0)


def _spec_from_args(args: argparse.Namespace, **extra):
    from pydantic import ValidationError

    from circuitd.spec import JobSpec

    fields = dict(
        model=args.model, task=_task_arg(args.task), metric=args.metric, ablation=args.ablation,
        n_prompts=args.n_prompts, seed=args.seed, split_qkv=not args.no_split_qkv,
        batch_size=args.batch_size, device=args.device, **extra,
    )
    try:
        return JobSpec(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        raise CircuitdError(f"{loc}: {err['msg'].removeprefix('Value error, ')}") from exc


class _Bar:
    """A tqdm progress bar fed with (fraction, stage) callbacks."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, bar_format="{desc:<16} {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, fraction: float, stage: str) -> None:
        self.bar.set_description_str(stage)
        self.bar.update(max(0, int(fraction * 1000) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


def cmd_discover(args: argparse.Namespace) -> int:
    from circuitd.discover import discover
    from graphs import write_json

    acdc = dict(
        tau=args.tau or [0.01], abs_diff=args.abs, acdc_metric=args.acdc_metric,
        prefilter_top_n=args.prefilter_top_n, prefilter_threshold=args.prefilter_threshold,
        prefilter_method=args.prefilter_method,
    )
    spec = _spec_from_args(
        args, method=args.method, top_n=args.top_n, threshold=args.threshold, ig_steps=args.ig_steps,
        curve=not args.no_curve, **acdc,
    )
    bar = _Bar()
    try:
        result = discover(spec, progress=bar)
    finally:
        bar.close()
    write_json(result.full_graph if args.all_edges else result.graph, args.out)
    m = result.metrics
    print(
        f"{spec.method} on {spec.model}/{spec.task_name}: {m['n_edges']}/{m['n_edges_total']} edges, "
        f"faithfulness {m['faithfulness']:.3f}"
        + (f", CPR {m['cpr']:.3f}, CMD {m['cmd']:.3f}" if "cpr" in m else "")
        + f", {m['seconds']:.1f}s -> {args.out}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from circuitd.discover import build_task
    from circuitd.edges import EdgeGraph
    from circuitd.evaluate import Evaluator
    from circuitd.methods.base import MethodContext
    from circuitd.models.registry import load_model
    from graphs import read_json

    try:
        circuit = read_json(args.circuit)
    except (OSError, ValueError, KeyError) as exc:
        raise CircuitdError(f"--circuit: cannot read {args.circuit}: {exc}") from exc
    links = list(circuit.edges(data=True))
    split = not args.no_split_qkv and not any("<" not in d["name"] and "->a" in d["name"] for *_, d in links)
    spec = _spec_from_args(args)
    model = load_model(spec.model, spec.device, spec.dtype)
    graph = EdgeGraph(model.shape, split)
    try:
        idx = graph.index_of([d["name"] for *_, d in links])
    except KeyError as exc:
        raise CircuitdError(f"--circuit: {exc.args[0]}") from exc
    scores = torch.zeros(graph.n_edges)
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    for i, (*_, d) in zip(idx, links, strict=True):
        scores[i] = float(d.get("score", 0.0))
        keep[i] = bool(d.get("in_circuit", True))
    task = build_task(spec, model)
    ctx = MethodContext(model, graph, task, task.metric, spec.ablation, batch_size=spec.batch_size)
    ev = Evaluator(ctx)
    s = ev.summary(keep)
    print(f"circuit: {args.circuit} ({s['n_edges']} of {s['n_edges_total']} edges)")
    print(f"metric {task.metric}: full {s['metric_full']:.4f}, empty {s['metric_empty']:.4f}, "
          f"circuit {s['metric_circuit']:.4f}")
    curve = ev.curve(scores)
    print("faithfulness curve (top edges by |score| from the file):")
    for pct, n, f in zip(curve["percents"], curve["n_edges"], curve["faithfulness"], strict=True):
        print(f"  {pct:>5}% {n:>7} edges  f={f:.4f}")
    print(f"CPR: {curve['cpr']:.4f}   CMD: {curve['cmd']:.4f}")
    print(f"faithfulness: {s['faithfulness']:.4f}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from graphs import read_json, summarize

    try:
        print(summarize(read_json(args.file), top=args.top))
    except (OSError, ValueError, KeyError) as exc:
        raise CircuitdError(f"{args.file}: not a circuit graph: {exc}") from exc
    return 0


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo:<name>, random:<preset>[@seed], local:<dir>, TL name")
    p.add_argument("--task", required=True, help="a generator (ioi, greater_than, induction, random) or JSON")
    p.add_argument("--metric", choices=["logit_diff", "prob_diff", "kl", "nll"])
    p.add_argument("--ablation", choices=["resample", "zero", "mean"], default="resample")
    p.add_argument("--n-prompts", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-split-qkv", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitd", description="Automated circuit discovery.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edges", help="count the edges of a model's edge graph")
    p.add_argument("--model", required=True)
    p.add_argument("--no-split-qkv", action="store_true", help="one input per head, not q/k/v")
    p.set_defaults(func=cmd_edges)

    p = sub.add_parser("discover", help="find a circuit (in-process)")
    _add_task_args(p)
    p.add_argument("--method", choices=["eap", "eap-ig", "acdc"], default="eap-ig")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--top-n", type=int, help="keep the N edges of largest |score| (default 5%%)")
    group.add_argument("--threshold", type=float, help="keep edges with |score| >= X")
    p.add_argument("--ig-steps", type=int, default=5)
    acdc = p.add_argument_group("ACDC")
    acdc.add_argument("--tau", type=float, action="append", help="threshold; repeat for a sweep (0.01)")
    acdc.add_argument("--abs", action="store_true", help="compare |metric change| with tau")
    acdc.add_argument("--acdc-metric", choices=["kl", "logit_diff", "prob_diff", "nll"],
                      help="the metric ACDC's tests use (default kl); --metric is for faithfulness")
    pre = acdc.add_mutually_exclusive_group()
    pre.add_argument("--prefilter-top-n", type=int, help="test only the top N edges by EAP score")
    pre.add_argument("--prefilter-threshold", type=float, help="test only edges with |EAP score| >= X")
    acdc.add_argument("--prefilter-method", choices=["eap", "eap-ig"], default="eap-ig")
    p.add_argument("--all-edges", action="store_true", help="write every scored edge, not just the circuit")
    p.add_argument("--no-curve", action="store_true", help="skip the faithfulness curve")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("evaluate", help="faithfulness, curve, CPR and CMD of a circuit file")
    _add_task_args(p)
    p.add_argument("--circuit", required=True, help="node-link JSON written by discover")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("summary", help="print the summary of a circuit file")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_summary)

    from circuitd.service_cli import add_service_commands

    add_service_commands(sub)

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
    except (CircuitdError, ValueError) as exc:
        print(f"circuitd: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("circuitd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
