"""``mib-export`` and ``mib-validate``: MIB circuit-track submission folders.

The layout (MIB circuit-track README, "Submitting to the MIB Leaderboard"): one folder per
task and model, named ``<task>_<model>`` (e.g. ``ioi_gpt2``), holding either

* ``importances``: one ``.json`` with a floating-point score on every edge, or
* ``circuits``: one circuit per edge percentage in :data:`MIB_PERCENTS` (0.1% .. 50%), each
  with no more than that percentage of the model's edges in the graph.

Every file is EAP-IG graph JSON (:mod:`graphs.eap_ig_format`). MIB does not fix the file
names inside a folder; circuitd writes ``importances.json`` and ``circuit_<pct>.json``, and
the validator goes by content, not names. MIB's list also names 0% while asking for 9 files;
circuitd writes and checks the 9 non-zero percentages. MIB also accepts ``.pt`` files, which
circuitd does not write or check. In a folder name the task's ``_`` becomes ``-`` and the
model id's characters outside ``[A-Za-z0-9.-]`` become ``-``, so the first ``_`` splits them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from circuitd.errors import CircuitdError
from circuitd.methods import METHODS

MIB_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)
LAYOUTS = ("importances", "circuits")


def folder_name(task: str, model: str) -> str:
    """``<task>_<model>`` with the separators kept unambiguous."""
    return f"{task.replace('_', '-')}_{re.sub(r'[^A-Za-z0-9.-]+', '-', model).strip('-')}"


def _pct_name(pct: float) -> str:
    return f"circuit_{pct:g}.json"


def cmd_mib_export(args: argparse.Namespace) -> int:
    import torch

    from circuitd.cli.analysis import _spec_from_args, eap_ig_config  # pyright: ignore[reportPrivateUsage]
    from circuitd.discover import discover
    from graphs.eap_ig_format import to_eap_ig

    if args.method == "attribution-graph":
        raise CircuitdError("--method: attribution-graph finds no edge circuit; MIB takes edge circuits")
    # MIB names k/v edges per query head: grouped-query models are scored that way
    spec = _spec_from_args(args, args.method, {"kv_heads": "per-query"})
    result = discover(spec)
    cfg = eap_ig_config(spec.model)
    folder = Path(args.out) / folder_name(spec.task_name, spec.model)
    folder.mkdir(parents=True, exist_ok=True)
    doc = to_eap_ig(result.full_graph, cfg)
    if args.layout == "importances":
        (folder / "importances.json").write_text(json.dumps(doc))
        print(f"{spec.method} on {spec.model}/{spec.task_name}: importance scores -> {folder}")
        return 0
    names = list(doc["edges"])
    scores = torch.tensor([doc["edges"][n]["score"] for n in names]).abs()
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    for pct in MIB_PERCENTS:
        n = math.floor(pct / 100 * len(names))
        keep = {names[i] for i in order[:n]}
        edges = {name: {"score": doc["edges"][name]["score"], "in_graph": name in keep} for name in names}
        touched = {part for name in keep for part in name.split("<")[0].split("->")}
        nodes = {name: {"in_graph": name in touched} for name in doc["nodes"]}
        (folder / _pct_name(pct)).write_text(json.dumps({"cfg": doc["cfg"], "nodes": nodes, "edges": edges}))
    print(f"{spec.method} on {spec.model}/{spec.task_name}: {len(MIB_PERCENTS)} circuits "
          f"({', '.join(f'{p:g}%' for p in MIB_PERCENTS)}) -> {folder}")
    return 0


def _check_file(path: Path) -> tuple[int, int, bool]:
    """(edges in graph, edges in the model, every edge has a numeric score) of one file."""
    from graphs.eap_ig_format import edge_names, parse_edges

    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CircuitdError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CircuitdError(f"{path}: expected a JSON object with cfg, nodes and edges")
    try:
        cfg, names, _, flags = parse_edges(data, str(path))  # pyright: ignore[reportUnknownArgumentType]
    except ValueError as exc:
        raise CircuitdError(str(exc)) from exc
    total = len(edge_names(cfg))
    if len(names) != total:
        raise CircuitdError(f"{path}: edges: {len(names)} of the model's {total} edges; MIB needs every edge")
    edges: dict[str, Any] = data["edges"]
    scored = all(isinstance(v.get("score"), int | float) and not isinstance(v.get("score"), bool)
                 for v in edges.values())
    return sum(flags), total, scored


def validate_folder(folder: Path) -> str:
    """One line on a valid task/model folder; a :class:`CircuitdError` on the first problem."""
    if "_" not in folder.name or folder.name.startswith("_") or folder.name.endswith("_"):
        raise CircuitdError(f"{folder}: folder name: expected <task>_<model>")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    others = [p for p in files if p.suffix != ".json"]
    if others:
        raise CircuitdError(f"{others[0]}: not a .json circuit file (circuitd checks .json only)")
    if not files:
        raise CircuitdError(f"{folder}: no circuit files")
    checked = [(_check_file(p), p) for p in files]
    if len(files) == 1:
        (_, _, scored), path = checked[0]
        if not scored:
            raise CircuitdError(f"{path}: edges: one file must score every edge (importances); "
                                f"or give {len(MIB_PERCENTS)} circuits")
        return f"{folder.name}: importance scores"
    if len(files) != len(MIB_PERCENTS):
        raise CircuitdError(f"{folder}: {len(files)} files; expected 1 (importances) or "
                            f"{len(MIB_PERCENTS)} circuits ({', '.join(f'{p:g}%' for p in MIB_PERCENTS)})")
    totals = {t for (_, t, _), _ in checked}
    if len(totals) != 1:
        raise CircuitdError(f"{folder}: the files' cfg blocks describe different models")
    total = totals.pop()
    counts = sorted(n for (n, _, _), _ in checked)
    for pct, n in zip(MIB_PERCENTS, counts, strict=True):
        if n > math.floor(pct / 100 * total):
            raise CircuitdError(f"{folder}: no circuit with at most {pct:g}% of the {total} edges "
                                f"(the next smallest has {n})")
    return f"{folder.name}: {len(files)} circuits"


def cmd_mib_validate(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise CircuitdError(f"{root}: not a directory")
    folders = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p for p in folders if not p.is_dir()]
    if stray:
        raise CircuitdError(f"{stray[0]}: expected only <task>_<model> folders in {root}")
    if not folders:
        raise CircuitdError(f"{root}: no <task>_<model> folders")
    for folder in folders:
        print(validate_folder(folder))
    tasks = {f.name.split("_", 1)[0] for f in folders}
    models = {f.name.split("_", 1)[1] for f in folders}
    if len(tasks) < 2 or len(models) < 2:
        print(f"note: MIB's leaderboard asks for at least 2 models and 2 tasks "
              f"(here {len(models)} and {len(tasks)})")
    print(f"{root}: valid MIB circuit-track layout ({len(folders)} folders)")
    return 0


def add_mib_commands(sub: Any) -> None:
    """Register mib-export and mib-validate on the subparsers."""
    from circuitd.cli.analysis import _add_task_args  # pyright: ignore[reportPrivateUsage]

    p = sub.add_parser("mib-export", help="discover a circuit and write it as a MIB circuit-track folder")
    _add_task_args(p)
    p.add_argument("--method", choices=[m for m in METHODS if m != "attribution-graph"], default="eap-ig")
    p.add_argument("--layout", choices=LAYOUTS, default="importances",
                   help="one file of edge scores, or one circuit per MIB edge percentage")
    p.add_argument("-o", "--out", required=True, help="the submission directory (a folder per task/model)")
    p.set_defaults(func=cmd_mib_export)

    p = sub.add_parser("mib-validate", help="check a MIB circuit-track submission directory")
    p.add_argument("dir")
    p.set_defaults(func=cmd_mib_validate)
