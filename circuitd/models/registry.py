"""Models by id (:mod:`circuitd.models.ids`): their configs and shapes, and the model cache.

Loaded models are cached by (id, device, dtype) so a worker keeps them between jobs.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from circuitd.errors import ModelError
from circuitd.models.ids import RANDOM_PRESETS, ModelRef, model_dir, parse_model_id

if TYPE_CHECKING:
    import torch

    from circuitd.models.adapter import ModelAdapter, ModelShape

def model_config(model_id: str) -> dict[str, Any]:
    """HookedTransformerConfig fields of a model, without loading its weights."""
    ref = parse_model_id(model_id)
    if ref.kind == "random":
        return dict(RANDOM_PRESETS[ref.name], seed=ref.seed)
    if ref.kind in ("zoo", "local"):
        return json.loads((model_dir(ref) / "config.json").read_text())
    from circuitd.models.loading import pretrained_config

    return pretrained_config(ref.name)


def model_shape(model_id: str) -> ModelShape:
    from circuitd.models.adapter import ModelShape

    return ModelShape.from_config(model_config(model_id))


def _randomise(adapter: ModelAdapter, seed: int) -> None:
    """Give every parameter seeded random values, LayerNorm gains and biases included,
    so invariant tests exercise every term of the forward pass."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(adapter.named_parameters()):
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
    from circuitd.models import loading

    if ref.kind == "tl":
        return loading.load_pretrained(ref.name, device, dtype)
    if ref.kind == "random":
        cfg = dict(RANDOM_PRESETS[ref.name], seed=ref.seed)
        model = loading.build_from_config(cfg, None, None, ref.id, device, dtype)
        _randomise(model, ref.seed)
        return model
    from safetensors.torch import load_file

    from circuitd.tokenizer import WordTokenizer

    folder = model_dir(ref)
    cfg = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    tok_path = folder / "tokenizer.json"
    tokenizer = WordTokenizer(tok_path) if tok_path.is_file() else None
    return loading.build_from_config(cfg, state, tokenizer, ref.id, device, dtype)


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
