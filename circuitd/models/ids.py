"""Model ids, parsed and checked without loading anything (imports no torch: the spec and the
API check ids with it).

Ids: a TransformerLens name (``gpt2-small``), ``zoo:<name>`` (shipped with circuitd),
``random:<preset>[@seed]`` (an architecture with seeded random weights) and
``local:<dir>``: either ``config.json`` with HookedTransformerConfig fields, ``model.safetensors``
and an optional ``tokenizer.json``, or a Hugging Face checkpoint as ``save_pretrained`` writes it
(``config.json`` with ``model_type``/``architectures``, its weights in one file or in shards
named by an index, optional tokenizer files), which TransformerLens converts
(:func:`circuitd.models.loading.hf_tl_config`). An id needs only ``config.json``: a model is
sized from its config before its weights are looked for (:func:`circuitd.models.loading.hf_weight_files`),
so ``circuitd edges`` counts a directory that holds nothing else.

Zoo names and random seeds are parsed strictly (a zoo name is one lowercase path component), so
no id reaches outside the zoo; which local directories and hub names a caller may use is
:mod:`circuitd.access`'s rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitd.errors import ModelError
from circuitd.limits import MAX_SEED

ZOO_DIR = Path(__file__).parent / "zoo"
TL_NAMES_FILE = Path(__file__).parent / "tl_names.txt"
"""TransformerLens's model names and aliases (``CIRCUITD_HUB_MODELS=*tl``), kept as data so the
API checks hub names without importing TransformerLens; ``scripts/tl_names.py`` writes it."""

ZOO_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SEED = re.compile(r"[0-9]{1,10}")

_GPT2_SMALL = dict(
    n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
    act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
)
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=64, d_vocab=101,
        act_fn="gelu", normalization_type="LN",
    ),
    "tiny-attn-only": dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=64, d_vocab=101,
        attn_only=True, normalization_type="LN",
    ),
    "small": dict(
        n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=128, d_vocab=512,
        act_fn="gelu", normalization_type="LN",
    ),
    "gpt2-small": _GPT2_SMALL,
}


@dataclass(frozen=True)
class ModelRef:
    """A parsed model id."""

    kind: str  # "tl", "zoo", "random", "local"
    name: str
    seed: int = 0

    @property
    def id(self) -> str:
        if self.kind == "tl":
            return self.name
        if self.kind == "random":
            return f"random:{self.name}@{self.seed}"
        return f"{self.kind}:{self.name}"


def parse_model_id(model_id: str) -> ModelRef:
    """Parse and check a model id without loading anything."""
    model_id = model_id.strip()
    if not model_id:
        raise ModelError("model id is empty")
    kind, sep, rest = model_id.partition(":")
    if not sep:
        return ModelRef("tl", model_id)
    if kind == "random":
        preset, at, seed = rest.partition("@")
        if preset not in RANDOM_PRESETS:
            raise ModelError(
                f"unknown random preset '{preset}' (choose from {', '.join(RANDOM_PRESETS)})"
            )
        if at and not (_SEED.fullmatch(seed) and int(seed) <= MAX_SEED):
            raise ModelError(f"random:{rest}: the seed after '@' must be an integer from 0 to {MAX_SEED}")
        return ModelRef("random", preset, int(seed) if at else 0)
    if kind == "zoo":
        if not ZOO_NAME.fullmatch(rest):
            raise ModelError(
                f"zoo:{rest}: a zoo name is lowercase letters, digits, '-' and '_' (at most 64), no paths"
            )
        if not (ZOO_DIR / rest / "config.json").is_file():
            shipped = sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())
            raise ModelError(f"unknown zoo model '{rest}' (shipped: {', '.join(shipped) or 'none'})")
        return ModelRef("zoo", rest)
    if kind == "local":
        path = Path(rest).expanduser()
        try:
            usable = (path / "config.json").is_file()
            resolved = path.resolve()
        except OSError as exc:  # a name too long, a directory it may not read: one line, no trace
            raise ModelError(f"local:{rest}: cannot be read ({exc.strerror or 'unreadable'})") from exc
        if not usable:
            raise ModelError(f"local:{rest}: needs a directory with config.json (and the model's weights)")
        return ModelRef("local", str(resolved))
    raise ModelError(f"unknown model id prefix '{kind}:' (use zoo:, random:, local: or a TL name)")


def model_dir(ref: ModelRef) -> Path:
    """The directory of a zoo or local model's files."""
    return ZOO_DIR / ref.name if ref.kind == "zoo" else Path(ref.name)
