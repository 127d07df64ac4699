"""Model ids and the model cache.

Ids: a TransformerLens name (``gpt2-small``), ``zoo:<name>`` (shipped with circuitd),
``random:<preset>[@seed]`` (an architecture with seeded random weights) and
``local:<dir>`` (``config.json`` with HookedTransformerConfig fields, ``model.safetensors``,
optional ``tokenizer.json``). Loaded models are cached by (id, device, dtype) so a worker
keeps them between jobs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitd.errors import ModelError

if TYPE_CHECKING:
    import torch

    from circuitd.models.adapter import ModelAdapter, ModelShape

ZOO_DIR = Path(__file__).parent / "zoo"

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
        preset, _, seed = rest.partition("@")
        if preset not in RANDOM_PRESETS:
            raise ModelError(
                f"unknown random preset '{preset}' (choose from {', '.join(RANDOM_PRESETS)})"
            )
        try:
            return ModelRef("random", preset, int(seed) if seed else 0)
        except ValueError as exc:
            raise ModelError(f"random:{rest}: the seed after '@' must be an integer") from exc
    if kind == "zoo":
        if not (ZOO_DIR / rest / "config.json").is_file():
            shipped = sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())
            raise ModelError(f"unknown zoo model '{rest}' (shipped: {', '.join(shipped) or 'none'})")
        return ModelRef("zoo", rest)
    if kind == "local":
        path = Path(rest).expanduser()
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise ModelError(f"local:{rest}: needs a directory with config.json and model.safetensors")
        return ModelRef("local", str(path.resolve()))
    raise ModelError(f"unknown model id prefix '{kind}:' (use zoo:, random:, local: or a TL name)")


def _model_dir(ref: ModelRef) -> Path:
    return ZOO_DIR / ref.name if ref.kind == "zoo" else Path(ref.name)


def model_config(model_id: str) -> dict[str, Any]:
    """HookedTransformerConfig fields of a model, without loading its weights."""
    ref = parse_model_id(model_id)
    if ref.kind == "random":
        return dict(RANDOM_PRESETS[ref.name], seed=ref.seed)
    if ref.kind in ("zoo", "local"):
        return json.loads((_model_dir(ref) / "config.json").read_text())
    from circuitd.models.adapter import pretrained_config

    return pretrained_config(ref.name)


def model_shape(model_id: str) -> ModelShape:
    from circuitd.models.adapter import ModelShape

    return ModelShape.from_config(model_config(model_id))


def _randomise(adapter: ModelAdapter, seed: int) -> None:
    """Give every parameter seeded random values, LayerNorm gains and biases included,
    so invariant tests exercise every term of the forward pass."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(adapter.model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith(".w") and "ln" in name:
            value = 1.0 + 0.1 * noise
        elif name.split(".")[-1].startswith("b_") or name.endswith(".b"):
            value = 0.02 * noise
        else:
            fan_in = p.shape[-2] if p.ndim >= 2 else p.shape[-1]
            value = noise / max(fan_in, 1) ** 0.5
        p.data.copy_(value.to(p.dtype))


def _load(ref: ModelRef, device: str, dtype: torch.dtype) -> ModelAdapter:
    from circuitd.models import adapter

    if ref.kind == "tl":
        return adapter.load_pretrained(ref.name, device, dtype)
    if ref.kind == "random":
        cfg = dict(RANDOM_PRESETS[ref.name], seed=ref.seed)
        model = adapter.build_from_config(cfg, None, None, ref.id, device, dtype)
        _randomise(model, ref.seed)
        return model
    from safetensors.torch import load_file

    from circuitd.models.tokenizer import WordTokenizer

    folder = _model_dir(ref)
    cfg = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    tok_path = folder / "tokenizer.json"
    tokenizer = WordTokenizer(tok_path) if tok_path.is_file() else None
    return adapter.build_from_config(cfg, state, tokenizer, ref.id, device, dtype)


_CACHE: dict[tuple[str, str, str], ModelAdapter] = {}
_LOCK = threading.Lock()


def load_model(model_id: str, device: str = "cpu", dtype: str = "float32") -> ModelAdapter:
    """Load (or reuse) a model; unknown or unreachable models raise ModelError in one line."""
    import torch

    ref = parse_model_id(model_id)
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelError(f"unknown dtype '{dtype}'")
    key = (ref.id, device, dtype)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(ref, device, torch_dtype)
        return _CACHE[key]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
