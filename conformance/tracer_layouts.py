"""circuit-tracer's own transcoder files against circuitd's loader (circuitd's venv).

circuitd writes a per-layer set (JumpReLU, skip) and a cross-layer set (JumpReLU; circuit-tracer's
cross-layer writer keeps no skip weights); :mod:`conformance.peers_tracer` rewrites them with
circuit-tracer's own writers, once per (input hook, output hook) pair, in its cache layout. Each
directory must then load in circuitd (:func:`circuitd.transcoders.io.load`) with the same tensors
and the hooks as written; a refusal is a failure. Each set that loads must also be taken by the
replacement model (:func:`circuitd.attribution.check_supported`).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from circuitd.attribution import AttributionError, check_supported
from circuitd.models.adapter import ModelAdapter
from circuitd.transcoders import TranscoderError, TranscoderSet, load, random_transcoders, save


@dataclass
class LayoutResult:
    """One directory circuit-tracer wrote: what circuitd's loader and replacement model made of it."""

    name: str
    input_hook: str
    output_hook: str
    status: str  # "loaded" or "refused"
    reason: str  # the refusal's line, or how the loaded set compares and whether attribution takes it
    ok: bool


def _tensors(tset: TranscoderSet) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in tset.state_dict().items()}


def _compare(ours: TranscoderSet, loaded: TranscoderSet) -> str | None:
    """None when ``loaded`` holds exactly ``ours``'s tensors; else the first difference."""
    a, b = _tensors(ours), _tensors(loaded)
    if set(a) != set(b):
        return f"tensors {sorted(set(a) ^ set(b))[:3]} on one side only"
    for key in a:
        if not torch.equal(a[key], b[key]):
            return f"tensor {key} differs (max |diff| {float((a[key] - b[key]).abs().max()):.3g})"
    if (ours.activation, ours.k, ours.has_skip) != (loaded.activation, loaded.k, loaded.has_skip):
        return f"(activation, k, skip) {(loaded.activation, loaded.k, loaded.has_skip)}, written " + str(
            (ours.activation, ours.k, ours.has_skip)
        )
    return None


def check_layouts(
    work: Path, peers_python: str, peers_script: Path, model: ModelAdapter, d_tc: int, seed: int
) -> list[LayoutResult]:
    """Write the two source sets, let circuit-tracer rewrite them, load every result in circuitd."""
    root = work / "layouts"
    s = model.shape
    sources = {
        "plt": random_transcoders(s.n_layers, s.d_model, d_tc, "transcoder", "jumprelu", True, seed),
        "clt": random_transcoders(
            s.n_layers, s.d_model, d_tc, "cross_layer_transcoder", "jumprelu", False, seed
        ),
    }
    save(sources["plt"], root / "source")
    save(sources["clt"], root / "source_clt")
    proc = subprocess.run(
        [peers_python, str(peers_script), "layouts", "--work", str(work)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"circuit-tracer's layout writer failed (status {proc.returncode}): {last}")
    written = json.loads((root / "layouts.json").read_text())
    results = []
    for name, entry in written.items():
        hin, hout = entry["input_hook"], entry["output_hook"]
        try:
            loaded = load(entry["dir"])
        except TranscoderError as exc:
            results.append(LayoutResult(name, hin, hout, "refused", str(exc), False))
            continue
        problem = _compare(sources["clt" if name.startswith("clt") else "plt"], loaded)
        if problem is None and (loaded.feature_input_hook, loaded.feature_output_hook) != (hin, hout):
            problem = f"hooks read as {loaded.feature_input_hook} / {loaded.feature_output_hook}"
        try:
            check_supported(model, loaded)
            use, usable = "attribution takes it", True
        except AttributionError as exc:
            use, usable = f"attribution refuses it ({exc})", False
        reason = f"{problem or 'same tensors and hooks'}; {use}"
        results.append(LayoutResult(name, hin, hout, "loaded", reason, problem is None and usable))
    return results
