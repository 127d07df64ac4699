"""The analysis commands, run in-process: ``edges``, ``discover``, ``evaluate``, ``validate-graph``,
``reprune`` and ``summary``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from circuitd.cli.method_flags import add_method_flags, method_params
from circuitd.errors import CircuitdError
from circuitd.methods import METHODS
from circuitd.names import ABLATIONS, DTYPES, METRICS
from circuitd.spec import DEFAULT_METHOD

if TYPE_CHECKING:
    from circuitd.edges import KVHeads
    from circuitd.methods.contract import Result
    from circuitd.spec import JobSpec


def cmd_edges(args: argparse.Namespace) -> int:
    from circuitd.edges import EdgeGraph
    from circuitd.models.registry import memory_estimate, model_shape
    from circuitd.settings import get_settings

    graph = EdgeGraph(model_shape(args.model), split_qkv=not args.no_split_qkv, kv_heads=args.kv_heads)
    s = graph.shape
    print(f"model: {args.model} ({s.n_layers} layers, {s.n_heads} heads, d_model {s.d_model})")
    limits = get_settings()  # from the config alone: nothing is loaded to count or size a model
    print(f"parameters: {s.n_params} (CIRCUITD_MAX_MODEL_PARAMS={limits.max_model_params})")
    print(f"memory: {memory_estimate(s, args.dtype)[1]} (CIRCUITD_MAX_MODEL_BYTES={limits.max_model_bytes})")
    print(f"sources: {graph.n_sources}")
    print(f"q/k/v split: {'no' if args.no_split_qkv else 'yes'}")
    if s.n_key_value_heads and s.n_key_value_heads < s.n_heads:
        layout = "per key/value head" if graph.kv_grouped else "per query head"
        print(f"k/v inputs: {layout} ({s.n_key_value_heads} key/value heads)")
    print(f"edges: {graph.n_edges}")
    return 0


def _task_arg(value: str):
    """A generator name stays a name; a JSON file becomes an inline task."""
    from pathlib import Path

    from circuitd.tasks import GENERATORS, load_task_data

    if value is None or value in GENERATORS:
        return value
    if not Path(value).is_file():
        raise CircuitdError(f"--task: '{value}' is neither a generator ({', '.join(GENERATORS)}) nor a file")
    return load_task_data(value, None, 0)


def _task_params(pairs: list[str]) -> dict[str, str]:
    """``--task-param NAME=VALUE`` flags as ``task_params``: the values stay text, and the
    generator's parameter model (through the spec) converts and bounds them."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CircuitdError(f"--task-param: expected NAME=VALUE, got {pair!r}")
        if name in out:
            raise CircuitdError(f"--task-param: {name!r} is given twice")
        out[name] = value
    return out


def _spec_from_args(args: argparse.Namespace, method: str, params: dict[str, Any]) -> JobSpec:
    """The job spec of the command line: the task flags, ``method`` and its ``params``."""
    from pydantic import ValidationError

    from circuitd.spec import JobSpec, spec_error_line

    fields = dict(
        model=args.model, task=_task_arg(args.task), task_params=_task_params(args.task_param),
        n_prompts=args.n_prompts, seed=args.seed, batch_size=args.batch_size, device=args.device,
        method=method, params=params,
    )
    try:
        return JobSpec(**fields)
    except ValidationError as exc:
        raise CircuitdError(spec_error_line(exc)) from exc


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


def _write_neuronpedia(full, out: str, node_threshold: float, edge_threshold: float) -> dict:
    """A full attribution graph, pruned at the thresholds, written in the Neuronpedia layout."""
    import json
    from pathlib import Path

    from graphs.neuronpedia import to_neuronpedia

    g = full.graph
    doc = to_neuronpedia(
        full, slug=Path(out).stem, prompt=g.get("prompt", ""), prompt_tokens=g.get("prompt_tokens", []),
        node_threshold=node_threshold, edge_threshold=edge_threshold, scan=str(g.get("model", "")),
    )
    Path(out).write_text(json.dumps(doc, indent=1))
    return doc


