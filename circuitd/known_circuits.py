"""The zoo folders of the known-circuit models (:mod:`circuitd.models.zoo_known`): written,
checked against a rebuild, and each card's figures measured with circuitd's own evaluator.

``python -m circuitd.known_circuits --write`` writes every folder (``config.json``,
``model.safetensors``, ``task.json``, ``known_circuit.json``, ``card.json``, ``CARD.md``);
``--check`` says which shipped files differ from what the code builds. Kept apart from the
model definitions because measuring needs the engine, which sits above the models.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuitd import metrics
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.evaluate import Evaluator
from circuitd.models.adapter import ModelShape
from circuitd.models.ids import ZOO_DIR
from circuitd.models.loading import build_from_config
from circuitd.models.zoo_known import (
    FILES,
    KNOWN_CIRCUIT_FILE,
    KNOWN_MODELS,
    TASK_FILE,
    build_state,
    build_task,
    task_description,
)
from circuitd.roc import KnownCircuit
from circuitd.tasks import resolve_task
from circuitd.tasks.base import TaskData


def _json(doc: Any) -> str:
    return json.dumps(doc, indent=1) + "\n"


def _task_json(task: TaskData) -> str:
    """A task file with one prompt (or answer list) per line, so a diff shows which changed."""
    lines = []
    for key, value in task.model_dump(exclude_defaults=True).items():
        if isinstance(value, list):
            rows = ",\n  ".join(json.dumps(v) for v in value)
            lines.append(f" {json.dumps(key)}: [\n  {rows}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def measured(name: str, state: dict[str, torch.Tensor], task: TaskData) -> dict[str, Any]:
    """What the card states about the mechanism, measured with circuitd's own evaluator
    (resample ablation, float32): the metric of the full model, of no edges, of the known
    circuit, and of the known circuit less each of its edges."""
    spec = KNOWN_MODELS[name]
    model = build_from_config(spec.config, dict(state), None, spec.model_id)
    graph = EdgeGraph(model.shape)
    resolved = resolve_task(task, None, model.shape.d_vocab, model.shape.n_ctx)
    ev = Evaluator(MethodContext(model, graph, resolved, resolved.metric))
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    keep[graph.index_of(list(spec.circuit))] = True
    without = torch.stack([keep.clone() for _ in spec.circuit])
    for row, i in enumerate(graph.index_of(list(spec.circuit))):
        without[row, i] = False
    summary = ev.summary(keep)
    return {
        "n_edges": graph.n_edges,
        "metric_full": round(summary["metric_full"], 4),
        "metric_empty": round(summary["metric_empty"], 4),
        "metric_known_circuit": round(summary["metric_circuit"], 4),
        "faithfulness_known_circuit": round(summary["faithfulness"], 6),
        "faithfulness_without_edge": {
            e: round(metrics.faithfulness(v, ev.metric_full, ev.metric_empty), 4)
            for e, v in zip(spec.circuit, ev.metric_of(without).tolist(), strict=True)
        },
    }


def card(name: str, state: dict[str, torch.Tensor], task: TaskData) -> dict[str, Any]:
    spec = KNOWN_MODELS[name]
    return {
        "model": spec.model_id,
        "architecture": spec.config,
        "n_params": sum(int(v.numel()) for v in state.values()),
        "n_nonzero_params": sum(int((v != 0).sum()) for v in state.values()),
        "mechanism": spec.title,
        "known_circuit": KNOWN_CIRCUIT_FILE,
        "task": {"file": TASK_FILE, "n_prompts": len(task.clean), "metric": task.metric},
        "ablation": "resample",
        "measured": measured(name, state, task),
        "build": "python -m circuitd.known_circuits --write",
    }


def card_markdown(name: str, info: dict[str, Any]) -> str:
    spec = KNOWN_MODELS[name]
    m = info["measured"]
    drops = "\n".join(f"| `{e}` | {f:.4f} |" for e, f in m["faithfulness_without_edge"].items())
    edges = "\n".join(f"- `{e}`" for e in spec.circuit)
    return f"""# {spec.model_id}: {spec.title}

A hand-built model whose circuit is known by construction: the weights below are set by
`circuitd.models.zoo_known`, every other weight is zero ({info['n_nonzero_params']} of
{info['n_params']} parameters are nonzero). It is for judging circuit-discovery methods:
`circuitd evaluate --against {KNOWN_CIRCUIT_FILE} GRAPH` gives the ROC AUC of a method's edge
scores against the circuit.

## Mechanism

{spec.mechanism}

## Task

