"""auto-circuit's side of the conformance run; runs in ``.venv-peers`` (TransformerLens 2.18,
auto-circuit 1.0.1), never imports circuitd.

Reads the fixture circuitd wrote (``model/``, ``task.json``, ``circuitd_logits.safetensors``,
``acdc_order.json``), loads the same weights into TL 2.18's HookedTransformer, stops unless its
logits equal circuitd's to ``LOGITS_ATOL``, then runs auto-circuit's EAP
(``mask_gradient_prune_scores``: ``grad_function="logit"``, ``answer_function="avg_diff"``,
``mask_val=0``) and ACDC (``acdc_prune_scores`` with one tau, ``kl_div``): once at float64 (the
values compared) and timed at float32 as circuitd's side is (:mod:`conformance.timing`). Writes
``autocircuit.json`` with every edge by auto-circuit's name.

ACDC's order: auto-circuit visits ``sorted(model.edges, key=dest.layer, reverse=True)``, and
``model.edges`` is a set, so within a layer the order follows the edges' hashes (string hashes:
it changes from process to process). The run pins it by giving ``model.edges`` as an ordered
set in circuitd's visiting order (the sort is stable and circuitd's order already descends in
layer), and at float64 runs once more in auto-circuit's own order to show what the order changes.

    .venv-peers/bin/python conformance/peers_autocircuit.py --work DIR --threads 1 --tau 0.01
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root holds the conformance package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from auto_circuit.data import PromptDataLoader, PromptDataset  # noqa: E402
from auto_circuit.prune_algos.ACDC import acdc_prune_scores  # noqa: E402
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores  # noqa: E402
from auto_circuit.types import PruneScores  # noqa: E402
from auto_circuit.utils.graph_utils import patchable_model  # noqa: E402
from auto_circuit.utils.patchable_model import PatchableModel  # noqa: E402
from ordered_set import OrderedSet  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from conformance.timing import timed  # noqa: E402

LOGITS_ATOL = 1e-5
BUFFERS = ("IGNORE", "mask", "rotary_sin", "rotary_cos")  # computed, not weights


class Refused(Exception):
    """A fixture this side cannot run as given: one line, exit status 2."""


def load_tl_model(folder: Path, dtype: torch.dtype) -> tuple[HookedTransformer, list[str]]:
    """The checkpoint in TL 2.18 at ``dtype``, set up for auto-circuit's factorized graph
    (per-head results, split q/k/v inputs, MLP inputs); also the config keys TL 2.18 lacks."""
    cfg = json.loads((folder / "config.json").read_text())
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    dropped = sorted(k for k in cfg if k not in known)
    config = HookedTransformerConfig(
        **{k: v for k, v in cfg.items() if k in known}, device="cpu", dtype=dtype
    )
    model = HookedTransformer(config, move_to_device=False)
    weights = {k: v.to(dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith(BUFFERS)]
    if missing or unexpected:
        raise Refused(
            f"{folder}/model.safetensors: TL 2.18 misses {missing[:3]}, does not take {unexpected[:3]}"
        )
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    if not config.attn_only:
        model.set_use_hook_mlp_in(True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, dropped


def check_logits(model: HookedTransformer, work: Path, dtype: str) -> float:
    """Largest |logit difference| from circuitd's on the clean prompts; refuses past LOGITS_ATOL."""
    ref = load_file(str(work / "circuitd_logits.safetensors"))
    with torch.no_grad():
        diff = float((model(ref["clean"]) - ref[f"logits_{dtype}"]).abs().max())
    if not diff <= LOGITS_ATOL:
        raise Refused(f"logits ({dtype}): TL 2.18 differs from circuitd by {diff:.3g} > {LOGITS_ATOL}")
    return diff


def loader(task: dict[str, Any]) -> PromptDataLoader:
    """Every prompt in one batch, in the task's order (auto-circuit's ACDC reads one batch)."""
    def ids(key: str) -> torch.Tensor:
        return torch.tensor(task[key], dtype=torch.long)

    answers, wrong = ids("correct").view(-1, 1), ids("incorrect").view(-1, 1)
    data = PromptDataset(ids("clean"), ids("corrupted"), list(answers), list(wrong))
    return PromptDataLoader(data, seq_len=None, diverge_idx=0, batch_size=len(data), shuffle=False)


