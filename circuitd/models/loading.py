"""Loading models into a :class:`~circuitd.models.adapter.ModelAdapter`: from config fields
(with given or seeded random weights) or by a TransformerLens name from the model hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from circuitd.errors import ModelError, first_line
from circuitd.models.adapter import ModelAdapter
from circuitd.tokenizer import HFTokenizer, Tokenizer


def build_from_config(
    cfg: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None,
    tokenizer: Tokenizer | None,
    model_id: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    zero_missing_biases: bool = False,
) -> ModelAdapter:
    """A HookedTransformer from config fields, with given weights or seeded random ones."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    try:
        config = HookedTransformerConfig(**{**cfg, "device": device, "dtype": dtype})
    except TypeError as exc:
        raise ModelError(f"{model_id}: bad model config: {exc}") from exc
    model = HookedTransformer(config, move_to_device=False)
    if state_dict is not None and zero_missing_biases:
        # TL's converters leave out biases the architecture lacks (GPT-2's unembed.b_U): zeros.
        for key, value in model.state_dict().items():
            if key not in state_dict and key.rsplit(".", 1)[-1].startswith("b_"):
                state_dict[key] = torch.zeros_like(value)
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        computed = ("IGNORE", "mask", "rotary_sin", "rotary_cos")  # buffers, not weights
        missing = [k for k in missing if not k.endswith(computed)]
        if missing or unexpected:
            raise ModelError(
                f"{model_id}: weights do not match the config "
                f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
            )
    model.to(device, print_details=False)
    model.to(dtype, print_details=False)
    return ModelAdapter(model, tokenizer, model_id)


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
        reason = first_line(exc)
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
        reason = first_line(exc)
        raise ModelError(f"model '{name}' could not be resolved (is the hub reachable?): {reason}") from exc


HF_MODEL_TYPES: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "gpt_neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
}
"""The Hugging Face ``model_type``s a ``local:`` checkpoint directory may have, and the
architecture TransformerLens converts each from. Only types transformers ships code for: a
directory's own code (``auto_map``) never runs."""

_TL_DROP = ("tokenizer_name", "trust_remote_code", "quantization_method", "hf_config")
"""Fields of TransformerLens's converted config that name files, code or hub state, not shape."""


def _hf_model_type(raw: dict[str, Any], path: str) -> str:
    model_type = raw.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise ModelError(
            f"{path}: model_type: {model_type!r} is not supported "
            f"(supported: {', '.join(HF_MODEL_TYPES)})"
        )
    return model_type


def _gemma2_config(hf: Any) -> dict[str, Any]:
    """Gemma-2 fields from its HF config: TransformerLens sets them by hub name only, so a local
    checkpoint needs them read from the config (the same fields TL's gemma-2 branches set)."""
    n_layers = hf.num_hidden_layers
    cfg: dict[str, Any] = {
        "d_model": hf.hidden_size,
        "d_head": hf.head_dim,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": n_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_activation,
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(hf),
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "n_key_value_heads": hf.num_key_value_heads,
        "window_size": hf.sliding_window,
        "use_local_attn": True,
        "attn_types": [("local", "global")[i % 2] for i in range(n_layers)],
        "attn_scores_soft_cap": hf.attn_logit_softcapping,
        "output_logits_soft_cap": hf.final_logit_softcapping,
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM",
    }
    scalar = getattr(hf, "query_pre_attn_scalar", None)
    if scalar is not None and scalar != hf.head_dim:
        cfg["attn_scale"] = float(scalar) ** 0.5
    return cfg


def _rope_theta(hf: Any) -> float:
    from transformer_lens.loading_from_pretrained import _get_rope_theta  # pyright: ignore[reportPrivateUsage]

    return float(_get_rope_theta(hf))


_NAME_TRIGGERS = ("llama", "gemma", "wav2vec2", "tinystories")
"""Substrings by which TransformerLens's converter picks a config by model name, not fields."""


def _neutral_tmp() -> str:
    """A temporary directory whose path TL's converter cannot mistake for a model name."""
    import tempfile

    for cand in (tempfile.gettempdir(), "/tmp", "/var/tmp", str(Path.cwd())):
        if Path(cand).is_dir() and not any(t in cand.lower() for t in _NAME_TRIGGERS):
            return cand
    raise ModelError(f"no temporary directory without {', '.join(_NAME_TRIGGERS)} in its path (set TMPDIR)")