def _write_attribution(result: Result, args: argparse.Namespace, params: Any) -> None:
    from graphs import write_json

    if args.format == "neuronpedia":
        _write_neuronpedia(result.full_graph, args.out, params.node_threshold, params.edge_threshold)
    else:
        write_json(result.full_graph if args.all_edges else result.graph, args.out)
    m = result.metrics
    top = m["top_logit"]
    print(
        f"attribution-graph on {args.model}: {m['n_nodes']}/{m['n_nodes_total']} nodes, "
        f"{m['n_edges']} edges, replacement {m['replacement_score']:.3f}, "
        f"completeness {m['completeness_score']:.3f}, top logit {top['token']!r} (p={top['prob']:.3f}), "
        f"{m['seconds']:.1f}s -> {args.out}"
    )


def eap_ig_config(model_id: str):
    """The EAP-IG ``cfg`` of a model (from its config alone)."""
    from circuitd.models.registry import model_shape
    from graphs.eap_ig_format import EapIgConfig

    s = model_shape(model_id)
    return EapIgConfig(s.n_layers, s.n_heads, s.parallel_attn_mlp, s.d_model, s.attn_only)


def read_circuit(path: str, model_id: str):
    """A circuit file: circuitd's node-link JSON or an EAP-IG / MIB graph (told by its layout),
    the latter checked against the model's config."""
    import json
    from pathlib import Path

    from graphs import from_node_link
    from graphs.eap_ig_format import from_eap_ig, is_eap_ig

    data = json.loads(Path(path).read_text())
    if is_eap_ig(data):
        return from_eap_ig(data, path, eap_ig_config(model_id))
    return from_node_link(data)


def cmd_discover(args: argparse.Namespace) -> int:
    from circuitd.discover import discover
    from graphs import write_json

    if args.format == "neuronpedia" and args.method != "attribution-graph":
        raise CircuitdError("--format: neuronpedia is for --method attribution-graph")
    if args.format == "eap-ig" and args.method == "attribution-graph":
        raise CircuitdError("--format: eap-ig is for edge circuits, not --method attribution-graph")

    params = method_params(args, args.method)
    if args.format == "eap-ig":  # EAP-IG names k/v edges per query head (graphs.eap_ig_format)
        if params.get("kv_heads", "per-query") != "per-query":
            raise CircuitdError("--kv-heads: EAP-IG graphs have per-query-head k/v edges; "
                                "--format eap-ig takes --kv-heads per-query (its default)")
        params["kv_heads"] = "per-query"
    spec = _spec_from_args(args, args.method, params)
    bar = _Bar()
    try:
        result = discover(spec, progress=bar)
    finally:
        bar.close()
    if spec.method == "attribution-graph":
        _write_attribution(result, args, spec.params)
        return 0
    if args.format == "eap-ig":
        from graphs.eap_ig_format import write_eap_ig

        write_eap_ig(result.full_graph, args.out, eap_ig_config(spec.model))  # every edge, scored
    else:
        write_json(result.full_graph if args.all_edges else result.graph, args.out)
    from circuitd.methods.edge_run import circuit_size

    m = result.metrics
    print(
        f"{spec.method} on {spec.model}/{spec.task_name}: {circuit_size(m)}, "
        f"faithfulness {m['faithfulness']:.3f}"
        + (f", CPR {m['cpr']:.3f}, CMD {m['cmd']:.3f}" if "cpr" in m else "")
        + f", {m['seconds']:.1f}s -> {args.out}"
    )
    return 0


def _edge_layout(names: list[str], meta: dict[str, Any], no_split_qkv: bool) -> tuple[bool, KVHeads]:
    """The q/k/v split and k/v layout of a file's edges: as discover recorded them
    (``edge_layout``), for older files and scores files as the names show."""
    split = not no_split_qkv and not any("<" not in n and "->a" in n for n in names)
    layout = meta.get("edge_layout") or {}
    grouped = layout.get("kv_heads") == "grouped" or any(".kv" in n for n in names)
    return split, "grouped" if grouped else "per-query"


def _read_scores(path: str, model_id: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Edge name -> score, and the file's metadata, from a graph file (node-link JSON from
    discover --all-edges, or EAP-IG / MIB graph JSON) or a scores file ``{"model": ...,
    "scores": {edge name: score}}``."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and isinstance(data.get("scores"), dict):
            scores = {str(name): float(value) for name, value in data["scores"].items()}
            return scores, {"model": data["model"]} if data.get("model") else {}
        circuit = read_circuit(path, model_id)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = "" if str(exc).startswith(path) else f"{path}: "  # EAP-IG errors name it
        raise CircuitdError(f"{where}not a graph or scores file: {' '.join(str(exc).split())}") from exc
    if circuit.graph.get("kind") == "attribution":
        raise CircuitdError(f"{path}: an attribution graph has no edge scores to rank")
    level = circuit.graph.get("level", "edge")
    if level != "edge":
        raise CircuitdError(f"{path}: a {level}-level graph; --against ranks edge scores")
    scores: dict[str, float] = {}
    for *_, d in circuit.edges(data=True):  # an edge into a key/value head is drawn per query head
        if "score" not in d:
            raise CircuitdError(f"{path}: edge '{d['name']}' has no score")
        scores[d["name"]] = float(d["score"])
    return scores, dict(circuit.graph)


