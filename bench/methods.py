"""Every edge method of the registry side by side: zoo:synth's three tasks and the zoo's models
whose circuits are known by construction.

For each method and zoo:synth task (ioi, greater_than, induction): CPR and CMD of its scores'
faithfulness curve, the method's own circuit (its size and faithfulness: the default top 5%, or
what ACDC and edge-pruning choose), the fewest top-|score| edges whose circuit reaches
faithfulness 0.8 and 0.9 (searched on a log-spaced grid of sizes, measured by the same Evaluator
every method is judged by; not for ACDC and edge-pruning, whose scores are test effects and
saturated mask probabilities, not a ranking), and the seconds it took. For each method and
known-circuit model (zoo:known-*): the edge- and node-level ROC AUC of its scores against the
shipped known circuit, every method at its defaults. Then the
--position-methods on IOI's template 0 (ABBA order), whose prompts share positions, with edges
and with position-aware edges (``ioi[t0]`` and ``ioi[t0]@pos``: the fraction is of that graph's
edges, 15 positions x 1519). Then the --prune-methods on IOI as generated: their top 13% of edges
pruned to 5% (``prune_to``, each removal measured exactly) and refined by swaps (``name+prune``;
its @0.8 and @0.9 columns: the smallest circuits on the pruning path that reach them). Then per
IOI variant the fewest edges at faithfulness 0.9. Ends with
one line ``best_cpr=X best_cmd=Y min_auroc_known=Z``: the best CPR and CMD over methods and
the three tasks as generated, and the worst edge AUROC over methods and known models of the
methods that rank every edge exactly (``patching``, ``eap-ig-act``; the issue's goal is 1.0
there; every method's AUROC is printed).

    python bench/methods.py [--n-prompts 32] [--methods eap,eap-ig,...] [--tasks ioi,...]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from circuitd.discover import discover
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.evaluate import Evaluator
from circuitd.jobs import build_task
from circuitd.methods import METHODS
from circuitd.methods.contract import EdgeMethod
from circuitd.models.registry import load_model, model_shape
from circuitd.models.zoo_known import KNOWN_MODELS, known_circuit_path, shipped_task
from circuitd.roc import KnownCircuit, against_known
from circuitd.selection import top_n
from circuitd.spec import JobSpec

SYNTH_TASKS = ("ioi", "greater_than", "induction")
EXACT_RANKERS = ("patching", "eap-ig-act")  # the methods min_auroc_known is taken over
OWN_CIRCUIT = ("acdc", "edge-pruning")  # circuits chosen by the method, not by ranking its scores
TEMPLATE_IOI = {"template": 0, "templates": "ABBA"}  # IOI prompts that share their positions
GRID = 48  # circuit sizes tried when searching for the fewest edges at a faithfulness
PRUNE_FROM, PRUNE_TO, PRUNE_REFINE = 0.13, 0.05, 10  # --prune-methods: shares of the edges, swap rounds


@dataclass
class Row:
    method: str
    where: str
    seconds: float
    cpr: float | None = None
    cmd: float | None = None
    at_08: int | None = None
    at_09: int | None = None
    n_edges: int = 0
    circuit_edges: int | None = None  # the method's own circuit
    circuit_f: float | None = None
    auroc_edge: float | None = None
    auroc_node: float | None = None
    path: bool = False  # at_08 / at_09 are circuits on a pruning path, not top-|score| sizes


def fewest_edges(evaluator: Evaluator, scores: torch.Tensor, targets: tuple[float, ...]) -> list[int | None]:
    """For each target, the smallest top-k by |score| on a log grid whose faithfulness reaches it."""
    n = scores.numel()
    sizes = sorted({max(1, round(math.exp(math.log(n) * i / (GRID - 1)))) for i in range(GRID)})
    masks = torch.stack([top_n(scores, k) for k in sizes])
    faith = evaluator.faithfulness_of(masks)
    return [next((k for k, f in zip(sizes, faith, strict=True) if f >= t), None) for t in targets]


def method_params(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, with ACDC's tau from the command line (its default suits KL on zoo:synth)."""
    return {"tau": args.acdc_tau} if name == "acdc" else {}