def hf_tl_config(folder: Path) -> dict[str, Any]:
    """HookedTransformerConfig fields of a Hugging Face checkpoint directory, from its
    ``config.json`` alone (no weights read), by TransformerLens's own converter."""
    import shutil
    import tempfile

    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformers import AutoConfig

    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not readable JSON ({' '.join(str(exc).split())})") from exc
    model_type = _hf_model_type(raw, str(path))
    architecture = HF_MODEL_TYPES[model_type]
    # TL picks some architectures by the *name* it is given ("llama", "gemma" in a path): give it
    # a copy of the config under a neutral name, so only the config's own fields count.
    try:
        with tempfile.TemporaryDirectory(prefix="hfcfg", dir=_neutral_tmp()) as tmp, _quiet_hub():
            shutil.copyfile(path, Path(tmp) / "config.json")
            if model_type == "gemma2":
                hf = AutoConfig.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
                cfg = _gemma2_config(hf)
            else:
                raw_cfg = {**raw, "architectures": [architecture]}
                if model_type == "gpt2":  # TL reads n_ctx, which transformers 5 no longer writes
                    raw_cfg.setdefault("n_ctx", raw.get("n_positions", 1024))
                (Path(tmp) / "config.json").write_text(json.dumps(raw_cfg))
                cfg = convert_hf_model_config(tmp, local_files_only=True, trust_remote_code=False)
    except ModelError:
        raise
    except Exception as exc:  # a field the converter needs is missing or malformed
        raise ModelError(f"{path}: not a usable {model_type} config: {first_line(exc)}") from exc
    cfg = {k: v for k, v in cfg.items() if k not in _TL_DROP}
    if model_type == "gpt2" and raw.get("n_inner"):  # TL assumes 4 * n_embd
        cfg["d_mlp"] = raw["n_inner"]
    cfg["model_name"] = folder.name
    cfg["original_architecture"] = architecture
    return cfg


HF_WEIGHTS: tuple[tuple[str, bool, bool], ...] = (
    ("model.safetensors", True, False),
    ("model.safetensors.index.json", True, True),
    ("pytorch_model.bin", False, False),
    ("pytorch_model.bin.index.json", False, True),
)
"""A checkpoint's weight files as ``save_pretrained`` writes them, in the order transformers
looks for them: (name, safetensors, an index of shards)."""


def hf_weight_files(folder: Path, model_id: str) -> tuple[list[Path], bool]:
    """The weight files of a Hugging Face checkpoint directory (one file, or the shards its
    index names) and whether they are safetensors. Every file must lie inside the directory
    (:func:`circuitd.models.dir_files.file_in_dir`); the shards must all exist."""
    from circuitd.models.dir_files import file_in_dir

    for name, safetensors, indexed in HF_WEIGHTS:
        if (folder / name).is_file() or (folder / name).is_symlink():
            path = file_in_dir(folder, name, model_id)
            return (_index_shards(folder, path) if indexed else [path]), safetensors
    names = ", ".join(name for name, _, _ in HF_WEIGHTS)
    raise ModelError(f"{model_id}: no weights in {folder} (looked for {names})")


def _index_shards(folder: Path, index: Path) -> list[Path]:
    """The shard files of a ``*.index.json`` (its ``weight_map``: tensor name -> file name)."""
    from circuitd.models.dir_files import file_in_dir

    try:
        doc = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{index}: not readable JSON ({' '.join(str(exc).split())})") from exc
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index}: weight_map: expected an object of tensor name -> shard file")
    bad = [f for f in weight_map.values() if not isinstance(f, str)]
    if bad:
        raise ModelError(f"{index}: weight_map: expected file names, got {bad[0]!r}")
    return [file_in_dir(folder, f, f"{index}: weight_map") for f in sorted(set(weight_map.values()))]


def load_hf_dir(
    folder: Path, cfg: dict[str, Any], model_id: str, device: str, dtype: torch.dtype
) -> ModelAdapter:
    """A Hugging Face checkpoint directory's weights (one file or index and shards, checked by
    :func:`hf_weight_files` first) through TransformerLens's per-architecture converter, with
    the directory's tokenizer when it has one. Never runs the directory's code."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict
    from transformers import AutoModelForCausalLM

    _, safetensors = hf_weight_files(folder, model_id)
    try:
        with _quiet_hub():
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, dtype=torch.float32,
                use_safetensors=safetensors,  # the files just checked, not another format beside them
            )
            hf_model.eval()
            tl_cfg = HookedTransformerConfig(**{**cfg, "device": "cpu", "dtype": torch.float32})
            state = get_pretrained_state_dict(str(folder), tl_cfg, hf_model=hf_model, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"{model_id}: weights could not be loaded: {first_line(exc)}") from exc
    del hf_model
    return build_from_config(
        cfg, state, _hf_tokenizer(folder), model_id, device, dtype, zero_missing_biases=True
    )


def _hf_tokenizer(folder: Path) -> Tokenizer | None:
    """The directory's own tokenizer, if it has one (local files only)."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((folder / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    try:
        with _quiet_hub():
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelError(f"{folder}: tokenizer could not be loaded: {first_line(exc)}") from exc
    return HFTokenizer(tok)
