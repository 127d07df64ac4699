"""Models by id (:mod:`circuitd.models.ids`): their configs and shapes, and the model cache.

A model is sized from its config before any weights load or download (``CIRCUITD_MAX_MODEL_PARAMS``,
``CIRCUITD_MAX_MODEL_BYTES``). Loaded models are cached by (id, device, dtype) so a worker keeps
them between jobs, at most ``CIRCUITD_MODEL_CACHE_SIZE`` of them (least recently used dropped).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitd.errors import ModelError
from circuitd.gpu_memory import free_cuda_of
from circuitd.lru import LRU
from circuitd.models.ids import RANDOM_PRESETS, ModelRef, model_dir, parse_model_id
from circuitd.settings import get_settings

if TYPE_CHECKING:
    import torch

    from circuitd.models.adapter import ModelAdapter, ModelShape

CONFIG_KEYS = frozenset({
    # sizes
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out",
    "n_key_value_heads",
    # blocks
    "act_fn", "normalization_type", "attn_only", "gated_mlp", "parallel_attn_mlp", "final_rms",
    "uses_rms_norm", "eps", "post_embedding_ln", "use_normalization_before_and_after",
    # attention
    "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_adjacent_pairs", "use_attn_scale",
    "attn_scale", "scale_attn_by_inverse_layer_idx", "use_local_attn", "window_size", "attn_types",
    "attention_dir", "use_qk_norm", "attn_scores_soft_cap", "output_logits_soft_cap",
    # identity and defaults
    "model_name", "original_architecture", "seed", "default_prepend_bos", "tokenizer_prepends_bos",
})
"""The HookedTransformerConfig fields a zoo or local ``config.json`` may hold: the architecture only.
Never ``tokenizer_name`` or ``trust_remote_code`` (TransformerLens would fetch a tokenizer and run
its code), checkpoints, devices, or anything else that names files or code."""


def _read_json(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({' '.join(str(exc).split())})") from exc
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: expected an object of HookedTransformerConfig fields")
    return cfg


def _is_hf_dir(ref: ModelRef) -> bool:
    """A ``local:`` Hugging Face checkpoint (``config.json`` with ``model_type``/``architectures``)."""
    if ref.kind != "local":
        return False
    cfg = _read_json(model_dir(ref))
    return "model_type" in cfg or "architectures" in cfg


def _read_config(folder: Path) -> dict[str, Any]:
    """A zoo or local model's ``config.json``, architecture keys only (:data:`CONFIG_KEYS`)."""
    path = folder / "config.json"
    cfg = _read_json(folder)
    for key in cfg:
        if key not in CONFIG_KEYS:
            raise ModelError(f"{path}: {key}: not an architecture field a model config may set")
    return cfg


def model_config(model_id: str) -> dict[str, Any]:
    """HookedTransformerConfig fields of a model, without loading its weights (hub models: the
    config is fetched, nothing else; Hugging Face checkpoint directories: converted by
    TransformerLens from ``config.json``, never passed raw to HookedTransformerConfig).

    Kept per model, like the models themselves: every job sizes its model before loading it,
    and a hub config is a network round trip."""
    return dict(_config_of(parse_model_id(model_id)))


@lru_cache(maxsize=64)
def _config_of(ref: ModelRef) -> dict[str, Any]:
    if ref.kind == "random":
        return dict(RANDOM_PRESETS[ref.name], seed=ref.seed)
    if _is_hf_dir(ref):
        from circuitd.models.loading import hf_tl_config

        return hf_tl_config(model_dir(ref))
    if ref.kind in ("zoo", "local"):
        return _read_config(model_dir(ref))
    from circuitd.models.loading import pretrained_config

    return pretrained_config(ref.name)


def model_shape(model_id: str) -> ModelShape:
    from circuitd.models.adapter import ModelShape

    return ModelShape.from_config(model_config(model_id))


def check_model_size(model_id: str, dtype: str, shape: ModelShape | None = None) -> None:
    """Refuse a model whose config says it is over ``CIRCUITD_MAX_MODEL_PARAMS`` parameters or
    ``CIRCUITD_MAX_MODEL_BYTES`` (weights at ``dtype`` and one prompt's activations)."""
    shape = shape or model_shape(model_id)
    settings = get_settings()
    n = shape.n_params
    if n > settings.max_model_params:
        raise ModelError(
            f"model: {model_id} has {n:.3g} parameters, "
            f"over CIRCUITD_MAX_MODEL_PARAMS={settings.max_model_params}"
        )
    total, needs = memory_estimate(shape, dtype)
    if total > settings.max_model_bytes:
        raise ModelError(
            f"model: {model_id} needs {needs}, over CIRCUITD_MAX_MODEL_BYTES={settings.max_model_bytes}"
        )


def memory_estimate(shape: ModelShape, dtype: str) -> tuple[int, str]:
    """Bytes a model needs at ``dtype`` (its weights and one prompt of ``CIRCUITD_MAX_TOKENS``
    tokens' activations), from its shape alone, and the same in words for messages."""
    weights, activations = shape.memory_bytes(dtype, get_settings().max_tokens)
    total = weights + activations
    parts = f"weights {_size(weights)}, activations {_size(activations)}"
    return total, f"about {_size(total)} at {dtype} ({parts})"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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


def _load(ref: ModelRef, cfg: dict[str, Any], device: str, dtype: torch.dtype) -> ModelAdapter:
    """The model's weights, for the config :func:`model_config` read (and the size check passed)."""
    from circuitd.models import loading

    if ref.kind == "tl":
        return loading.load_pretrained(ref.name, device, dtype)
    if ref.kind == "random":
        model = loading.build_from_config(cfg, None, None, ref.id, device, dtype)
        _randomise(model, ref.seed)
        return model
    if _is_hf_dir(ref):
        return loading.load_hf_dir(model_dir(ref), cfg, ref.id, device, dtype)
    from safetensors.torch import load_file

    from circuitd.models.dir_files import file_in_dir
    from circuitd.tokenizer import WordTokenizer

    folder = model_dir(ref)
    state = load_file(str(file_in_dir(folder, "model.safetensors", ref.id)))
    tok_path = folder / "tokenizer.json"
    tokenizer = WordTokenizer(tok_path) if tok_path.is_file() else None
    return loading.build_from_config(cfg, state, tokenizer, ref.id, device, dtype)


_CACHE: LRU[tuple[str, str, str], ModelAdapter] = LRU(
    lambda: get_settings().model_cache_size,
    serial=True,
    on_drop=free_cuda_of(lambda model: str(model.device)),
)


def load_model(model_id: str, device: str = "cpu", dtype: str = "float32") -> ModelAdapter:
    """Load (or reuse) a model; unknown, unreachable or oversized models raise ModelError in one line."""
    import torch

    from circuitd.models.adapter import DTYPE_BYTES, ModelShape

    ref = parse_model_id(model_id)
    if dtype not in DTYPE_BYTES:
        raise ModelError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPE_BYTES)})")
    torch_dtype = getattr(torch, dtype)

    def load() -> ModelAdapter:
        cfg = model_config(model_id)
        check_model_size(ref.id, dtype, ModelShape.from_config(cfg))
        return _load(ref, cfg, device, torch_dtype)

    return _CACHE.get_or_make((ref.id, device, dtype), load)


def cached_models() -> list[tuple[str, str, str]]:
    """(id, device, dtype) of the loaded models, least recently used first."""
    return _CACHE.keys()


def clear_cache() -> None:
    _CACHE.clear()
    _config_of.cache_clear()
