"""circuit-tracer's side of the attribution-graph conformance run; runs in ``.venv-peers``
(TransformerLens 2.18, circuit-tracer 0.5.0), never imports circuitd.

``attribute``: reads the fixture circuitd wrote (``models/NAME``, ``prompt.json``, a case's
``transcoders/`` in circuit-tracer's per-layer layout), builds circuit-tracer's replacement model
(``ReplacementModel.from_config``, TransformerLens backend) on the same weights, stops unless its
logits equal circuitd's to ``LOGITS_ATOL``, then runs ``circuit_tracer.attribute`` (every feature,
no pruning) once more per timed repeat (:mod:`conformance.timing`). Writes ``tracer.safetensors``
(the unpruned adjacency, active features, logit targets) and ``tracer.json`` (the time).

``layouts``: circuit-tracer's own writers on a set circuitd wrote: its cache writer
(``_save_transcoder_set_to_cache``, ``SingleLayerTranscoder.to_safetensors`` underneath) plus the
``config.yaml`` its cache layout holds, once per (input hook, output hook) pair, and
``CrossLayerTranscoder.to_safetensors`` for a cross-layer set; each read back by circuit-tracer's
``load_transcoders_from_cache`` with its hooks. Writes ``layouts.json`` naming each directory.

    .venv-peers/bin/python conformance/peers_tracer.py attribute --work DIR --case NAME --threads 1
    .venv-peers/bin/python conformance/peers_tracer.py layouts --work DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root holds the conformance package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from circuit_tracer import ReplacementModel, attribute  # noqa: E402
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt  # noqa: E402
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set  # noqa: E402
from circuit_tracer.utils.caching import (  # noqa: E402
    _save_transcoder_set_to_cache,
    load_transcoders_from_cache,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformer_lens import HookedTransformerConfig  # noqa: E402

from conformance.timing import timed  # noqa: E402

LOGITS_ATOL = 1e-5
BUFFERS = ("IGNORE", "mask", "rotary_sin", "rotary_cos")  # computed, not weights
# circuit-tracer wraps each MLP and the unembedding in a module of its own: their weights move
WRAPPED = (
    (re.compile(r"^(blocks\.\d+\.mlp)\."), r"\1.old_mlp."),
    (re.compile(r"^unembed\."), "unembed.old_unembed."),
)
# (input hook, output hook) pairs written by circuit-tracer's cache writer
HOOK_PAIRS = [
    (hin, hout)
    for hin in ("hook_resid_mid", "hook_mlp_in", "ln2.hook_normalized", "mlp.hook_in")
    for hout in ("hook_mlp_out", "mlp.hook_out")
]
CACHE_PREFIX = "conformance"  # circuit-tracer's cache keys are hub references: org/name


class Refused(Exception):
    """A fixture this side cannot run as given: one line, exit status 2."""


class IdTokenizer:
    """What circuit-tracer asks of a tokenizer when the prompt is token ids: the special ids
    (the BOS it must not prepend again), the vocabulary size and a decoding for labels."""

    padding_side = "right"

    def __init__(self, bos: int, vocab_size: int):
        self.all_special_ids = [bos]
        self.bos_token_id = bos
        self.pad_token_id = self.eos_token_id = None
        self.vocab_size = vocab_size

    def decode(self, ids: Any, **_: Any) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return " ".join(f"<{i}>" for i in ([ids] if isinstance(ids, int) else ids))


def _tl_config(folder: Path, input_hook: str) -> HookedTransformerConfig:
    """TL 2.18's config from circuitd's ``config.json``: the fields 2.18 knows, float32 on CPU,
    the MLP-input hook switched on where the transcoders read it."""
    cfg = json.loads((folder / "config.json").read_text())
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    return HookedTransformerConfig(
        **{k: v for k, v in cfg.items() if k in known},
        device="cpu",
        dtype=torch.float32,
        use_hook_mlp_in=input_hook == "hook_mlp_in",
    )


def _per_layer_paths(folder: Path) -> dict[int, str]:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    names = config.get("files") or sorted(p.name for p in folder.glob("layer_*.safetensors"))
    return {i: str(folder / name) for i, name in enumerate(names)}


def replacement_model(work: Path, case: Path, model_dir: Path) -> Any:
    """circuit-tracer's replacement model of ``model_dir``'s weights and the case's transcoders."""
    tc_dir = case / "transcoders"
    config = yaml.safe_load((tc_dir / "config.yaml").read_text())
    hooks = dict(
        feature_input_hook=config["feature_input_hook"], feature_output_hook=config["feature_output_hook"]
    )
    transcoders = load_transcoder_set(
        _per_layer_paths(tc_dir),
        scan="conformance",
        **hooks,
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_encoder=False,
        lazy_decoder=False,
    )
    model = ReplacementModel.from_config(
        _tl_config(model_dir, hooks["feature_input_hook"]), transcoders, backend="transformerlens"
    )
    weights = load_file(str(model_dir / "model.safetensors"))
    for pattern, replacement in WRAPPED:
        weights = {pattern.sub(replacement, k): v for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith(BUFFERS) and not k.startswith("transcoders.")]
    if missing or unexpected:
        raise Refused(
            f"{model_dir}/model.safetensors: TL 2.18 misses {missing[:3]}, does not take {unexpected[:3]}"
        )
    prompt = json.loads((work / "prompt.json").read_text())
    model.tokenizer = IdTokenizer(prompt["bos"], model.cfg.d_vocab)
    return model


