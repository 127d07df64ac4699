"""Train a per-layer transcoder set for a model, and measure it for its card.

Attribution graphs need transcoders that reconstruct each MLP well with few active features;
this module trains them on the model's own activations and reports the three figures a
researcher checks before trusting a graph built on them (Ameisen et al. 2025):

* fraction of variance explained (FVE) of each MLP output, on held-out activations:
  ``1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²``;
* mean L0: active features per token, per layer;
* replacement agreement: how often the model with *every* MLP replaced by its transcoder
  (no error terms, features recomputed live) predicts the same top-1 next token as the model.

Training, per layer: the skip connection and output bias start at the least-squares linear
map from MLP input to MLP output, so the features only have to learn what no linear map
explains; encoder and decoder start tied (decoder rows of unit norm, kept so after every step)
and are trained with Adam on the mean squared error normalised by the output variance.
TopK activations fix L0 at most ``k`` by construction; ReLU uses an L1 penalty on the
activations weighted by decoder norms. Sequences come from a corpus: ``synth`` (zoo:synth's
training mix), ``tasks`` (the task generators' prompts, for any tokenizer that can express
them), or a text file with one document per line. Position 0 (BOS) is left out, as
attribution leaves it out.
"""

from __future__ import annotations

import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from circuitd.errors import CircuitdError
from circuitd.models.adapter import ModelAdapter
from circuitd.transcoders.io import save
from circuitd.transcoders.modules import (
    INPUT_HOOK,
    OUTPUT_HOOK,
    Transcoder,
    TranscoderError,
    TranscoderSet,
    activate,
)

CARD_FILE = "card.json"
CORPORA = ("synth", "tasks")


@dataclass(frozen=True)
class TrainSettings:
    """What a training run is given; written into the card so a set can be reproduced."""

    d_tc: int = 1024
    activation: str = "topk"
    k: int = 16
    l1: float = 3e-4
    skip: bool = True
    steps: int = 1500
    batch: int = 2048
    lr: float = 2e-3
    n_sequences: int = 12000
    n_heldout: int = 1500
    corpus: str = "synth"
    seed: int = 0


def sequences(adapter: ModelAdapter, corpus: str, n: int, seed: int) -> list[list[int]]:
    """``n`` token sequences (BOS first) of ``corpus``; a different ``seed`` gives a disjoint draw."""
    tok = adapter.tokenizer
    if tok is None:
        raise CircuitdError("transcoders: the model has no tokenizer to encode a corpus with")
    rng = random.Random(seed)
    if corpus == "synth":
        from circuitd.models.zoo_train import sample_sequence

        return [sample_sequence(rng, tok)[0] for _ in range(n)]
    if corpus == "tasks":
        from circuitd.tasks import load_task_data, resolve_task

        s = adapter.shape
        out: list[list[int]] = []
        names = ("ioi", "greater_than", "induction")
        for i, name in enumerate(names):
            data = load_task_data(name, tok, s.d_vocab, n=math.ceil(n / len(names) / 2), seed=seed * 7 + i)
            task = resolve_task(data, tok, s.d_vocab, s.n_ctx)
            out += [list(p) for p in task.clean] + [list(p) for p in task.corrupted]
        random.Random(seed).shuffle(out)
        return out[:n]
    path = Path(corpus)
    if not path.is_file():
        raise CircuitdError(f"--corpus: '{corpus}' is neither {' nor '.join(CORPORA)} nor a text file")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise CircuitdError(f"--corpus: {corpus} has no non-empty line")
    rng.shuffle(lines)
    n_ctx = adapter.shape.n_ctx
    return [tok.encode(ln, prepend_bos=True)[:n_ctx] for ln in (lines * math.ceil(n / len(lines)))[:n]]