def eap(model: PatchableModel, data: PromptDataLoader) -> PruneScores:
    """Plain EAP: the gradient of ``-mean logit diff`` at mask 0 (mask 1 = corrupted source)."""
    return mask_gradient_prune_scores(
        model, data, None, grad_function="logit", answer_function="avg_diff", mask_val=0.0
    )


def acdc(model: PatchableModel, data: PromptDataLoader, tau: float) -> PruneScores:
    """ACDC at one tau (``tau * 10**0``), KL to the clean output: kept edges score inf."""
    return acdc_prune_scores(
        model, data, None, tao_exps=[0], tao_bases=[tau], faithfulness_target="kl_div"  # pyright: ignore[reportArgumentType]
    )


def by_name(model: PatchableModel, scores: PruneScores) -> dict[str, float]:
    return {e.name: float(e.prune_score(scores)) for e in model.edges}


def kept(model: PatchableModel, scores: PruneScores) -> list[str]:
    return sorted(name for name, score in by_name(model, scores).items() if math.isinf(score))


def pin_order(model: PatchableModel, order: list[str]) -> set[Any]:
    """Make ``model.edges`` an ordered set in ``order``; returns the original set."""
    original = model.edges
    named = {e.name: e for e in original}
    if sorted(order) != sorted(named):
        extra, lacking = sorted(set(order) - set(named)), sorted(set(named) - set(order))
        raise Refused(f"acdc_order.json: not this model's edges (unknown {extra[:3]}, absent {lacking[:3]})")
    pinned = OrderedSet(named[n] for n in order)
    visited = [e.name for e in sorted(pinned, key=lambda e: e.dest.layer, reverse=True)]
    if visited != order:
        raise Refused("acdc_order.json: not in descending destination layer, auto-circuit would reorder it")
    model.edges = pinned  # pyright: ignore[reportAttributeAccessIssue]
    return original


def run_side(work: Path, dtype: str, tau: float, order: list[str], repeats: int) -> dict[str, Any]:
    """Both methods at ``dtype``, ACDC in the pinned order. With ``repeats``, each is timed
    (one warm-up, the median of ``repeats``); without, ACDC runs once more in auto-circuit's
    own order."""
    tl_model, dropped = load_tl_model(work / "model", getattr(torch, dtype))
    logits_diff = check_logits(tl_model, work, dtype)
    data = loader(json.loads((work / "task.json").read_text()))
    model = patchable_model(tl_model, factorized=True, slice_output="last_seq", separate_qkv=True)
    out: dict[str, Any] = {
        "logits_max_abs_diff": logits_diff, "config_keys_dropped": dropped, "n_edges": len(model.edges)
    }
    original = pin_order(model, order)
    if repeats:
        eap_scores, eap_seconds = timed(lambda: eap(model, data), repeats)
        acdc_scores, acdc_seconds = timed(lambda: acdc(model, data, tau), repeats)
        out["seconds"] = {"eap": eap_seconds, "acdc": acdc_seconds}
    else:
        eap_scores, acdc_scores = eap(model, data), acdc(model, data, tau)
    out["eap"], out["acdc_kept"] = by_name(model, eap_scores), kept(model, acdc_scores)
    if not repeats:
        model.edges = original  # pyright: ignore[reportAttributeAccessIssue]
        out["acdc_kept_own_order"] = kept(model, acdc(model, data, tau))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tau", type=float, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work: Path = args.work
    try:
        order = json.loads((work / "acdc_order.json").read_text())
        out = {
            "float64": run_side(work, "float64", args.tau, order, 0),
            "float32": run_side(work, "float32", args.tau, order, args.repeats),
            "threads": torch.get_num_threads(),
        }
    except Refused as exc:
        print(f"auto-circuit side: {exc}", file=sys.stderr)
        sys.exit(2)
    (work / "autocircuit.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