def run_synth(name: str, task: str, args: argparse.Namespace, positions: bool | None = None) -> Row:
    """One method on one zoo:synth task. ``positions`` (None: the task as generated) runs IOI on
    one template and order, whose prompts share positions, with edges split by position (True)
    or not (False, the same prompts' reference)."""
    task_params = {} if positions is None else dict(TEMPLATE_IOI)
    params = {**method_params(name, args), **({"positions": True} if positions else {})}
    spec = JobSpec.model_validate({"model": "zoo:synth", "task": task, "method": name, "seed": 0,
                                   "n_prompts": args.n_prompts, "task_params": task_params, "params": params})
    started = time.perf_counter()
    result = discover(spec)
    seconds = time.perf_counter() - started
    m = result.metrics
    where = f"zoo:synth/{task}" + ("" if positions is None else "[t0]" + ("@pos" if positions else ""))
    row = Row(name, where, seconds, m.get("cpr"), m.get("cmd"), n_edges=int(m["n_edges_total"]),
              circuit_edges=int(m["n_edges"]), circuit_f=float(m["faithfulness"]))
    if result.scores is not None and name not in OWN_CIRCUIT:
        model = load_model(spec.model)
        names = tuple(result.graph.graph["edge_layout"].get("positions", ()))
        graph = EdgeGraph(model.shape, positions=names)
        built = build_task(spec, model, None)
        evaluator = Evaluator(MethodContext(model, graph, built, built.metric, "resample", spec.batch_size))
        row.at_08, row.at_09 = fewest_edges(evaluator, result.scores.detach().float().cpu(), (0.8, 0.9))
    return row


def run_pruned(name: str, args: argparse.Namespace) -> Row:
    """One method's IOI circuit: its top PRUNE_FROM of the edges, pruned to PRUNE_TO and refined."""
    n = EdgeGraph(model_shape("zoo:synth")).n_edges  # from the config: nothing loaded
    params = {**method_params(name, args), "top_n": round(PRUNE_FROM * n),
              "prune_to": math.floor(PRUNE_TO * n + 1e-9), "refine_rounds": PRUNE_REFINE, "curve": False}
    spec = JobSpec.model_validate({"model": "zoo:synth", "task": "ioi", "method": name, "seed": 0,
                                   "n_prompts": args.n_prompts, "params": params})
    started = time.perf_counter()
    m = discover(spec).metrics
    seconds = time.perf_counter() - started
    trail = list(zip(m["prune_sizes"], m["prune_faithfulness"], strict=True))
    at_08, at_09 = (min((k for k, f in trail if f >= t), default=None) for t in (0.8, 0.9))
    return Row(f"{name}+prune", "zoo:synth/ioi", seconds, n_edges=n, circuit_edges=int(m["n_edges"]),
               circuit_f=float(m["faithfulness"]), at_08=at_08, at_09=at_09, path=True)


def run_known(name: str, model_name: str, args: argparse.Namespace) -> Row:
    known = KnownCircuit.read(known_circuit_path(model_name))
    params = method_params(name, args)
    spec = JobSpec.model_validate({"model": f"zoo:{model_name}", "task": shipped_task(model_name),
                                   "method": name, "seed": 0, "params": params})
    started = time.perf_counter()
    result = discover(spec)
    seconds = time.perf_counter() - started
    model = load_model(spec.model)
    method_args = spec.params
    graph = EdgeGraph(model.shape, method_args.split_qkv, method_args.kv_heads)  # pyright: ignore[reportAttributeAccessIssue]
    assert result.scores is not None
    scores = dict(zip(graph.edge_names, result.scores.detach().double().cpu().tolist(), strict=True))
    report = against_known(graph, known, scores)
    return Row(name, f"zoo:{model_name}", seconds, n_edges=graph.n_edges,
               auroc_edge=report.edge.auc, auroc_node=report.node.auc)


