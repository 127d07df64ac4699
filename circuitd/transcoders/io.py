"""Where transcoder sets come from: files in circuit-tracer's layout (Ameisen et al. 2025), read and
written here with safetensors and PyYAML, and seeded random sets for tests and demos.

Directory layout (circuit-tracer's): ``config.yaml`` with ``kind`` (``transcoder`` or
``cross_layer_transcoder``; circuit-tracer's ``model_kind`` is written too and accepted
on load), ``feature_input_hook``, ``feature_output_hook``, ``activation`` (+ ``k`` for
topk), ``n_layers``, ``d_model``, ``d_tc``, ``skip`` and ``files``.

* Per-layer sets: ``layer_{i}.safetensors`` holding ``W_enc``, ``W_dec``, ``b_enc``,
  ``b_dec``, and ``activation_function.threshold`` (jumprelu) and ``W_skip`` (skip).
* Cross-layer sets: ``W_enc_{i}.safetensors`` holding ``W_enc_{i}``, ``b_enc_{i}``,
  ``b_dec_{i}``, and ``threshold_{i}`` (jumprelu) and ``W_skip_{i}`` (skip);
  ``W_dec_{i}.safetensors`` holding ``W_dec_{i}``. ``b_dec_{i}`` sits in the encoder
  file because that is where circuit-tracer's CLT writer and loader put it; the loader
  also accepts it in the decoder file.

On load, circuit-tracer's other layouts are read too:

* no file list (its own cache layout): ``layer_0.safetensors``, ``layer_1...`` next to the
  config, at least one and without gaps (the model's layer count is checked when the set is
  used, :func:`circuitd.attribution.replacement.check_supported`);
* the file list under ``transcoders``, whose entries may be ``hf://org/repo/path[?revision=r]``
  URIs: resolved from the local Hugging Face cache only (``HF_HUB_CACHE`` / ``HF_HOME``), and
  under the service's rules only for repositories ``CIRCUITD_HUB_TRANSCODERS`` lists; plain
  names must stay inside the set's directory;
* the threshold under the bare key ``threshold``;
* input hooks ``hook_mlp_in`` / ``hook_resid_mid`` (before ``ln2``), ``ln2.hook_normalized``
  (after its scale) or ``mlp.hook_in`` (after its gain), and output hooks ``hook_mlp_out`` or
  ``mlp.hook_out`` (kept as written; their meanings are in :mod:`~circuitd.transcoders.modules`).
  Every other hook is refused in one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuitd.access import check_hub_transcoder_uri, is_hub_repo
from circuitd.errors import CircuitdError, first_line
from circuitd.transcoders.modules import (
    INPUT_HOOK,
    INPUT_HOOKS,
    KINDS,
    OUTPUT_HOOK,
    OUTPUT_HOOKS,
    CrossLayerTranscoder,
    Transcoder,
    TranscoderError,
    TranscoderSet,
    _check_activation,
    _expect,
)

CONFIG_FILE = "config.yaml"
THRESHOLD_KEY = "activation_function.threshold"
THRESHOLD_ALIASES = (THRESHOLD_KEY, "threshold")
"""Names a per-layer file may give the JumpReLU threshold (circuitd and circuit-tracer write the first)."""
LAYER_FILE = re.compile(r"layer_(\d+)\.safetensors")

# circuit-tracer's ``model_kind`` for each of our kinds, and every spelling load accepts.
_CT_KIND = {"transcoder": "transcoder_set", "cross_layer_transcoder": "cross_layer_transcoder"}
_KIND_ALIASES = {"transcoder": "transcoder", "transcoder_set": "transcoder", **{k: k for k in KINDS[1:]}}


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous()


def save(tset: TranscoderSet, directory: str | Path) -> Path:
    """Write ``tset`` in circuit-tracer's layout (module docstring); returns the directory.
    config.yaml is written last, so a directory with one is complete."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    if tset.clt is not None:
        clt = tset.clt
        for i in range(clt.n_layers):
            enc = {f"W_enc_{i}": clt.W_enc[i], f"b_enc_{i}": clt.b_enc[i], f"b_dec_{i}": clt.b_dec[i]}
            if clt.threshold is not None:
                enc[f"threshold_{i}"] = clt.threshold[i]
            if clt.W_skip is not None:
                enc[f"W_skip_{i}"] = clt.W_skip[i]
            save_file({k: _cpu(v) for k, v in enc.items()}, str(out / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": _cpu(clt.W_dec[i])}, str(out / f"W_dec_{i}.safetensors"))
            files += [f"W_enc_{i}.safetensors", f"W_dec_{i}.safetensors"]
    else:
        for i in range(tset.n_layers):
            tc = tset.transcoder(i)
            tensors = {"W_enc": tc.W_enc, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
            if tc.threshold is not None:
                tensors[THRESHOLD_KEY] = tc.threshold
            if tc.W_skip is not None:
                tensors["W_skip"] = tc.W_skip
            name = f"layer_{i}.safetensors"
            save_file({k: _cpu(v) for k, v in tensors.items()}, str(out / name))
            files.append(name)
    config: dict[str, Any] = {
        "kind": tset.kind,
        "model_kind": _CT_KIND[tset.kind],
        "feature_input_hook": tset.feature_input_hook,
        "feature_output_hook": tset.feature_output_hook,
        "activation": tset.activation,
    }
    if tset.k is not None:
        config["k"] = tset.k
    config.update(
        n_layers=tset.n_layers, d_model=tset.d_model, d_tc=tset.d_tc, skip=tset.has_skip, files=files
    )
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise TranscoderError(f"{directory}: not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise TranscoderError(f"{path}: missing file")
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TranscoderError(f"{path}: not valid YAML ({first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise TranscoderError(f"{path}: expected a mapping of keys, got {type(config).__name__}")
    return config


def _config_int(config: dict[str, Any], key: str, path: Path) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TranscoderError(f"{path}: {key}: expected a positive integer, got {value!r}")
    return value


def _read_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise TranscoderError(f"{path}: missing file")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type, or OSError
        raise TranscoderError(f"{path}: not a readable safetensors file ({first_line(exc)})") from exc


def _take(tensors: dict[str, Tensor], path: Path, name: str, shape: tuple[int, ...] | None) -> Tensor:
    if name not in tensors:
        raise TranscoderError(f"{path}: missing tensor {name!r}")
    tensor = tensors[name]
    if shape is not None:
        _expect(str(path), name, tensor, shape)
    return tensor


def _encoder_dims(
    tensors: dict[str, Tensor], path: Path, name: str, config: dict[str, Any], config_path: Path
) -> tuple[int, int]:
    """(d_tc, d_model): from config.yaml where it says, else from the first encoder."""
    W_enc = _take(tensors, path, name, None)
    if W_enc.ndim != 2:
        raise TranscoderError(
            f"{path}: tensor {name!r} has shape {list(W_enc.shape)}, expected [d_tc, d_model]"
        )
    d_tc = _config_int(config, "d_tc", config_path) or W_enc.shape[0]
    d_model = _config_int(config, "d_model", config_path) or W_enc.shape[1]
    return d_tc, d_model


def _activation(
    config: dict[str, Any], has_threshold: bool, d_tc: int, config_path: Path
) -> tuple[str, int | None]:
    activation = config.get("activation") or ("jumprelu" if has_threshold else "relu")
    k = config.get("k")
    try:
        _check_activation(activation, k, d_tc)
    except TranscoderError as exc:
        raise TranscoderError(f"{config_path}: {exc}") from None
    return activation, k if activation == "topk" else None


def load(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> TranscoderSet:
    """Read a set written by :func:`save` (or by circuit-tracer, local files only).

    Every problem is one :class:`TranscoderError` (a ``ValueError``) naming the file
    and the field or tensor. Tensors keep the files' dtype unless ``dtype`` is given.
    """
    root = Path(directory)
    config = _read_config(root)
    config_path = root / CONFIG_FILE
    raw_kind = config.get("kind", config.get("model_kind"))
    if raw_kind not in _KIND_ALIASES:
        raise TranscoderError(f"{config_path}: kind: expected one of {', '.join(KINDS)}, got {raw_kind!r}")
    hooks = _read_hooks(config, config_path)
    if _KIND_ALIASES[raw_kind] == "transcoder":
        tset = TranscoderSet(_load_layers(root, config, config_path), **hooks)
    else:
        tset = TranscoderSet(_load_clt(root, config, config_path), **hooks)
    return tset.to(device=device, dtype=dtype)


def _read_hooks(config: dict[str, Any], config_path: Path) -> dict[str, str]:
    """The two hook names, as the config spells them, once known to be usable."""
    hooks = {}
    fields = (
        ("feature_input_hook", INPUT_HOOK, INPUT_HOOKS, "an MLP input"),
        ("feature_output_hook", OUTPUT_HOOK, OUTPUT_HOOKS, "an MLP output"),
    )
    for key, default, accepted, what in fields:
        value = config.get(key, default)
        if not isinstance(value, str) or not value:
            raise TranscoderError(f"{config_path}: {key}: expected a hook name, got {value!r}")
        if value not in accepted:
            raise TranscoderError(
                f"{config_path}: {key}: {value!r} is not {what}; expected one of {', '.join(accepted)}"
            )
        hooks[key] = value
    return hooks


def _homes(root: Path) -> list[Path]:
    """Where the files of the set in ``root`` may really lie: ``root`` itself and, for a snapshot
    in the hub's cache (``.../snapshots/<rev>``, whose files link to ``../../blobs/<hash>``), the
    blobs of that one repository."""
    homes = [root.resolve()]
    if root.parent.name == "snapshots":
        homes.append((root.parent.parent / "blobs").resolve())
    return homes


def _inside(root: Path, name: str, config_path: Path, field: str) -> Path:
    """``root / name`` for a bare file name whose real path (symlinks resolved) stays in ``root``
    (or its hub repository's blobs): a config names files of its own set, never others."""
    if "://" in name:
        raise TranscoderError(f"{config_path}: {field}: {name!r} is remote; download it next to config.yaml")
    bare = name not in ("", ".", "..") and "/" not in name and "\\" not in name and ":" not in name
    if not bare or not any((root / name).resolve().is_relative_to(home) for home in _homes(root)):
        raise TranscoderError(
            f"{config_path}: {field}: {name!r} is not a file name inside the set's directory"
        )
    return root / name


def _hub_cache_dir() -> str | None:
    """The hub cache directory the environment names now (``HF_HUB_CACHE``, else
    ``HF_HOME/hub``); None leaves huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _from_hub_cache(uri: str, config_path: Path, field: str) -> Path:
    """The local file of ``hf://org/repo/path[?revision=rev]``, from the local Hugging Face cache
    only (nothing is downloaded); the repository must be one the caller may use."""
    parsed = urlparse(uri)
    repo_name, _, file_path = parsed.path.lstrip("/").partition("/")
    repo_id = f"{parsed.netloc}/{repo_name}"
    if not is_hub_repo(repo_id) or not file_path or ".." in file_path.split("/"):
        raise TranscoderError(f"{config_path}: {field}: {uri!r} is not an hf://org/repo/path URI")
    revision = (parse_qs(parsed.query).get("revision") or [None])[0]
    try:
        check_hub_transcoder_uri(repo_id, uri)
    except CircuitdError as exc:
        raise TranscoderError(f"{config_path}: {field}: {exc}") from None
    try:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(
            repo_id, file_path, revision=revision, cache_dir=_hub_cache_dir(), local_files_only=True
        )
    except Exception:  # not cached (LocalEntryNotFoundError), or a malformed cache: one line
        raise TranscoderError(
            f"{config_path}: {field}: {uri} is not in the local Hugging Face cache"
        ) from None
    return Path(local)


def _layer_paths(root: Path, config: dict[str, Any], config_path: Path) -> tuple[list[Path], str]:
    """The per-layer files, in layer order, and the field that named them. Without a file list
    (circuit-tracer's own cache layout): ``layer_0.safetensors``, ``layer_1...`` next to the config,
    at least one and no gaps."""
    field = "files" if "files" in config else "transcoders"
    if field not in config:
        present = sorted(
            int(m.group(1)) for p in root.iterdir() if (m := LAYER_FILE.fullmatch(p.name)) and p.is_file()
        )
        if not present:
            raise TranscoderError(
                f"{config_path}: files: no file list and no layer_0.safetensors next to config.yaml"
            )
        if present != list(range(len(present))):
            missing = min(set(range(present[-1] + 1)) - set(present))
            raise TranscoderError(
                f"{config_path}: files: no file list and layer_{missing}.safetensors is missing "
                f"(layer files {present[0]}..{present[-1]} must run from 0 without gaps)"
            )
        names: list[str] = [f"layer_{i}.safetensors" for i in present]
        field = "files (layer_{i}.safetensors)"
    else:
        names = config[field]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise TranscoderError(
                f"{config_path}: {field}: expected a non-empty list of file names, got {names!r}"
            )
    n_layers = _config_int(config, "n_layers", config_path)
    if n_layers is not None and n_layers != len(names):
        raise TranscoderError(f"{config_path}: n_layers is {n_layers} but {field} lists {len(names)}")
    paths = [
        _from_hub_cache(name, config_path, field)
        if name.startswith("hf://")
        else _inside(root, name, config_path, field)
        for name in names
    ]
    return paths, field


def _threshold_key(tensors: dict[str, Tensor]) -> str | None:
    return next((key for key in THRESHOLD_ALIASES if key in tensors), None)


def _load_layers(root: Path, config: dict[str, Any], config_path: Path) -> list[Transcoder]:
    paths, _ = _layer_paths(root, config, config_path)
    first = _read_tensors(paths[0])
    d_tc, d_model = _encoder_dims(first, paths[0], "W_enc", config, config_path)
    activation, k = _activation(config, _threshold_key(first) is not None, d_tc, config_path)
    skip = bool(config.get("skip", "W_skip" in first))
    dtype = first["W_enc"].dtype
    layers = []
    for i, path in enumerate(paths):
        tensors = first if i == 0 else _read_tensors(path)
        layers.append(_layer_from(tensors, path, (d_tc, d_model), activation, k, skip, dtype))
    return layers


def _layer_from(
    tensors: dict[str, Tensor],
    path: Path,
    dims: tuple[int, int],
    activation: str,
    k: int | None,
    skip: bool,
    dtype: torch.dtype,
) -> Transcoder:
    d_tc, d_model = dims

    def take(name: str, shape: tuple[int, ...]) -> Tensor:
        return _take(tensors, path, name, shape).to(dtype)

    threshold_key = _threshold_key(tensors) or THRESHOLD_KEY
    return Transcoder(
        W_enc=take("W_enc", (d_tc, d_model)),
        b_enc=take("b_enc", (d_tc,)),
        W_dec=take("W_dec", (d_tc, d_model)),
        b_dec=take("b_dec", (d_model,)),
        activation=activation,
        threshold=take(threshold_key, (d_tc,)) if activation == "jumprelu" else None,
        k=k,
        W_skip=take("W_skip", (d_model, d_model)) if skip else None,
    )


def _load_clt(root: Path, config: dict[str, Any], config_path: Path) -> CrossLayerTranscoder:
    n_layers = _config_int(config, "n_layers", config_path)
    if n_layers is None:  # circuit-tracer's config does not say; count the encoder files
        n_layers = 0
        while (root / f"W_enc_{n_layers}.safetensors").is_file():
            n_layers += 1
        if n_layers == 0:
            raise TranscoderError(f"{root / 'W_enc_0.safetensors'}: missing file")
    field = "cross-layer files"
    enc_paths = [_inside(root, f"W_enc_{i}.safetensors", config_path, field) for i in range(n_layers)]
    dec_paths = [_inside(root, f"W_dec_{i}.safetensors", config_path, field) for i in range(n_layers)]
    first = _read_tensors(enc_paths[0])
    d_tc, d_model = _encoder_dims(first, enc_paths[0], "W_enc_0", config, config_path)
    activation, k = _activation(config, "threshold_0" in first, d_tc, config_path)
    skip = bool(config.get("skip", "W_skip_0" in first))
    dtype = first["W_enc_0"].dtype
    W_enc, b_enc, b_dec, W_dec, thresholds, skips = [], [], [], [], [], []
    for i in range(n_layers):
        enc = first if i == 0 else _read_tensors(enc_paths[i])
        dec = _read_tensors(dec_paths[i])
        W_enc.append(_take(enc, enc_paths[i], f"W_enc_{i}", (d_tc, d_model)).to(dtype))
        b_enc.append(_take(enc, enc_paths[i], f"b_enc_{i}", (d_tc,)).to(dtype))
        bias_from = (
            (enc, enc_paths[i]) if f"b_dec_{i}" in enc or f"b_dec_{i}" not in dec else (dec, dec_paths[i])
        )
        b_dec.append(_take(*bias_from, f"b_dec_{i}", (d_model,)).to(dtype))
        W_dec.append(_take(dec, dec_paths[i], f"W_dec_{i}", (d_tc, n_layers - i, d_model)).to(dtype))
        if activation == "jumprelu":
            thresholds.append(_take(enc, enc_paths[i], f"threshold_{i}", (d_tc,)).to(dtype))
        if skip:
            skips.append(_take(enc, enc_paths[i], f"W_skip_{i}", (d_model, d_model)).to(dtype))
    return CrossLayerTranscoder(
        W_enc=torch.stack(W_enc),
        b_enc=torch.stack(b_enc),
        W_dec=W_dec,
        b_dec=torch.stack(b_dec),
        activation=activation,
        threshold=torch.stack(thresholds) if thresholds else None,
        k=k,
        W_skip=torch.stack(skips) if skips else None,
    )


# ----------------------------------------------------------------------------- random sets


def random_transcoders(
    n_layers: int,
    d_model: int,
    d_tc: int,
    kind: str = "transcoder",
    activation: str = "relu",
    skip: bool = False,
    seed: int = 0,
    *,
    k: int | None = None,
    dtype: torch.dtype = torch.float32,
    feature_input_hook: str = INPUT_HOOK,
    feature_output_hook: str = OUTPUT_HOOK,
) -> TranscoderSet:
    """A seeded random set for tests and demos on random models.

    Scaled for unit-scale inputs (entries of order 1): encoder rows have norm about 1, so
    pre-activations have std about 1; ``b_enc`` is slightly negative, leaving a bit under
    half the features on under ReLU. JumpReLU thresholds are uniform in [0.05, 1], so many
    positive pre-activations fall below their threshold (about a third of features fire).
    TopK keeps ``k`` (default ``d_tc // 8``) per row. Reconstructions come out of order 1.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if activation == "topk" and k is None:
        k = max(1, d_tc // 8)
    _check_activation(activation, k, d_tc)
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=gen) * scale + shift

    L = n_layers
    W_enc = randn(L, d_tc, d_model, scale=d_model**-0.5)
    b_enc = randn(L, d_tc, scale=0.1, shift=-0.1)
    threshold = 0.05 + 0.95 * torch.rand(L, d_tc, generator=gen) if activation == "jumprelu" else None
    b_dec = randn(L, d_model, scale=0.1)
    W_skip = randn(L, d_model, d_model, scale=0.1 * d_model**-0.5) if skip else None
    hooks = dict(feature_input_hook=feature_input_hook, feature_output_hook=feature_output_hook)
    if kind == "cross_layer_transcoder":
        W_dec = [randn(d_tc, L - i, d_model, scale=(d_tc * L) ** -0.5) for i in range(L)]
        clt = CrossLayerTranscoder(W_enc, b_enc, W_dec, b_dec, activation, threshold, k, W_skip)
        return TranscoderSet(clt, **hooks).to(dtype=dtype)
    W_dec_all = randn(L, d_tc, d_model, scale=d_tc**-0.5)
    layers = [
        Transcoder(
            W_enc[i],
            b_enc[i],
            W_dec_all[i],
            b_dec[i],
            activation,
            None if threshold is None else threshold[i],
            k,
            None if W_skip is None else W_skip[i],
        )
        for i in range(L)
    ]
    return TranscoderSet(layers, **hooks).to(dtype=dtype)
