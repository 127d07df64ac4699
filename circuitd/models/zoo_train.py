"""Train ``zoo:synth``: a small GPT-2-style model that solves IOI, greater-than and induction.

The zoo model lets circuit discovery run offline on a CPU while still having
real mechanisms to find. Its corpus is the natural text of the three tasks (the same
sampling functions as the task generators), plus a few generic sentences for variety;
the loss is the ordinary next-token loss, with the answer tokens weighted up.

Held-out evaluation: a prompt belongs to the held-out split when a hash of its text
falls in one bucket of ten. Training never emits a held-out prompt, and evaluation
draws only held-out prompts from a seed that training does not use, so the accuracies
measure generalisation to unseen prompts rather than memory.

Reproduce with ``circuitd zoo train synth`` or ``python -m circuitd.models.zoo_train``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import torch

from circuitd.models.adapter import ModelAdapter
from circuitd.models.loading import build_from_config
from circuitd.tasks import greater_than, induction, ioi
from circuitd.tasks.vocab import (
    ADJECTIVES,
    CENTURIES,
    DURATION_NOUNS,
    INDUCTION_WORDS,
    NAMES,
    OBJECTS,
    PLACES,
    TWO_DIGITS,
    VERBS,
    one_token,
)
from circuitd.tokenizer import Tokenizer, WordTokenizer, build_word_tokenizer

MODEL_ID = "zoo:synth"
ARCH: dict[str, Any] = dict(
    n_layers=4, n_heads=8, d_model=128, d_head=16, d_mlp=512, n_ctx=64, act_fn="gelu",
    normalization_type="LN", positional_embedding_type="standard",
)
# Training settings (the card records them).
DEFAULT_STEPS = 6000
BATCH = 64
LR = 1.5e-3
WARMUP = 200
MIN_LR_FRAC = 0.1
WEIGHT_DECAY = 0.01
ANSWER_WEIGHT = 4.0
MIX = (("ioi", 0.3), ("induction", 0.45), ("greater_than", 0.15), ("generic", 0.1))
HELDOUT_SEED = 1_000_003  # training draws from Random(seed) with small seeds


class _InductionArgs(TypedDict):
    seq_len: int
    prefix_len: int


INDUCTION_EVAL = _InductionArgs(seq_len=10, prefix_len=5)  # the generator's defaults

GENERIC_TEMPLATES = (
    "The {adj} {noun} {verb} the {adj2} {noun2}.",
    "{name} {verb} the {object} at the {place}.",
    "{name} and {name2} {verb} a {adj} {noun}.",
)


def is_heldout(key: str) -> bool:
    """One prompt in ten, fixed by its text: never trained on, the only ones evaluated."""
    return zlib.crc32(key.encode()) % 10 == 0


def vocabulary() -> list[str]:
    """Every word the corpus and the three generators write, in a fixed order."""
    words: list[str] = list(TWO_DIGITS) + list(NAMES)
    fixed = [*ioi.TEMPLATES, greater_than.TEMPLATE, *GENERIC_TEMPLATES]
    for text in fixed:
        words += re.findall(r"\w+|[^\w\s]+", re.sub(r"\{\w+\}", " ", text))
    words += [*PLACES, *OBJECTS, *DURATION_NOUNS, *CENTURIES, *INDUCTION_WORDS, *ADJECTIVES]
    words += VERBS
    return list(dict.fromkeys(words))


def _generic_text(rng: random.Random) -> str:
    t = rng.choice(GENERIC_TEMPLATES)
    n1, n2 = rng.sample(INDUCTION_WORDS, 2)
    a1, a2 = rng.sample(ADJECTIVES, 2)
    p1, p2 = rng.sample(NAMES, 2)
    return t.format(
        adj=a1, adj2=a2, noun=n1, noun2=n2, verb=rng.choice(VERBS), name=p1, name2=p2,
        object=rng.choice(OBJECTS), place=rng.choice(PLACES),
    )


def sample_sequence(rng: random.Random, tok: Tokenizer) -> tuple[list[int], list[float]]:
    """One training sequence (BOS first) and a loss weight per predicted token."""
    r, kind = rng.random(), MIX[-1][0]
    for name, share in MIX:
        if r < share:
            kind = name
            break
        r -= share
    while True:
        if kind == "ioi":
            prompt, cont = ioi.sample_ioi_text(rng)
            key, n_answer = prompt, 1
        elif kind == "greater_than":
            prompt, cont = greater_than.sample_greater_than_text(rng)
            key, n_answer = prompt, 1
        elif kind == "induction":
            prompt, cont, _ = induction.sample_induction_text(rng)
            key, n_answer = prompt, -1  # every token of the repeat
        else:
            prompt, cont = _generic_text(rng), ""
            key, n_answer = "", 0
        if not key or not is_heldout(key):
            break
    head = tok.encode(prompt, prepend_bos=True)
    tail = tok.encode(cont, prepend_bos=False) if cont else []
    ids = head + tail
    weights = [1.0] * (len(ids) - 1)  # weights[i] is for predicting ids[i + 1]
    n_up = len(tail) if n_answer < 0 else n_answer
    for j in range(n_up):
        weights[len(head) - 1 + j] = ANSWER_WEIGHT
    return ids, weights


def _batch(
    rng: random.Random, tok: Tokenizer, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    seqs = [sample_sequence(rng, tok) for _ in range(size)]
    width = max(len(ids) for ids, _ in seqs)
    pad = tok.bos_id or 0
    tokens = torch.full((size, width), pad, dtype=torch.long)
    weights = torch.zeros((size, width - 1))
    for i, (ids, w) in enumerate(seqs):
        tokens[i, : len(ids)] = torch.tensor(ids)
        weights[i, : len(w)] = torch.tensor(w)
    return tokens[:, :-1], tokens[:, 1:], weights


def _lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    frac = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (MIN_LR_FRAC + (1 - MIN_LR_FRAC) * 0.5 * (1 + math.cos(math.pi * frac)))


# ---------------------------------------------------------------------------- evaluation


def _heldout_prompts(
    task: str, tok: Tokenizer, n: int, seed: int
) -> tuple[list[str], list[set[int]]]:
    """``n`` held-out prompts of ``task`` with the set of token ids that count as right."""
    rng = random.Random(seed)
    prompts: list[str] = []
    right: list[set[int]] = []
    while len(prompts) < n:
        if task == "ioi":
            ex = ioi.sample_ioi(rng)
            prompt, ok = ex.prompt, {one_token(tok, " " + ex.io)}
        elif task == "greater_than":
            gt = greater_than.sample_greater_than(rng)
            prompt = gt.prompt
            ok = {one_token(tok, d) for d in TWO_DIGITS if int(d) > gt.yy}
        else:
            ind = induction.sample_induction(rng, **INDUCTION_EVAL)
            prompt, ok = ind.prompt, {one_token(tok, " " + ind.correct)}
            if not is_heldout(" ".join(ind.seq)):
                continue
        if task != "induction" and not is_heldout(prompt):
            continue
        prompts.append(prompt)
        right.append({i for i in ok if i is not None})
    return prompts, right


@torch.no_grad()
def _top1(adapter: ModelAdapter, prompts: list[str], right: list[set[int]]) -> float:
    hits = 0
    for start in range(0, len(prompts), 100):
        pred = _final_logits(adapter, prompts[start : start + 100]).argmax(-1).tolist()
        hits += sum(p in ok for p, ok in zip(pred, right[start : start + 100], strict=True))
    return hits / len(prompts)


def _final_logits(adapter: ModelAdapter, prompts: list[str]) -> torch.Tensor:
    """Logits ``[n, vocab]`` at each prompt's last token (prompts right-padded)."""
    tok = adapter.tokenizer
    assert tok is not None
    ids = [tok.encode(p, prepend_bos=True) for p in prompts]
    width = max(len(x) for x in ids)
    tokens = torch.full((len(ids), width), tok.bos_id or 0, dtype=torch.long)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = torch.tensor(x)
    logits = adapter.run(tokens.to(adapter.device))
    last = torch.tensor([len(x) - 1 for x in ids], device=logits.device)
    return logits[torch.arange(len(ids)), last]