def fmt(x: float | int | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    edge_methods = [m.name for m in METHODS.values() if isinstance(m, EdgeMethod)]
    ap.add_argument("--methods", default=",".join(edge_methods))
    ap.add_argument("--tasks", default=",".join(SYNTH_TASKS))
    ap.add_argument("--known", default=",".join(KNOWN_MODELS))
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--position-methods", default="eap-ig,eap-ig-act",
                    help="methods also run on IOI template 0 (ABBA) with and without --positions")
    ap.add_argument("--prune-methods", default="eap-ig",
                    help="methods whose top 13%% of IOI edges are also pruned to 5%% and refined")
    ap.add_argument("--acdc-tau", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    rows: list[Row] = []
    print(f"{'method':<14} {'where':<24} {'CPR':>6} {'CMD':>6} {'circuit':>19} {'@0.8':>11} {'@0.9':>11} "
          f"{'AUROC e':>7} {'AUROC n':>7} {'s':>7}")
    for name in methods:
        for task in [t for t in args.tasks.split(",") if t]:
            rows.append(run_synth(name, task, args))
            show(rows[-1])
        for model_name in [k for k in args.known.split(",") if k]:
            rows.append(run_known(name, model_name, args))
            show(rows[-1])
    for name in [m for m in args.position_methods.split(",") if m]:
        for positions in (False, True):
            rows.append(run_synth(name, "ioi", args, positions))
            show(rows[-1])
    for name in [m for m in args.prune_methods.split(",") if m]:
        rows.append(run_pruned(name, args))
        show(rows[-1])
    generated = [r for r in rows if "[t0]" not in r.where]  # CPR/CMD over the tasks as generated
    cprs = [r.cpr for r in generated if r.cpr is not None]
    cmds = [r.cmd for r in generated if r.cmd is not None]
    exact = [r.auroc_edge for r in rows if r.auroc_edge is not None and r.method in EXACT_RANKERS]
    for where in ("zoo:synth/ioi", "zoo:synth/ioi[t0]", "zoo:synth/ioi[t0]@pos"):
        here = [r for r in rows if r.where == where]
        found = [(r.at_09 / r.n_edges, r.at_09, f"{r.method} ({'pruning path' if r.path else 'top-|score|'})",
                  r.n_edges) for r in here if r.at_09 is not None]
        found += [(r.circuit_edges / r.n_edges, r.circuit_edges, own(r), r.n_edges)
                  for r in here if r.circuit_edges and (r.circuit_f or 0) >= 0.9]
        if found:
            share, k, who, total = min(found)
            print(f"{where}: fewest edges at faithfulness >= 0.9: {who}, {k} of {total} ({100 * share:.1f}%)")
    print(f"best_cpr={fmt(max(cprs) if cprs else None)} best_cmd={fmt(min(cmds) if cmds else None)} "
          f"min_auroc_known={fmt(min(exact) if exact else None)}")


def own(r: Row) -> str:
    return f"{r.method} (its circuit, f={r.circuit_f:.3f})"


def show(r: Row) -> None:
    def share(k: int | None) -> str:
        return "–" if k is None else f"{k} ({100 * k / r.n_edges:.1f}%)"

    own = "–" if r.circuit_edges is None else f"{share(r.circuit_edges)} f={fmt(r.circuit_f, '.2f')}"
    print(f"{r.method:<14} {r.where:<24} {fmt(r.cpr):>6} {fmt(r.cmd):>6} {own:>19} {share(r.at_08):>11} "
          f"{share(r.at_09):>11} {fmt(r.auroc_edge):>7} {fmt(r.auroc_node):>7} {r.seconds:7.1f}", flush=True)


if __name__ == "__main__":
    main()
