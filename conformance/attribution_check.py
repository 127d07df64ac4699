"""Attribution graphs against circuit-tracer 0.5.0 on the same seeded random model, random
transcoders and prompt (circuitd's venv; circuit-tracer's side is :mod:`conformance.peers_tracer`,
run in ``.venv-peers``).

1. Writes the fixture: a ``random:`` preset as a ``local:`` checkpoint (``models/LN``) and the
   same weights with RMSNorm in place of LayerNorm (``models/RMS``), each with circuitd's logits,
   a prompt of token ids with a BOS at position 0 (``prompt.json``), and per case a per-layer
   transcoder set in circuit-tracer's layout (``cases/NAME/transcoders``).
2. Per case, circuit-tracer's unpruned graph (``Graph.adjacency_matrix``, every feature), after its
   side has checked that TransformerLens 2.18 gives circuitd's logits to 1e-5.
3. circuitd's graph of the same prompt with ``convention="circuit-tracer"`` (token nodes carry the
   token embedding alone, position 0 has error nodes). Nodes must be the same, in the same order;
   every block of the adjacency (rows: features, logits; columns: features, errors, tokens) must
   agree to :data:`RTOL` relative to the block's largest entry, and the blocks that must be zero
   (error and token rows, logit columns) must be zero on both sides.
4. Times both (the same ``torch.set_num_threads``, one warm-up, the median of ``--repeats``):
   circuitd's :func:`~circuitd.attribution.record` plus :func:`~circuitd.attribution.attribute`
   against circuit-tracer's ``attribute``, model and transcoder loading excluded on both sides.
5. circuit-tracer's own transcoder writers against circuitd's loader (:mod:`conformance.tracer_layouts`).

A case that circuitd refuses fails the run. circuitd reads ``ln2.hook_normalized`` with
circuit-tracer's meaning (TransformerLens 2.x: after a LayerNorm's gain and shift, before an
RMSNorm's gain), so both the LayerNorm and the RMSNorm cases load the same files unchanged.
The last stdout line is ``{"ok": bool, "ratio": circuitd_s / tracer_s, "detail": "..."}``; the
exit status is 0 only when ok. ``report.json`` in the work directory holds every figure.

    .venv/bin/python conformance/attribution_check.py --work DIR --threads N
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: the repository root holds the conformance package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from circuitd.access import full_access  # noqa: E402
from circuitd.attribution import Attribution, AttributionError, attribute, record  # noqa: E402
from circuitd.models.adapter import ModelAdapter  # noqa: E402
from circuitd.models.registry import load_model, model_config  # noqa: E402
from circuitd.transcoders import TranscoderError, load, random_transcoders, save  # noqa: E402
from conformance.timing import timed  # noqa: E402
from conformance.tracer_layouts import check_layouts  # noqa: E402
from graphs.attribution_graph import Node  # noqa: E402

RTOL = 1e-4  # every adjacency block, relative to its largest entry
ACT_RTOL, PROB_ATOL = 1e-5, 1e-6  # feature activations (relative to the largest), logit probabilities
PEERS_SCRIPT = ROOT / "conformance" / "peers_tracer.py"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
SOURCE_MODEL = "random:tiny@0"  # GPT-2-like: LayerNorm, learned positions, MLPs; 2 layers, d_model 64
NORMS = ("LN", "RMS")  # the source model, and the same weights with RMSNorm (no norm biases)
PROMPT_LENGTH, BOS = 8, 0
D_TC = 96
TARGET_ROWS, SOURCE_COLS = ("feature", "logit"), ("feature", "error", "token")


@dataclass(frozen=True)
class Case:
    """One transcoder set: its activation, skip connection and the hooks it reads and writes."""

    name: str
    activation: str
    skip: bool
    input_hook: str = "hook_resid_mid"
    output_hook: str = "hook_mlp_out"
    norm: str = "LN"


CASES = (
    Case("relu", "relu", False),
    Case("jumprelu-skip", "jumprelu", True),
    Case("jumprelu-skip-mlp.hook_in", "jumprelu", True, "mlp.hook_in", "mlp.hook_out"),
    Case("relu-skip-ln2.hook_normalized", "relu", True, "ln2.hook_normalized"),
    Case("rms-jumprelu-skip-ln2.hook_normalized", "jumprelu", True, "ln2.hook_normalized", norm="RMS"),
    Case("rms-relu-hook_resid_mid", "relu", False, norm="RMS"),
)


@dataclass
class CaseResult:
    """One case: compared (with each block's relative error and both sides' seconds) or not."""

    name: str
    status: str  # "compared", "refused" (circuitd refuses the set) or "failed" (a side did not run)
    ok: bool
    summary: str
    blocks: dict[str, float] = field(default_factory=dict)  # block -> relative error
    circuitd_s: float = float("nan")
    tracer_s: float = float("nan")


def write_fixture(work: Path, seed: int) -> tuple[dict[str, ModelAdapter], torch.Tensor]:
    """``models/{LN,RMS}`` (config, weights and circuitd's logits) and ``prompt.json``; returns
    each model as circuitd loads it from those files, and the prompt."""
    source = load_model(SOURCE_MODEL)
    cfg = {k: v for k, v in model_config(SOURCE_MODEL).items() if k != "seed"}
    weights = {k: p.detach().contiguous().clone() for k, p in source.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    rest = torch.randint(1, source.shape.d_vocab, (PROMPT_LENGTH - 1,), generator=gen)
    tokens = torch.cat([torch.tensor([BOS]), rest])
    (work / "prompt.json").write_text(json.dumps({"tokens": tokens.tolist(), "bos": BOS}))
    models = {}
    for norm in NORMS:
        folder = work / "models" / norm
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({**cfg, "normalization_type": norm}, indent=1))
        keep = {k: v for k, v in weights.items() if norm == "LN" or not re.search(r"ln[^.]*\.b$", k)}
        save_file(keep, str(folder / "model.safetensors"))
        with full_access():  # the machine's own user: a local checkpoint directory
            models[norm] = load_model(f"local:{folder.resolve()}")
        with torch.no_grad():
            logits = models[norm].run(tokens[None])[0].contiguous()
        save_file({"logits": logits}, str(folder / "logits.safetensors"))
    return models, tokens


def _node_keys(nodes: list[Node]) -> list[tuple[Any, ...]]:
    return [(n.kind, n.layer, n.pos, n.index if n.kind in ("feature", "logit") else None) for n in nodes]


def tracer_node_keys(out: dict[str, torch.Tensor], n_layers: int, n_pos: int) -> list[tuple[Any, ...]]:
    """circuit-tracer's node order: active features, errors by (layer, pos), tokens, logits."""
    keys: list[tuple[Any, ...]] = [
        ("feature", int(lay), int(p), int(f)) for lay, p, f in out["active_features"].tolist()
    ]
    keys += [("error", lay, p, None) for lay in range(n_layers) for p in range(n_pos)]
    keys += [("token", None, p, None) for p in range(n_pos)]
    keys += [("logit", None, n_pos - 1, int(i)) for i in out["logit_ids"].tolist()]
    return keys


def _amax(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def compare_graphs(att: Attribution, out: dict[str, torch.Tensor]) -> tuple[bool, str, dict[str, float]]:
    """Nodes identical; every block to :data:`RTOL` relative to its largest entry; zero blocks zero."""
    ctx = att.context
    ours, theirs = _node_keys(att.nodes), tracer_node_keys(out, ctx.n_layers, ctx.n_pos)
    if ours != theirs:
        lacking, extra = sorted(set(ours) - set(theirs), key=str), sorted(set(theirs) - set(ours), key=str)
        return False, f"nodes differ: circuit-tracer lacks {lacking[:3]}, has extra {extra[:3]}", {}
    acts = torch.tensor([n.activation for n in att.nodes if n.kind == "feature"], dtype=torch.float64)
    act_err = _amax(acts - out["activation_values"].double()) / max(_amax(acts), 1e-30)
    probs = torch.tensor([n.prob for n in att.nodes if n.kind == "logit"], dtype=torch.float64)
    prob_err = float((probs - out["logit_probabilities"].double()).abs().max())
    A, B = att.adjacency.double(), out["adjacency"].double()
    kinds = [k[0] for k in ours]

    def idx(kind: str) -> torch.Tensor:
        return torch.tensor([i for i, k in enumerate(kinds) if k == kind], dtype=torch.long)

    blocks: dict[str, float] = {}
    for r in TARGET_ROWS:
        for c in SOURCE_COLS:
            a, b = A[idx(r)][:, idx(c)], B[idx(r)][:, idx(c)]
            scale = max(_amax(a), _amax(b))
            blocks[f"{r}<-{c}"] = 0.0 if scale == 0 else _amax(a - b) / scale
    zero_rows = torch.cat([idx("error"), idx("token")])
    nonzero = int((A[zero_rows] != 0).sum() + (B[zero_rows] != 0).sum())
    nonzero += int((A[:, idx("logit")] != 0).sum() + (B[:, idx("logit")] != 0).sum())
    worst = max(blocks, key=lambda k: blocks[k])
    ok = blocks[worst] <= RTOL and nonzero == 0 and act_err <= ACT_RTOL and prob_err <= PROB_ATOL
    summary = (
        f"{len(ours)} nodes ({int(idx('feature').numel())} features), "
        f"largest block error {blocks[worst]:.1e} ({worst}), "
        f"activations {act_err:.1e}, probabilities {prob_err:.1e}"
        + (f", {nonzero} entries where zeros are due" if nonzero else "")
    )
    return ok, summary, blocks


def _peer(python: str, args: list[str]) -> str | None:
    """Run circuit-tracer's side; None when it succeeded, else its last line."""
    proc = subprocess.run([python, str(PEERS_SCRIPT), *args], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return (
        f"circuit-tracer side exited {proc.returncode}: "
        + (proc.stderr.strip().splitlines() or ["no output"])[-1]
    )


@dataclass(frozen=True)
class Run:
    """What every case shares: the work directory, the models, the prompt and how to time."""

    work: Path
    models: dict[str, ModelAdapter]
    tokens: torch.Tensor
    threads: int
    repeats: int
    batch_size: int
    peers_python: str


def run_case(case: Case, run: Run, seed: int) -> CaseResult:
    folder = run.work / "cases" / case.name
    model = run.models[case.norm]
    s = model.shape
    tset = random_transcoders(
        s.n_layers,
        s.d_model,
        D_TC,
        "transcoder",
        case.activation,
        case.skip,
        seed,
        feature_input_hook=case.input_hook,
        feature_output_hook=case.output_hook,
    )
    save(tset, folder / "transcoders")
    try:  # the way a user's set reaches attribution: loaded from disk, then recorded
        loaded = load(folder / "transcoders")
        record(model, loaded, run.tokens)
    except (TranscoderError, AttributionError) as exc:
        return CaseResult(case.name, "refused", False, f"circuitd refuses it: {exc}")
    failed = _peer(
        run.peers_python,
        [
            "attribute",
            "--work",
            str(run.work),
            "--case",
            case.name,
            "--model",
            case.norm,
            "--threads",
            str(run.threads),
            "--repeats",
            str(run.repeats),
            "--batch-size",
            str(run.batch_size),
        ],
    )
    if failed:
        return CaseResult(case.name, "failed", False, failed)
    out = load_file(str(folder / "tracer.safetensors"))
    tracer_s = json.loads((folder / "tracer.json").read_text())["seconds"]

    def ours() -> Attribution:
        return attribute(
            record(model, loaded, run.tokens), batch_size=run.batch_size, convention="circuit-tracer"
        )

    att, circuitd_s = timed(ours, run.repeats)
    ok, summary, blocks = compare_graphs(att, out)
    return CaseResult(case.name, "compared", ok, summary, blocks, circuitd_s, tracer_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="targets per backward pass, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers-python", default=str(PEERS_PYTHON))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    models, tokens = write_fixture(args.work, args.seed)
    run = Run(args.work, models, tokens, args.threads, args.repeats, args.batch_size, args.peers_python)
    results = [run_case(c, run, args.seed + 1 + i) for i, c in enumerate(CASES)]
    compared = [r for r in results if r.status == "compared"]
    try:
        layouts = check_layouts(args.work, args.peers_python, PEERS_SCRIPT, models["LN"], D_TC, args.seed)
        layout_error = None
    except RuntimeError as exc:
        layouts, layout_error = [], str(exc)
    ok = bool(compared) and all(r.ok for r in results) and layout_error is None and all(x.ok for x in layouts)
    ratio = (
        sum(r.circuitd_s for r in compared) / sum(r.tracer_s for r in compared) if compared else float("nan")
    )
    refused = sorted({x.input_hook for x in layouts if x.status == "refused"})
    detail = "; ".join(
        [
            f"{r.name}: {r.summary}"
            + (
                f" ({r.circuitd_s * 1e3:.1f} ms vs {r.tracer_s * 1e3:.1f} ms)"
                if r.status == "compared"
                else ""
            )
            for r in results
        ]
        + [
            layout_error
            or f"circuit-tracer's files: {sum(x.status == 'loaded' for x in layouts)} of "
            f"{len(layouts)} load unchanged, refused input hooks {refused or 'none'}"
        ]
        + [f"{x.name}: {x.reason}" for x in layouts if not x.ok]
    )
    report = {
        "ok": ok,
        "ratio": ratio,
        "cases": [asdict(r) for r in results],
        "layouts": [asdict(x) for x in layouts],
    }
    (args.work / "report.json").write_text(json.dumps(report, indent=1))
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name} [{r.status}]: {r.summary}")
    for x in layouts:
        print(f"{'ok  ' if x.ok else 'FAIL'} layout {x.name} [{x.status}]: {x.reason}")
    print(json.dumps({"ok": ok, "ratio": ratio, "detail": detail}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
