"""Loading models into a :class:`~circuitd.models.adapter.ModelAdapter`: from config fields
(with given or seeded random weights) or by a TransformerLens name from the model hub."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from circuitd.errors import ModelError
from circuitd.models.adapter import ModelAdapter
from circuitd.tokenizer import HFTokenizer, Tokenizer


def build_from_config(
    cfg: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None,
    tokenizer: Tokenizer | None,
    model_id: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ModelAdapter:
    """A HookedTransformer from config fields, with given weights or seeded random ones."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    try:
        config = HookedTransformerConfig(**{**cfg, "device": device, "dtype": dtype})
    except TypeError as exc:
        raise ModelError(f"{model_id}: bad model config: {exc}") from exc
    model = HookedTransformer(config, move_to_device=False)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith(("IGNORE", "mask"))]
        if missing or unexpected:
            raise ModelError(
                f"{model_id}: weights do not match the config "
                f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
            )
    model.to(device, print_details=False)
    model.to(dtype, print_details=False)
    return ModelAdapter(model, tokenizer, model_id)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """Keep the hub client's retry warnings off the terminal: a failure ends in one line."""
    import logging

    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "transformers", "transformer_lens")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def tl_model_names() -> list[str]:
    """TransformerLens's official model names and their aliases, sorted, less the models whose
    loading runs code from the hub (TransformerLens turns ``trust_remote_code`` on for them).
    ``scripts/tl_names.py`` writes this list to :data:`circuitd.models.ids.TL_NAMES_FILE`."""
    from transformer_lens.loading_from_pretrained import NEED_REMOTE_CODE_MODELS
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    names = set()
    for official in OFFICIAL_MODEL_NAMES:
        if not official.startswith(NEED_REMOTE_CODE_MODELS):
            names.update([official, *MODEL_ALIASES.get(official, [])])
    return sorted(names)


def _official_name(name: str) -> str:
    """The official name of a TransformerLens model; never a path (TransformerLens would read a
    directory of that name), never a model that needs remote code."""
    from transformer_lens.loading_from_pretrained import NEED_REMOTE_CODE_MODELS, get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError as exc:
        raise ModelError(
            f"unknown model '{name}': use a TransformerLens name, zoo:<name>, "
            "random:<preset>[@seed] or local:<dir>"
        ) from exc
    if official.startswith(NEED_REMOTE_CODE_MODELS):
        raise ModelError(f"model '{name}' needs code from the hub to load, which circuitd never runs")
    return official


def load_pretrained(name: str, device: str, dtype: torch.dtype) -> ModelAdapter:
    """A TransformerLens model by its name (needs the model hub or its local cache); no remote code."""
    from transformer_lens import HookedTransformer

    official = _official_name(name)
    try:
        with _quiet_hub():
            model = HookedTransformer.from_pretrained(
                official, device=device, trust_remote_code=False,
                dtype=dtype,  # pyright: ignore[reportArgumentType] -- TL's dtype param is unannotated, inferred str; takes torch.dtype
            )
    except Exception as exc:  # network, cache and hub errors all end the same way
        reason = _first_line(exc)
        raise ModelError(f"model '{name}' could not be loaded (is the hub reachable?): {reason}") from exc
    return ModelAdapter(model, HFTokenizer(model.tokenizer), name)


def pretrained_config(name: str) -> dict[str, Any]:
    """The config of a TransformerLens model, without its weights (needs the hub, for the config only)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    official = _official_name(name)
    try:
        with _quiet_hub():
            return get_pretrained_model_config(official, trust_remote_code=False).to_dict()
    except Exception as exc:
        reason = _first_line(exc)
        raise ModelError(f"model '{name}' could not be resolved (is the hub reachable?): {reason}") from exc