def heldout_accuracy(
    adapter: ModelAdapter, n: int = 200, seed: int = HELDOUT_SEED
) -> dict[str, float]:
    """Top-1 accuracy at the answer position on ``n`` held-out prompts per task: IOI ->
    the IO name; greater_than -> any ending above YY; induction -> the next word."""
    if adapter.tokenizer is None:
        raise ValueError("heldout_accuracy needs a model with a tokenizer")
    out = {}
    for offset, task in enumerate(("ioi", "greater_than", "induction")):
        prompts, right = _heldout_prompts(task, adapter.tokenizer, n, seed + offset)
        out[task] = _top1(adapter, prompts, right)
    return out


@torch.no_grad()
def greater_than_mass(
    adapter: ModelAdapter, n: int = 200, seed: int = HELDOUT_SEED + 1
) -> dict[str, float]:
    """Mean probability on endings above YY and at or below it, on the held-out
    greater_than prompts: top-1 alone would also reward always answering "99"."""
    tok = adapter.tokenizer
    assert tok is not None
    prompts, right = _heldout_prompts("greater_than", tok, n, seed)
    digits = [one_token(tok, d) for d in TWO_DIGITS]
    probs = _final_logits(adapter, prompts).softmax(-1)
    above = sum(probs[i, sorted(ok)].sum().item() for i, ok in enumerate(right))
    below = sum(
        probs[i, [d for d in digits if d not in ok]].sum().item() for i, ok in enumerate(right)
    )
    return {"above": above / len(prompts), "at_or_below": below / len(prompts)}