`{TASK_FILE}` (a circuitd task file; the model has no tokenizer, so prompts and answers are
token ids): {info['task']['n_prompts']} prompt pairs, metric `{info['task']['metric']}`.
{task_description(name)}.

## Use

```
circuitd discover --model {spec.model_id} --task circuitd/models/zoo/{name}/{TASK_FILE} \\
    --method eap --all-edges --out graph.json
circuitd evaluate --against circuitd/models/zoo/{name}/{KNOWN_CIRCUIT_FILE} graph.json
```

## Known circuit

`{KNOWN_CIRCUIT_FILE}` lists the edges through which the difference between a clean and a
corrupted prompt reaches the logits, with resample ablation:

{edges}

Every other edge is inert: its destination reads no dimension in which its source's clean
and corrupted values differ (a zero weight, or a positional input that the prompt pairs
share). Measured with circuitd's evaluator on the task ({m['n_edges']} edges in all):

| circuit | metric |
|---|---|
| full model | {m['metric_full']:.4f} |
| no edges | {m['metric_empty']:.4f} |
| the known circuit | {m['metric_known_circuit']:.4f} (faithfulness {m['faithfulness_known_circuit']:.6f}) |

Faithfulness of the known circuit less one edge:

| edge removed | faithfulness |
|---|---|
{drops}

## Rebuild

```
python -m circuitd.known_circuits --write
```
"""


def write(name: str, folder: Path) -> None:
    """Every file of the model's zoo folder."""
    spec = KNOWN_MODELS[name]
    folder.mkdir(parents=True, exist_ok=True)
    state = build_state(name)
    task = build_task(name)
    info = card(name, state, task)
    graph = EdgeGraph(ModelShape.from_config(spec.config))
    known = KnownCircuit(spec.model_id, spec.circuit, description=spec.title)
    (folder / "config.json").write_text(_json(spec.config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)  # package data, as the other files
    (folder / KNOWN_CIRCUIT_FILE).write_text(_json(known.to_json(graph)))
    (folder / TASK_FILE).write_text(_task_json(task))
    (folder / "card.json").write_text(_json(info))
    (folder / "CARD.md").write_text(card_markdown(name, info))


CARD_TOLERANCE = 1e-3
"""How far the card's measured figures may be from a rebuild's: they are float32 forward
passes, rounded, and another machine's arithmetic may round the last digit otherwise."""


def _close(a: Any, b: Any) -> bool:
    """JSON values equal, numbers within :data:`CARD_TOLERANCE`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= CARD_TOLERANCE
    return a == b


def differences(name: str, folder: Path) -> list[str]:
    """The files of ``folder`` that differ from what :func:`write` builds: the weights tensor
    by tensor, ``card.json`` within :data:`CARD_TOLERANCE`, ``CARD.md`` as written from the
    shipped ``card.json``, the rest byte by byte."""
    with tempfile.TemporaryDirectory() as tmp:
        write(name, Path(tmp))
        out = []
        for file in FILES:
            shipped, built = folder / file, Path(tmp) / file
            if not shipped.is_file():
                same = False
            elif file.endswith(".safetensors"):
                a, b = load_file(str(shipped)), load_file(str(built))
                same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            elif file == "card.json":
                same = _close(json.loads(shipped.read_text()), json.loads(built.read_text()))
            elif file == "CARD.md":
                shipped_card = json.loads((folder / "card.json").read_text())
                same = shipped.read_text() == card_markdown(name, shipped_card)
            else:
                same = shipped.read_bytes() == built.read_bytes()
            if not same:
                out.append(file)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the zoo's known-circuit models.")
    parser.add_argument("names", nargs="*", help=f"models to build: {', '.join(KNOWN_MODELS)} (default: all)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write their zoo folders")
    action.add_argument("--check", action="store_true", help="compare the shipped folders with a rebuild")
    args = parser.parse_args()
    names = args.names or list(KNOWN_MODELS)
    unknown = [n for n in names if n not in KNOWN_MODELS]
    if unknown:
        parser.error(f"unknown model '{unknown[0]}' (choose from {', '.join(KNOWN_MODELS)})")
    stale = []
    for name in names:
        if args.write:
            write(name, ZOO_DIR / name)
            print(f"wrote {ZOO_DIR / name}")
        else:
            diff = differences(name, ZOO_DIR / name)
            stale += diff
            print(f"{name}: {'up to date' if not diff else 'differs: ' + ', '.join(diff)}")
    raise SystemExit(1 if stale else 0)


if __name__ == "__main__":
    main()