def strongest_position(scores: dict[str, float]) -> dict[str, float]:
    """Position-aware scores (``<edge>@<p>``) as one score per edge: its largest |score|."""
    out: dict[str, float] = {}
    for name, value in scores.items():
        edge = name.rpartition("@")[0] or name
        if abs(value) >= abs(out.get(edge, 0.0)):
            out[edge] = value
    return out


def _same_model(a: str, b: str) -> bool:
    """Whether two ids name one model (``random:tiny`` is ``random:tiny@0``); ids that no
    longer parse (a directory since removed) are compared as written."""
    from circuitd.errors import ModelError
    from circuitd.models.ids import parse_model_id

    try:
        return parse_model_id(a).id == parse_model_id(b).id
    except ModelError:
        return a.strip() == b.strip()


ROC_POINTS_SHOWN = 24
"""Longer ROC curves are left to ``--json``: one line of text should stay readable."""


def cmd_evaluate_against(args: argparse.Namespace) -> int:
    """ROC of a file's edge scores against a known circuit. Nothing runs: the model's config
    alone sizes its edge graph."""
    import json

    from circuitd.edges import EdgeGraph
    from circuitd.models.registry import model_shape
    from circuitd.roc import KnownCircuit, against_known
    from graphs.edge_circuit import layout_positions

    if args.scores and args.circuit:
        raise CircuitdError("evaluate --against: give the scores file once (positional or --circuit)")
    path = args.scores or args.circuit
    if not path:
        raise CircuitdError("evaluate --against: give the graph or scores file to rank")
    known = KnownCircuit.read(args.against)
    if args.model and not _same_model(args.model, known.model):
        raise CircuitdError(f"--model: {args.model}, but {args.against} is a circuit of {known.model}")
    scores, meta = _read_scores(path, known.model)
    if meta.get("model") and not _same_model(str(meta["model"]), known.model):
        raise CircuitdError(
            f"{path}: a graph of {meta['model']}, but {args.against} is a circuit of {known.model}"
        )
    split, kv_heads = _edge_layout(list(scores), meta, args.no_split_qkv)
    graph = EdgeGraph(model_shape(known.model), split, kv_heads)
    by_position = layout_positions(meta) is not None
    if by_position:  # a known circuit is of whole edges: each ranked by its strongest position
        scores = strongest_position(scores)
    report = against_known(graph, known, scores, where=path)
    if args.json:
        print(json.dumps({"known_circuit": args.against, "scores": path, **report.to_json()}, indent=1))
        return 0
    print(f"known circuit: {args.against} ({known.model}: {report.edge.n_positive} of "
          f"{graph.n_edges} edges, {report.node.n_positive} of {len(graph.nodes)} nodes)")
    ranked = "edges ranked by |score|" + (", each at its strongest position" if by_position else "")
    print(f"scores: {path} ({ranked}; a node by the max |score| of its edges)")
    for level, r in (("edge", report.edge), ("node", report.node)):
        print(f"{level} AUROC: {r.auc:.4f} ({r.n_positive} known, {r.n_negative} other {level}s)")
    for level, r in (("edge", report.edge), ("node", report.node)):
        if len(r.fpr) > ROC_POINTS_SHOWN:
            print(f"{level} ROC: {len(r.fpr)} points (--json lists them)")
        else:
            points = " ".join(f"({f:.3g}, {t:.3g})" for f, t in zip(r.fpr, r.tpr, strict=True))
            print(f"{level} ROC (FPR, TPR): {points}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.against:
        return cmd_evaluate_against(args)
    if args.scores:
        raise CircuitdError(f"evaluate: {args.scores}: a scores file is ranked with --against KNOWN.json")
    for flag, value in (("--model", args.model), ("--task", args.task), ("--circuit", args.circuit)):
        if value is None:
            raise CircuitdError(f"evaluate: {flag} is required (unless --against)")
    import torch

    from circuitd.edge_context import MethodContext
    from circuitd.edges import EdgeGraph
    from circuitd.evaluate import Evaluator
    from circuitd.jobs import build_task
    from circuitd.models.registry import load_model
    from graphs.edge_circuit import layout_positions

    try:
        circuit = read_circuit(args.circuit, args.model)
    except (OSError, ValueError, KeyError) as exc:
        where = "" if str(exc).startswith(args.circuit) else f"{args.circuit}: "  # EAP-IG errors name it
        raise CircuitdError(f"--circuit: cannot read {where}{exc}") from exc
    if circuit.graph.get("kind") == "attribution":
        raise CircuitdError(f"--circuit: {args.circuit} is an attribution graph; validate-graph checks those")
    links = list(circuit.edges(data=True))
    split, kv_heads = _edge_layout([d["name"] for *_, d in links], circuit.graph, args.no_split_qkv)
    positions = tuple(layout_positions(circuit.graph) or ())
    spec = _spec_from_args(args, "eap", {})
    model = load_model(spec.model, spec.device, spec.dtype)
    graph = EdgeGraph(model.shape, split, kv_heads, positions)
    try:
        idx = graph.index_of([d["name"] for *_, d in links])
    except KeyError as exc:
        raise CircuitdError(f"--circuit: {exc.args[0]}") from exc
    scores = torch.zeros(graph.n_edges)
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    for i, (*_, d) in zip(idx, links, strict=True):
        scores[i] = float(d.get("score", 0.0))
        keep[i] = bool(d.get("in_circuit", True))
    task = build_task(spec, model, args.metric)
    lengths = {len(p) for p in task.clean}
    if positions and lengths != {len(positions)}:
        raise CircuitdError(
            f"--task: {args.circuit} is split by {len(positions)} positions, but the task's prompts have "
            f"{'/'.join(map(str, sorted(lengths)))} tokens"
        )
    ctx = MethodContext(model, graph, task, task.metric, args.ablation, batch_size=spec.batch_size)
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


def cmd_validate_graph(args: argparse.Namespace) -> int:
    import torch

    from circuitd.attribution import check_interventions, record
    from circuitd.models.registry import load_model
    from circuitd.transcoders.sources import load_transcoders
    from graphs import read_json
    from graphs.attribution_graph import node_id
    from graphs.attribution_networkx import graph_parts

    try:
        graph = read_json(args.graph)
        meta = graph.graph
        model_id, ids, n_layers = meta["model"], meta["prompt_ids"], int(meta["n_layers"])
        nodes, adjacency = graph_parts(graph)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CircuitdError(
            f"--graph: {args.graph} is not an attribution graph from discover: {exc}"
        ) from exc
    names = [node_id(n, n_layers) for n in nodes]
    chosen = []
    for name in args.node:
        if name not in names:
            raise CircuitdError(f"--node: '{name}' is not a node of {args.graph}")
        if names.index(name) in chosen:
            raise CircuitdError(f"--node: '{name}' is given twice")
        chosen.append(names.index(name))
    model = load_model(model_id, args.device)
    source = args.transcoders if args.transcoders is not None else meta.get("transcoders")
    ctx = record(model, load_transcoders(source, model), torch.tensor(ids))
    convention = (meta.get("params") or {}).get("convention", "circuitd")  # the graph's own
    checks = check_interventions(ctx, adjacency, nodes, chosen, args.scale, convention)
    kind = "full" if meta.get("full") else "pruned"
    print(f"graph: {args.graph} ({kind}: {len(nodes)} nodes); "
          f"scaling {', '.join(args.node)} by {args.scale:g}")
    print(f"{'logit':<16} {'predicted':>11} {'actual':>11} {'pred.direct':>12} {'act.direct':>11}")
    for c in checks:
        label = c.target.token if c.target.token is not None else str(c.target.index)
        print(f"{label!r:<16} {c.predicted:>+11.5f} {c.actual:>+11.5f} {c.predicted_direct:>+12.5f} "
              f"{c.actual_direct:>+11.5f}")
    worst = max(abs(c.predicted - c.actual) for c in checks)
    print(f"max |predicted - actual|: {worst:.5g}")
    return 0


def cmd_reprune(args: argparse.Namespace) -> int:
    from graphs import read_json, write_json
    from graphs.attribution_queries import reprune

    try:
        full = read_json(args.graph)
        if args.format == "neuronpedia":
            doc = _write_neuronpedia(full, args.out, args.node_threshold, args.edge_threshold)
            n_nodes, n_edges = len(doc["nodes"]), len(doc["links"])
        else:
            pruned = reprune(full, args.node_threshold, args.edge_threshold)
            write_json(pruned, args.out)
            n_nodes, n_edges = pruned.number_of_nodes(), pruned.number_of_edges()
    except (OSError, ValueError, KeyError) as exc:
        raise CircuitdError(f"--graph: {args.graph}: {exc}") from exc
    print(f"pruned at node {args.node_threshold}, edge {args.edge_threshold}: {n_nodes} nodes, "
          f"{n_edges} edges -> {args.out}")
    return 0


def _add_task_args(
    p: argparse.ArgumentParser, task_required: bool = True, model_required: bool = True
) -> None:
    p.add_argument("--model", required=model_required,
                   help="zoo:<name>, random:<preset>[@seed], local:<dir>, TL name")
    p.add_argument("--task", required=task_required,
                   help="a generator (ioi, greater_than, induction, random) or JSON")
    p.add_argument("--task-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a generator parameter, e.g. length=12 or templates=ABBA (repeat for more)")
    p.add_argument("--n-prompts", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")


def add_analysis_commands(sub: Any) -> None:
    """Register edges, discover, evaluate, validate-graph, reprune and summary on the subparsers."""
    p = sub.add_parser("edges", help="count the edges of a model's edge graph")
    p.add_argument("--model", required=True)
    p.add_argument("--no-split-qkv", action="store_true", help="one input per head, not q/k/v")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the dtype the memory estimate is for")
    p.add_argument("--kv-heads", choices=["grouped", "per-query"], default="grouped",
                   help="grouped-query models: k/v edges per key/value head or per query head")
    p.set_defaults(func=cmd_edges)

    p = sub.add_parser("discover", help="find a circuit (in-process)")
    _add_task_args(p, task_required=False)
    p.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD)
    add_method_flags(p)
    p.add_argument("--format", choices=["json", "neuronpedia", "eap-ig"], default="json",
                   help="node-link JSON, the Neuronpedia layout (attribution-graph), or EAP-IG/MIB "
                   "graph JSON (edge circuits: every edge with its score and in_graph)")
    p.add_argument("--all-edges", action="store_true", help="write every scored edge, not just the circuit")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("evaluate", help="faithfulness, curve, CPR and CMD of a circuit file, or "
                       "with --against the ROC AUC of its edge scores against a known circuit")
    _add_task_args(p, task_required=False, model_required=False)  # required unless --against
    p.add_argument("--metric", choices=METRICS, help="overrides the task's metric")
    p.add_argument("--ablation", choices=ABLATIONS, default="resample")
    p.add_argument("--no-split-qkv", action="store_true")
    p.add_argument("--circuit",
                   help="node-link JSON written by discover, or an EAP-IG / MIB graph JSON")
    p.add_argument("--against", metavar="KNOWN.json",
                   help="a known circuit (circuitd.known-circuit/1, e.g. a zoo model's "
                   "known_circuit.json): edge- and node-level ROC AUC of the scores' |score|")
    p.add_argument("scores", nargs="?",
                   help="with --against: a graph written with discover --all-edges (or --format "
                   "eap-ig), or {\"scores\": {edge: score}}")
    p.add_argument("--json", action="store_true", help="with --against: the ROC as JSON, points included")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("validate-graph", help="scale nodes of an attribution graph: predicted vs actual")
    p.add_argument("--graph", required=True, help="node-link JSON from discover --method attribution-graph")
    p.add_argument("--node", action="append", required=True, help="a node id (repeat)")
    p.add_argument("--scale", type=float, default=0.0, help="multiply the nodes' outputs by this (0: ablate)")
    p.add_argument("--transcoders", help="override the transcoders recorded in the graph")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_validate_graph)

    p = sub.add_parser("reprune", help="prune a stored attribution graph again, with other thresholds")
    p.add_argument("graph", help="a full graph: discover --method attribution-graph --all-edges")
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--format", choices=["json", "neuronpedia"], default="json")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reprune)

    p = sub.add_parser("summary", help="print the summary of a circuit file")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=10)
    p.set_defaults(func=cmd_summary)
