"""Hand-built zoo models whose circuits are known by construction.

Each model's residual stream is cut into named one-hot subspaces, and each weight the
mechanism needs moves one subspace into another; every other weight is zero. So which edges
carry the difference between a clean and a corrupted prompt to the logits is a matter of
reading the weights, not of measuring: that set of edges is the model's known circuit
(``known_circuit.json``, :mod:`circuitd.roc`), against which a method's scores get an ROC.

- ``known-induction``: a previous-token head (a0.h0) and an induction head (a1.h0).
- ``known-xor``: an MLP (m0) computes the XOR of two token features; a head (a1.h0) finds
  the position where it is 1 and copies that position's label to the logits.
- ``known-copy``: the tests' copy model: a0.h0 moves the first token to every position,
  a1.h0 copies it from there to the logits at the last position.

The circuits are with respect to each model's task (``task.json``: token-id prompt pairs of
one length), under ``resample`` ablation: an edge whose clean and corrupted values differ only
in dimensions its destination does not read (the positional q/k inputs of a0.h0) is inert.

This module defines the models (weights, tasks, circuits, the mechanism in words) and stays
in the models layer; :mod:`circuitd.known_circuits` writes and checks their zoo folders,
measuring each card's figures with the evaluator. Everything is deterministic (the tasks
draw from fixed seeds).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitd.models.ids import ZOO_DIR
from circuitd.models.loading import build_from_config
from circuitd.tasks.base import TaskData

KNOWN_CIRCUIT_FILE = "known_circuit.json"
TASK_FILE = "task.json"
FILES = ("config.json", "model.safetensors", "card.json", "CARD.md", KNOWN_CIRCUIT_FILE, TASK_FILE)

ATTN_SCORE = 10.0
"""Attention score of a match (0 for a mismatch): a head puts all but ~e^-10 per position of
its weight where the mechanism says, yet stays soft enough that gradients pass through it."""
UNEMBED_GAIN = 5.0
"""Logit of a token per unit of it in the output subspace (the clean logit difference)."""


@dataclass(frozen=True)
class Subspaces:
    """Named blocks of residual dimensions, laid out one after another."""

    sizes: dict[str, int]

    def __getitem__(self, name: str) -> int:
        """The first dimension of block ``name``."""
        start = 0
        for block, size in self.sizes.items():
            if block == name:
                return start
            start += size
        raise KeyError(name)

    @property
    def d_model(self) -> int:
        return sum(self.sizes.values())


def _gain(d_head: int) -> float:
    """Weight g such that a query of g meeting a key of g scores :data:`ATTN_SCORE`
    (TransformerLens divides the dot product by sqrt(d_head))."""
    return (ATTN_SCORE * d_head**0.5) ** 0.5


# --- known-induction ---------------------------------------------------------------------

IND_VOCAB, IND_CTX = 16, 8  # token 0 is BOS; 1..15 are content tokens
IND = Subspaces({"tok": IND_VOCAB, "pos": IND_CTX, "prev": IND_VOCAB, "out": IND_VOCAB})
IND_CONFIG: dict[str, Any] = dict(
    n_layers=2, d_model=IND.d_model, n_heads=2, d_head=IND_VOCAB, n_ctx=IND_CTX, d_vocab=IND_VOCAB,
    attn_only=True, normalization_type=None, positional_embedding_type="standard",
)


def _induction_weights(p: dict[str, torch.Tensor]) -> None:
    """a0.h0 at position i attends to i-1 (by position) and writes that token into ``prev``;
    a1.h0's query is the current token, its key the ``prev`` block, so it attends to the
    position after an earlier occurrence of the current token and copies that position's token
    into ``out``, which the unembedding reads. Heads a0.h1 and a1.h1 are zero."""
    g = _gain(IND_VOCAB)
    tok, pos, prev, out = IND["tok"], IND["pos"], IND["prev"], IND["out"]
    for t in range(IND_VOCAB):
        p["embed.W_E"][t, tok + t] = 1.0
        p["blocks.0.attn.W_V"][0, tok + t, t] = 1.0  # prev head: value = token
        p["blocks.0.attn.W_O"][0, t, prev + t] = 1.0
        p["blocks.1.attn.W_Q"][0, tok + t, t] = g  # induction head: query = current token
        p["blocks.1.attn.W_K"][0, prev + t, t] = g  # key = previous token
        p["blocks.1.attn.W_V"][0, tok + t, t] = 1.0  # value = token
        p["blocks.1.attn.W_O"][0, t, out + t] = 1.0
        p["unembed.W_U"][out + t, t] = UNEMBED_GAIN
    for i in range(IND_CTX):
        p["pos_embed.W_pos"][i, pos + i] = 1.0
        p["blocks.0.attn.W_Q"][0, pos + i, i] = g  # position i asks for slot i ...
        if i + 1 < IND_CTX:
            p["blocks.0.attn.W_K"][0, pos + i, i + 1] = g  # ... which position i-1 holds


IND_CIRCUIT = (
    "input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<q>", "input->a1.h0<v>", "a1.h0->logits",
)
IND_REPEAT = 6  # content tokens before the repeat


def _induction_task(n: int = 30, seed: int = 0) -> TaskData:
    """``BOS x1..x6 x_i``: the answer is x_{i+1}. The corrupted prompt is the same pattern over
    six other tokens, repeating another position j, so its answer, the incorrect one, is
    y_{j+1}. With j != i the corrupted attention pattern differs too: the clean one needs every
    edge of the query-key path, not only the values."""
    rng = random.Random(seed)
    clean: list[list[int]] = []
    corrupted: list[list[int]] = []
    correct: list[int] = []
    incorrect: list[int] = []
    for k in range(n):
        tokens = rng.sample(range(1, IND_VOCAB), 2 * IND_REPEAT)
        xs, ys = tokens[:IND_REPEAT], tokens[IND_REPEAT:]
        i = 1 + k % (IND_REPEAT - 1)  # the repeated token's position, 1..5
        j = rng.choice([p for p in range(1, IND_REPEAT) if p != i])
        clean.append([0, *xs, xs[i - 1]])
        corrupted.append([0, *ys, ys[j - 1]])
        correct.append(xs[i])
        incorrect.append(ys[j])
    return TaskData.generated(
        name="known-induction",
        description="BOS, six distinct tokens, then one of the first five again: predict the token "
        "after its first occurrence; corrupted: six other tokens, another one of them repeated",
        clean=clean, corrupted=corrupted, correct=correct, incorrect=incorrect,
        metric="logit_diff", prepend_bos=False,
    )


# --- known-xor ---------------------------------------------------------------------------

XOR_LABELS, XOR_ITEMS = 8, 6
BOS, QUERY = 0, 1
XOR_VOCAB = 2 + 4 * XOR_LABELS + XOR_LABELS  # BOS, QUERY, items (label, x, y), answers
XOR = Subspaces({"label": XOR_LABELS, "x": 1, "y": 1, "feat": 1, "out": XOR_LABELS})
XOR_CONFIG: dict[str, Any] = dict(
    n_layers=2, d_model=XOR.d_model, n_heads=2, d_head=XOR_LABELS, d_mlp=2, n_ctx=XOR_ITEMS + 2,
    d_vocab=XOR_VOCAB, act_fn="relu", normalization_type=None, positional_embedding_type="standard",
)


def item_token(label: int, x: int, y: int) -> int:
    """The token of an item: a label and two bits."""
    return 2 + 4 * label + 2 * x + y


def answer_token(label: int) -> int:
    return 2 + 4 * XOR_LABELS + label


def _xor_weights(p: dict[str, torch.Tensor]) -> None:
    """An item token writes its label (one-hot) and its bits x, y. m0 computes
    ``feat = 2 relu(x + y - 0.5) - 6 relu(x + y - 1.5)`` = x XOR y (no input sits on a
    ReLU's kink). a1.h0's query is a constant (its bias), its key ``feat``, so it attends to
    the item whose bits differ and copies its label into ``out``; the unembedding maps label
    l to answer token l. Layer 0's heads, m1 and a1.h1 are zero."""
    g = _gain(XOR_LABELS)
    label, x, y, feat, out = XOR["label"], XOR["x"], XOR["y"], XOR["feat"], XOR["out"]
    for lab in range(XOR_LABELS):
        for bx in (0, 1):
            for by in (0, 1):
                t = item_token(lab, bx, by)
                p["embed.W_E"][t, label + lab] = 1.0
                p["embed.W_E"][t, x] = float(bx)
                p["embed.W_E"][t, y] = float(by)
        p["blocks.1.attn.W_V"][0, label + lab, lab] = 1.0
        p["blocks.1.attn.W_O"][0, lab, out + lab] = 1.0
        p["unembed.W_U"][out + lab, answer_token(lab)] = UNEMBED_GAIN
    for neuron, (threshold, weight) in enumerate(((0.5, 2.0), (1.5, -6.0))):
        p["blocks.0.mlp.W_in"][x, neuron] = 1.0
        p["blocks.0.mlp.W_in"][y, neuron] = 1.0
        p["blocks.0.mlp.b_in"][neuron] = -threshold
        p["blocks.0.mlp.W_out"][neuron, feat] = weight
    p["blocks.1.attn.b_Q"][0, 0] = g
    p["blocks.1.attn.W_K"][0, feat, 0] = g


XOR_CIRCUIT = ("input->m0", "m0->a1.h0<k>", "input->a1.h0<v>", "a1.h0->logits")


def _xor_prompt(rng: random.Random) -> tuple[list[int], int, int]:
    """(tokens, the position whose bits differ, its label)."""
    labels = rng.sample(range(XOR_LABELS), XOR_ITEMS)
    odd = rng.randrange(XOR_ITEMS)
    items = []
    for k, lab in enumerate(labels):
        bx = rng.randrange(2)
        by = 1 - bx if k == odd else bx
        items.append(item_token(lab, bx, by))
    return [BOS, *items, QUERY], 1 + odd, labels[odd]


def _xor_task(n: int = 30, seed: int = 0) -> TaskData:
    """``BOS item*6 QUERY``: exactly one item has x != y; the answer is its label's answer
    token. The corrupted prompt has other items, its odd one at another position, with a
    different label there and a different answer."""
    rng = random.Random(seed)
    clean: list[list[int]] = []
    corrupted: list[list[int]] = []
    correct: list[int] = []
    incorrect: list[int] = []
    while len(clean) < n:
        tokens, at, lab = _xor_prompt(rng)
        other, other_at, other_lab = _xor_prompt(rng)
        if other_at == at or other_lab == lab or (other[at] - 2) // 4 == lab:
            continue
        clean.append(tokens)
        corrupted.append(other)
        correct.append(answer_token(lab))
        incorrect.append(answer_token(other_lab))
    return TaskData.generated(
        name="known-xor",
        description="six items (a label and two bits), then QUERY: answer the label of the one "
        "item whose bits differ; corrupted: other items, the odd one elsewhere",
        clean=clean, corrupted=corrupted, correct=correct, incorrect=incorrect,
        metric="logit_diff", prepend_bos=False,
    )


# --- known-copy --------------------------------------------------------------------------

COPY_VOCAB, COPY_CTX = 5, 4
COPY = Subspaces({"tok": COPY_VOCAB, "pos": COPY_CTX, "mov": COPY_VOCAB, "out": COPY_VOCAB})
COPY_CONFIG: dict[str, Any] = dict(
    n_layers=2, d_model=COPY.d_model, n_heads=2, d_head=COPY_VOCAB, n_ctx=COPY_CTX, d_vocab=COPY_VOCAB,
    attn_only=True, normalization_type=None, positional_embedding_type="standard", act_fn="relu",
)
COPY_QK, COPY_UNEMBED = 6.0, 4.0  # the tests' copy model's values (tests/support/models.py)


def _copy_weights(p: dict[str, torch.Tensor]) -> None:
    """a0.h0: every position attends to position 0 and moves its token into ``mov``; a1.h0:
    the last position attends to itself, reads ``mov`` and writes it into ``out``, which the
    unembedding reads."""
    tok, pos, mov, out = COPY["tok"], COPY["pos"], COPY["mov"], COPY["out"]
    last = COPY_CTX - 1
    for t in range(COPY_VOCAB):
        p["embed.W_E"][t, tok + t] = 1.0
        p["blocks.0.attn.W_V"][0, tok + t, t] = 1.0
        p["blocks.0.attn.W_O"][0, t, mov + t] = 1.0
        p["blocks.1.attn.W_V"][0, mov + t, t] = 1.0
        p["blocks.1.attn.W_O"][0, t, out + t] = 1.0
        p["unembed.W_U"][out + t, t] = COPY_UNEMBED
    for i in range(COPY_CTX):
        p["pos_embed.W_pos"][i, pos + i] = 1.0
        p["blocks.0.attn.W_Q"][0, pos + i, 0] = COPY_QK  # every position asks ...
    p["blocks.0.attn.W_K"][0, pos, 0] = COPY_QK  # ... for position 0
    p["blocks.1.attn.W_Q"][0, pos + last, 0] = COPY_QK  # the last position asks for itself
    p["blocks.1.attn.W_K"][0, pos + last, 0] = COPY_QK


COPY_CIRCUIT = ("input->a0.h0<v>", "a0.h0->a1.h0<v>", "a1.h0->logits")


def _copy_task() -> TaskData:
    """Every prompt ``a, a+1, a+2, a+3`` (mod 5): the answer is the first token; corrupted,
    that token shifted by two (the incorrect answer)."""
    clean = [[(a + k) % COPY_VOCAB for k in range(COPY_CTX)] for a in range(COPY_VOCAB)]
    corrupted = [[(row[0] + 2) % COPY_VOCAB, *row[1:]] for row in clean]
    return TaskData.generated(
        name="known-copy",
        description="four tokens counting up mod 5: answer the first one at the last position; "
        "corrupted: the first token shifted by two",
        clean=clean, corrupted=corrupted, correct=[r[0] for r in clean],
        incorrect=[r[0] for r in corrupted], metric="logit_diff", prepend_bos=False,
    )


# --- the zoo entries ---------------------------------------------------------------------


@dataclass(frozen=True)
class KnownModel:
    """A hand-built model: its config, how its weights are set, its circuit and its task."""

    name: str
    config: dict[str, Any]
    set_weights: Callable[[dict[str, torch.Tensor]], None]
    circuit: tuple[str, ...]
    make_task: Callable[[], TaskData]
    title: str
    mechanism: str  # CARD.md's account, markdown

    @property
    def model_id(self) -> str:
        return f"zoo:{self.name}"


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "known-induction", IND_CONFIG, _induction_weights, IND_CIRCUIT, _induction_task,
            "a previous-token head and an induction head",
            f"""Residual stream ({IND.d_model} dimensions): `tok` (one-hot token, {IND_VOCAB}),
`pos` (one-hot position, {IND_CTX}), `prev` (the previous token, {IND_VOCAB}) and `out`
({IND_VOCAB}). Token 0 is BOS, 1..15 are content tokens.

- **a0.h0, previous-token head.** Its query at position i reads `pos` (slot i), its key at
  position j reads `pos` (slot j+1), so it attends from i to i-1; its value reads `tok`
  and its output writes it into `prev`.
- **a1.h0, induction head.** Its query reads `tok` (the current token A), its key reads
  `prev`, so at the last position it attends to the position whose previous token is A: the
  token after A's first occurrence. Its value reads `tok` there and writes it into `out`.
- **Unembedding** reads `out` (logit {UNEMBED_GAIN:g} per unit).

a0.h1 and a1.h1 are zero, and so is every other weight.""",
        ),
        KnownModel(
            "known-xor", XOR_CONFIG, _xor_weights, XOR_CIRCUIT, _xor_task,
            "an MLP computes XOR, a head reads it",
            f"""Residual stream ({XOR.d_model} dimensions): `label` (one-hot, {XOR_LABELS}),
the bits `x` and `y`, `feat` (1) and `out` ({XOR_LABELS}). Tokens: 0 BOS, 1 QUERY, then an item
token `2 + 4 label + 2 x + y` for each label and pair of bits, then one answer token per
label (`{answer_token(0)}` + label).

- **m0** (2 ReLU neurons) computes `feat = 2 relu(x + y - 0.5) - 6 relu(x + y - 1.5)`,
  which is x XOR y on bits, at every position.
- **a1.h0** has a constant query (its bias `b_Q`) and a key that reads `feat`, so the
  QUERY position attends to the item whose bits differ; its value reads `label` there and
  writes it into `out`.
- **Unembedding** maps `out` label l to the answer token of l (logit {UNEMBED_GAIN:g} per unit).

Layer 0's heads, a1.h1 and m1 are zero, and so is every other weight. The XOR is not a
linear function of the bits, so the head's key cannot read it from the input: the MLP is
on the path.""",
        ),
        KnownModel(
            "known-copy", COPY_CONFIG, _copy_weights, COPY_CIRCUIT, _copy_task,
            "copy the first token to the last position",
            f"""The copy model of circuitd's own tests (`tests/support/models.py`), shipped.
Residual stream ({COPY.d_model} dimensions): `tok` (one-hot token, {COPY_VOCAB}), `pos`
(one-hot position, {COPY_CTX}), `mov` ({COPY_VOCAB}) and `out` ({COPY_VOCAB}).

- **a0.h0** attends from every position to position 0 (query and key read `pos`), reads
  `tok` there and writes it into `mov`.
- **a1.h0** attends from the last position to itself (by `pos`), reads `mov` and writes it
  into `out`.
- **Unembedding** reads `out` (logit {COPY_UNEMBED:g} per unit).

a0.h1 and a1.h1 are zero, and so is every other weight.""",
        ),
    )
}


def build_state(name: str) -> dict[str, torch.Tensor]:
    """The model's weights (float32): zeros, then the mechanism's entries."""
    spec = KNOWN_MODELS[name]
    model = build_from_config(spec.config, None, None, spec.model_id)
    params = {k: torch.zeros_like(v) for k, v in model.hooked_transformer.named_parameters()}
    spec.set_weights(params)
    return params


def task_description(name: str) -> str:
    """The task's description, as a sentence."""
    text = build_task(name).description
    return text[:1].upper() + text[1:]


def build_task(name: str) -> TaskData:
    """The model's task, as shipped in its ``task.json``."""
    return KNOWN_MODELS[name].make_task()


def known_circuit_path(name: str) -> Path:
    return ZOO_DIR / name / KNOWN_CIRCUIT_FILE


def shipped_task(name: str) -> TaskData:
    """The task file in the model's zoo folder."""
    return TaskData.generated(**json.loads((ZOO_DIR / name / TASK_FILE).read_text()))