def _padded(adapter: ModelAdapter, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded tokens (with BOS, else 0) and the mask of real positions after BOS."""
    tok = adapter.tokenizer
    pad = tok.bos_id if tok is not None and tok.bos_id is not None else 0
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
        mask[i, 1 : len(s)] = True  # BOS left out
    return tokens, mask


@torch.no_grad()
def collect(adapter: ModelAdapter, seqs: list[list[int]], batch: int = 256) -> tuple[Tensor, Tensor]:
    """MLP inputs and outputs ``[L, N, D]`` at every real position after BOS of ``seqs``."""
    L = adapter.shape.n_layers
    ins: list[list[Tensor]] = [[] for _ in range(L)]
    outs: list[list[Tensor]] = [[] for _ in range(L)]
    for start in range(0, len(seqs), batch):
        tokens, mask = _padded(adapter, seqs[start : start + batch])
        mask = mask.to(adapter.device)

        def keep(store: list[Tensor], mask: Tensor = mask) -> Callable[[Tensor], None]:
            return lambda act: store.append(act[mask].float().cpu())

        hooks = []
        for layer in range(L):
            hooks += [
                (adapter.hook_mlp_in(layer), keep(ins[layer])),
                (adapter.hook_mlp_out(layer), keep(outs[layer])),
            ]
        adapter.run(tokens.to(adapter.device), hooks, logits=False)
    return torch.stack([torch.cat(x) for x in ins]), torch.stack([torch.cat(y) for y in outs])


def train_layer(
    x: Tensor, y: Tensor, s: TrainSettings, log: Callable[[str], Any] = print, name: str = ""
) -> Transcoder:
    """One transcoder from MLP inputs ``x [N, D]`` to outputs ``y [N, D]`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(s.seed)
    n, d = x.shape
    ones = torch.ones(n, 1)
    linear = torch.linalg.lstsq(torch.cat([x, ones], 1).double(), y.double()).solution.float()  # [D+1, D]
    W_skip = linear[:d].T.contiguous() if s.skip else torch.zeros(d, d)
    b_dec = linear[d].clone() if s.skip else y.mean(0)
    W_dec = torch.randn(s.d_tc, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    x_scale = x.norm(dim=1).mean()
    params = {
        "W_enc": (W_dec * (d**0.5 / x_scale)).clone(),
        "b_enc": torch.zeros(s.d_tc),
        "W_dec": W_dec,
        "b_dec": b_dec,
        "W_skip": W_skip,
    }
    if not s.skip:
        del params["W_skip"]
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=s.lr, betas=(0.9, 0.999))
    var = (y - y.mean(0)).pow(2).sum(1).mean()
    order = torch.randperm(n, generator=gen)
    cursor = 0
    t0 = time.time()
    running = None
    for step in range(s.steps):
        frac = step / max(1, s.steps - 1)
        for g in opt.param_groups:  # linear decay over the last fifth
            g["lr"] = s.lr * min(1.0, (1.0 - frac) / 0.2)
        if cursor + s.batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + s.batch]
        cursor += s.batch
        xb, yb = x[idx], y[idx]
        acts = activate(xb @ params["W_enc"].T + params["b_enc"], s.activation, k=s.k)
        pred = acts @ params["W_dec"] + params["b_dec"]
        if s.skip:
            pred = pred + xb @ params["W_skip"].T
        mse = (pred - yb).pow(2).sum(1).mean() / var
        loss = mse
        if s.activation == "relu":
            loss = loss + s.l1 * (acts * params["W_dec"].norm(dim=1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
        running = mse.item() if running is None else 0.98 * running + 0.02 * mse.item()
        if (step + 1) % 500 == 0 or step + 1 == s.steps:
            log(f"{name} step {step + 1}/{s.steps} nmse {running:.4f} {time.time() - t0:.0f}s")
    p = {k: v.detach() for k, v in params.items()}
    k = s.k if s.activation == "topk" else None
    return Transcoder(
        p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"], s.activation, k=k, W_skip=p.get("W_skip")
    )


@torch.no_grad()
def layer_figures(tset: TranscoderSet, x: Tensor, y: Tensor) -> list[dict[str, float]]:
    """Per layer: FVE of the MLP output, mean L0 and the fraction of features never active."""
    out = []
    for layer in range(tset.n_layers):
        acts = tset.encode(layer, x[layer])
        pred = tset.reconstruct(layer, list(x))
        resid = (y[layer] - pred).pow(2).sum()
        total = (y[layer] - y[layer].mean(0)).pow(2).sum()
        out.append(
            {
                "fve": round(float(1 - resid / total), 4),
                "mean_l0": round(float((acts > 0).sum(-1).float().mean()), 2),
                "dead_fraction": round(float(((acts > 0).sum(0) == 0).float().mean()), 4),
            }
        )
    return out


def replacement_hooks(
    adapter: ModelAdapter, tset: TranscoderSet
) -> list[tuple[str, Callable[[Tensor], Tensor | None]]]:
    """Hooks that replace every MLP output by its transcoder's reconstruction (features live).
    They read ``hook_mlp_in`` and write ``hook_mlp_out``, the sites trained sets use; a set read
    or written elsewhere is refused rather than fed the wrong tensor."""
    if (tset.input_site, tset.output_site) != (INPUT_HOOK, OUTPUT_HOOK):
        raise TranscoderError(
            f"replacement hooks: the set reads {tset.feature_input_hook} and writes "
            f"{tset.feature_output_hook}; only {INPUT_HOOK} / {OUTPUT_HOOK} are hooked here"
        )
    inputs: list[Tensor] = []
    hooks: list[tuple[str, Callable[[Tensor], Tensor | None]]] = []
    for layer in range(tset.n_layers):

        def read(act: Tensor, layer: int = layer) -> None:
            del inputs[layer:]
            inputs.append(act)

        def write(act: Tensor, layer: int = layer) -> Tensor:
            return tset.reconstruct(layer, inputs[: layer + 1]).to(act.dtype)

        hooks += [(adapter.hook_mlp_in(layer), read), (adapter.hook_mlp_out(layer), write)]
    return hooks


@torch.no_grad()
def agreement(adapter: ModelAdapter, tset: TranscoderSet, seqs: list[list[int]], batch: int = 256) -> float:
    """Share of real positions (BOS included: it predicts the first word) where the replacement
    model's top-1 next token equals the model's."""
    same = total = 0
    for start in range(0, len(seqs), batch):
        tokens, mask = _padded(adapter, seqs[start : start + batch])
        mask[:, 0] = True
        tokens, mask = tokens.to(adapter.device), mask.to(adapter.device)
        real = adapter.run(tokens).argmax(-1)
        repl = adapter.run(tokens, replacement_hooks(adapter, tset)).argmax(-1)
        same += int((real == repl)[mask].sum())
        total += int(mask.sum())
    return same / total


@torch.no_grad()
def task_agreement(adapter: ModelAdapter, tset: TranscoderSet, n: int = 200) -> dict[str, float]:
    """Top-1 agreement at the answer position of held-out prompts of each task zoo:synth solves."""
    from circuitd.models.zoo_train import HELDOUT_SEED, _heldout_prompts

    tok = adapter.tokenizer
    assert tok is not None
    out = {}
    for offset, task in enumerate(("ioi", "greater_than", "induction")):
        prompts, _ = _heldout_prompts(task, tok, n, HELDOUT_SEED + offset)
        seqs = [tok.encode(p, prepend_bos=True) for p in prompts]
        tokens, _ = _padded(adapter, seqs)
        last = torch.tensor([len(s) - 1 for s in seqs])
        rows = torch.arange(len(seqs))
        tokens = tokens.to(adapter.device)
        real = adapter.run(tokens)[rows, last].argmax(-1)
        repl = adapter.run(tokens, replacement_hooks(adapter, tset))[rows, last].argmax(-1)
        out[task] = round(float((real == repl).float().mean()), 4)
    return out


def train_transcoders(
    adapter: ModelAdapter, s: TrainSettings, log: Callable[[str], Any] = print
) -> tuple[TranscoderSet, dict[str, Any]]:
    """A trained per-layer set for ``adapter`` and its card (settings, figures, provenance)."""
    if s.activation not in ("topk", "relu"):
        raise CircuitdError(f"--activation: training supports topk and relu, not '{s.activation}'")
    torch.manual_seed(s.seed)
    t0 = time.time()
    train_seqs = sequences(adapter, s.corpus, s.n_sequences, s.seed)
    held_seqs = sequences(adapter, s.corpus, s.n_heldout, s.seed + 1_000_003)
    x, y = collect(adapter, train_seqs)
    log(f"collected {x.shape[1]} positions x {x.shape[0]} layers in {time.time() - t0:.0f}s")
    layers = [train_layer(x[i], y[i], s, log, name=f"layer {i}") for i in range(x.shape[0])]
    tset = TranscoderSet(layers).to(adapter.device)
    hx, hy = collect(adapter, held_seqs)
    figures = layer_figures(tset, hx.to(adapter.device), hy.to(adapter.device))
    card: dict[str, Any] = {
        "model": adapter.model_id,
        "kind": tset.kind,
        "settings": {**s.__dict__},
        "train_positions": int(x.shape[1]),
        "heldout_positions": int(hx.shape[1]),
        "layers": figures,
        "mean_l0": round(sum(f["mean_l0"] for f in figures) / len(figures), 2),
        "min_fve": min(f["fve"] for f in figures),
        "replacement_top1_agreement": round(agreement(adapter, tset, held_seqs), 4),
        "wall_time_s": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if s.corpus == "synth":
        card["replacement_top1_agreement_at_answers"] = task_agreement(adapter, tset)
    return tset, card


def card_markdown(card: dict[str, Any]) -> str:
    s = card["settings"]
    lines = [
        f"# Transcoders for {card['model']}",
        "",
        f"Per-layer transcoders ({s['activation']}"
        + (f", k={s['k']}" if s["activation"] == "topk" else f", l1={s['l1']}")
        + f", {s['d_tc']} features, {'with' if s['skip'] else 'no'} skip connection), reading "
        "`hook_mlp_in` and reconstructing `hook_mlp_out`, trained by `circuitd transcoders train` "
        f"on {card['train_positions']} positions of the `{s['corpus']}` corpus "
        f"({s['steps']} Adam steps of {s['batch']}, lr {s['lr']}, seed {s['seed']}, "
        f"{card['wall_time_s']} s on {card['machine']}).",
        "",
        f"Held-out figures ({card['heldout_positions']} positions of a disjoint draw):",
        "",
        "| layer | variance explained | mean L0 | dead features |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {f['fve']:.4f} | {f['mean_l0']:.2f} | {f['dead_fraction']:.2%} |"
        for i, f in enumerate(card["layers"])
    ]
    lines += [
        "",
        f"Replacement model (every MLP replaced, no error terms): top-1 next token agrees with the "
        f"model at {card['replacement_top1_agreement']:.2%} of held-out positions.",
    ]
    if "replacement_top1_agreement_at_answers" in card:
        per = ", ".join(f"{k} {v:.2%}" for k, v in card["replacement_top1_agreement_at_answers"].items())
        lines.append(f"At the answer position of 200 held-out task prompts: {per}.")
    return "\n".join(lines) + "\n"


def write_set(tset: TranscoderSet, card: dict[str, Any], out_dir: str | Path) -> Path:
    """The set in circuit-tracer's layout plus ``card.json`` and ``CARD.md``."""
    import json

    out = save(tset.to("cpu"), out_dir)
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (out / "CARD.md").write_text(card_markdown(card))
    for f in out.iterdir():
        f.chmod(0o644)
    return out