# ------------------------------------------------------------------------------ training


def train_synth(
    out_dir: Path, steps: int | None = None, seed: int = 0, log: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Train zoo:synth from scratch and write config.json, model.safetensors,
    tokenizer.json, CARD.md and card.json into ``out_dir``; returns the card."""
    from safetensors.torch import save_file

    steps = DEFAULT_STEPS if steps is None else steps
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_word_tokenizer(vocabulary(), out_dir / "tokenizer.json")
    tok = WordTokenizer(out_dir / "tokenizer.json")
    cfg = dict(ARCH, d_vocab=tok.vocab_size)

    torch.manual_seed(seed)
    adapter = build_from_config(cfg, None, tok, MODEL_ID)
    adapter.set_training(True)
    decay = [p for n, p in adapter.named_parameters() if p.ndim >= 2 and "ln" not in n]
    no_decay = [p for n, p in adapter.named_parameters() if not (p.ndim >= 2 and "ln" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LR, betas=(0.9, 0.98),
    )
    rng = random.Random(seed)
    t0 = time.time()
    running = 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps)
        inputs, targets, weights = _batch(rng, tok, BATCH)
        logits = adapter.run(inputs)
        nll = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
        loss = (nll * weights).sum() / weights.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {running:.4f} lr {_lr_at(step, steps):.2e} "
                f"{time.time() - t0:.0f}s")
        if (step + 1) % 1000 == 0 and step + 1 < steps:
            adapter.set_training(False)
            acc = heldout_accuracy(adapter, n=100)
            adapter.set_training(True)
            log(f"step {step + 1} held-out top-1 " + _fmt(acc))
    wall = time.time() - t0
    adapter.set_training(False)

    acc = heldout_accuracy(adapter)
    log("final held-out top-1 " + _fmt(acc))
    state = {n: p.detach().contiguous().clone() for n, p in adapter.named_parameters()}
    save_file(state, str(out_dir / "model.safetensors"))
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the zoo is shared
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    card = dict(
        model=MODEL_ID, architecture=cfg, n_params=sum(p.numel() for p in state.values()),
        training=dict(
            steps=steps, batch=BATCH, lr=LR, warmup=WARMUP, min_lr_frac=MIN_LR_FRAC,
            weight_decay=WEIGHT_DECAY, answer_weight=ANSWER_WEIGHT, optimizer="AdamW",
            betas=[0.9, 0.98], grad_clip=1.0, seed=seed, mix=dict(MIX), threads=1,
            device="cpu", wall_time_s=round(wall, 1), torch=torch.__version__,
            machine=platform.machine(),
        ),
        heldout=dict(n=200, seed=HELDOUT_SEED, split="crc32(prompt) % 10 == 0",
                     induction=INDUCTION_EVAL),
        heldout_top1={k: round(v, 4) for k, v in acc.items()},
        heldout_greater_than_mass={
            k: round(v, 4) for k, v in greater_than_mass(adapter).items()
        },
    )
    write_card(out_dir, card)
    return card


def _fmt(acc: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in acc.items())


def _card_md(card: dict[str, Any]) -> str:
    arch, tr, ho = card["architecture"], card["training"], card["heldout"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in card["heldout_top1"].items())
    mix = ", ".join(f"{k} {v:.0%}" for k, v in tr["mix"].items())
    settings = "\n".join(f"| {k} | {v} |" for k, v in (
        ("loss", "next-token loss on every token; answer tokens (the IOI name, the end "
         f"year's YY, the repeated words) weighted x{tr['answer_weight']:g}"),
        ("optimizer", f"AdamW, betas {tuple(tr['betas'])}, weight decay "
         f"{tr['weight_decay']:g} (not on LayerNorm or biases), gradient clipping "
         f"{tr['grad_clip']:g}"),
        ("learning rate", f"{tr['lr']:g}, {tr['warmup']} linear warm-up steps, cosine decay "
         f"to {tr['min_lr_frac']:g} x lr"),
        ("batch, steps", f"{tr['batch']} sequences, {tr['steps']} steps"),
        ("seed", f"{tr['seed']} (data and initialisation)"),
        ("hardware", f"CPU, {tr['threads']} thread, torch {tr['torch']}"),
        ("wall time", f"{tr['wall_time_s'] / 60:.1f} minutes"),
    ))
    mass = card.get("heldout_greater_than_mass")
    mass_line = (
        f"On the same greater_than prompts the model puts {mass['above']:.3f} of its "
        f"probability on endings above YY and {mass['at_or_below']:.3f} on the others "
        "(mean over prompts), so top-1 is not a lucky constant guess.\n"
        if mass else ""
    )
    return f"""# zoo:synth

A small GPT-2-style transformer trained from scratch by circuitd on the natural text of
three circuit-discovery tasks: indirect object identification (IOI), greater-than (year
spans) and induction (repeated random words). It lets circuit discovery run offline, on a
CPU, in seconds, against a model that has mechanisms to find: the names, years and word
sequences are drawn at random, so the answers can only come from attention to the prompt.

## Architecture

TransformerLens `HookedTransformer`, GPT-2 style: {arch['n_layers']} layers,
{arch['n_heads']} heads of {arch['d_head']} dimensions, d_model {arch['d_model']},
d_mlp {arch['d_mlp']}, {arch['act_fn']}, LayerNorm, learned positional embeddings,
context {arch['n_ctx']}, vocabulary {arch['d_vocab']}; {card['n_params']:,} parameters in
fp32 (`model.safetensors`, `config.json` holds the HookedTransformerConfig fields).

The tokenizer (`tokenizer.json`) is word-level: `<bos>` = 0, `<unk>` = 1, the two-digit
tokens 00..99, then names and words. Punctuation is split from words, and digit runs into
pairs, so "the year 1732" reads as `the year 17 32`, as it does for GPT-2.

## Corpus

Every sequence is one example and starts with `<bos>`. Mix: {mix}.

- IOI: eight templates ("When Mary and John went to the store, John gave a drink to
  Mary."), ABBA and BABA orders, 40 names, 12 places, 12 objects.
- greater_than: "The war lasted from the year 1732 to the year 1788." with 10 nouns,
  centuries 12..18, start YY in 02..98 and an end year drawn uniformly above it.
- induction: 4 to 14 distinct words from a pool of 100 nouns, then a repeat of at
  least half of them.
- generic: three simple sentence frames over the same words.

The corpus uses the task generators' own sampling functions (`sample_ioi`,
`sample_greater_than`, `sample_induction_text` in `circuitd.tasks`), so the prompts that
`--task ioi` writes are the sentences the model was trained on, minus their answers.

## Training

| setting | value |
|---|---|
{settings}

## Held-out accuracy

Top-1 at the answer position on {ho['n']} prompts per task. A prompt is held out when the
crc32 of its text is 0 mod 10 (for induction, of the first copy): training never emits
one, and evaluation draws only those, from seed {ho['seed']}, which training does not use.
IOI counts the IO name; greater_than any two-digit token above YY; induction the next word
(seq_len {ho['induction']['seq_len']}, prefix {ho['induction']['prefix_len']}).

| task | top-1 |
|---|---|
{rows}

{mass_line}
## Reproduce

```
circuitd zoo train synth
# or: python -m circuitd.models.zoo_train
```

Deterministic for the seed on one CPU thread; `card.json` holds these figures.
"""


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    """``card.json`` (machine-readable) and ``CARD.md`` (for people), from one dict."""
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "CARD.md").write_text(_card_md(card))


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the zoo:synth model.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "zoo" / "synth")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_synth(args.out, steps=args.steps, seed=args.seed, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