def run_attribute(work: Path, case_name: str, norm: str, threads: int, repeats: int, batch_size: int) -> None:
    torch.set_num_threads(threads)
    case, model_dir = work / "cases" / case_name, work / "models" / norm
    model = replacement_model(work, case, model_dir)
    tokens = torch.tensor(json.loads((work / "prompt.json").read_text())["tokens"])
    with torch.no_grad():
        logits = model(tokens[None])[0]
    ref = load_file(str(model_dir / "logits.safetensors"))["logits"]
    diff = float((logits - ref).abs().max())
    if not diff <= LOGITS_ATOL:
        raise Refused(f"logits: TL 2.18 differs from circuitd by {diff:.3g} > {LOGITS_ATOL}")
    graph, seconds = timed(lambda: attribute(tokens, model, batch_size=batch_size), repeats)
    save_file(
        {
            "adjacency": graph.adjacency_matrix.contiguous(),
            "active_features": graph.active_features.contiguous(),
            "activation_values": graph.activation_values.contiguous(),
            "selected_features": graph.selected_features.contiguous(),
            "logit_ids": torch.tensor([t.vocab_idx for t in graph.logit_targets]),
            "logit_probabilities": graph.logit_probabilities.contiguous(),
            "input_tokens": graph.input_tokens.contiguous(),
        },
        str(case / "tracer.safetensors"),
    )
    (case / "tracer.json").write_text(json.dumps({"seconds": seconds, "logits_max_abs_diff": diff}))


def _cache_config(model_kind: str, input_hook: str, output_hook: str, name: str) -> dict[str, Any]:
    """The ``config.yaml`` circuit-tracer's cache holds: the hub config's keys less the file list
    (and repository fields), plus ``scan`` and ``revision``."""
    return dict(
        model_kind=model_kind,
        feature_input_hook=input_hook,
        feature_output_hook=output_hook,
        scan=f"{CACHE_PREFIX}/{name}",
        revision=None,
    )


def write_layouts(work: Path) -> None:
    """circuit-tracer's writers on circuitd's sets in ``work/layouts/source`` (per-layer) and
    ``work/layouts/source_clt`` (cross-layer), each written set read back by circuit-tracer."""
    root = work / "layouts"
    cache = root / "cache"
    cpu = torch.device("cpu")
    written: dict[str, dict[str, str]] = {}
    sources = _per_layer_paths(root / "source")
    for input_hook, output_hook in HOOK_PAIRS:
        name = f"plt-{input_hook}-{output_hook}".replace(".", "_")
        out = cache / CACHE_PREFIX / name
        out.mkdir(parents=True, exist_ok=True)
        config = {
            **_cache_config("transcoder_set", input_hook, output_hook, name),
            "transcoders": [sources[i] for i in range(len(sources))],
        }
        _save_transcoder_set_to_cache(
            config=config,
            cache_path=out,
            sequential=True,
            device=cpu,
            dtype=torch.float32,
            special_load_fn=None,
            delete_hf_cache=False,
        )
        (out / "config.yaml").write_text(
            yaml.dump(_cache_config("transcoder_set", input_hook, output_hook, name))
        )
        written[name] = {"dir": str(out), "input_hook": input_hook, "output_hook": output_hook}
    clt = load_clt(str(root / "source_clt"), device=cpu, dtype=torch.float32, lazy_decoder=False)
    name = "clt-hook_resid_mid-hook_mlp_out"
    out = cache / CACHE_PREFIX / name
    clt.to_safetensors(str(out))
    (out / "config.yaml").write_text(
        yaml.dump(_cache_config("cross_layer_transcoder", "hook_resid_mid", "hook_mlp_out", name))
    )
    written[name] = {"dir": str(out), "input_hook": "hook_resid_mid", "output_hook": "hook_mlp_out"}
    for name, entry in written.items():  # circuit-tracer reads its own cache back
        loaded, _ = load_transcoders_from_cache(f"{CACHE_PREFIX}/{name}", cache_dir=cache, device=cpu)
        hooks = (loaded.feature_input_hook, loaded.feature_output_hook)
        if hooks != (entry["input_hook"], entry["output_hook"]):
            raise Refused(f"{entry['dir']}: circuit-tracer reads its own set back with hooks {hooks}")
    (root / "layouts.json").write_text(json.dumps(written, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attribute")
    a.add_argument("--work", type=Path, required=True)
    a.add_argument("--case", required=True)
    a.add_argument("--model", default="LN", help="the fixture's model: models/NAME")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--repeats", type=int, default=5)
    a.add_argument("--batch-size", type=int, default=64)
    b = sub.add_parser("layouts")
    b.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "attribute":
            run_attribute(args.work, args.case, args.model, args.threads, args.repeats, args.batch_size)
        else:
            write_layouts(args.work)
    except Refused as exc:
        print(f"circuit-tracer side: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
