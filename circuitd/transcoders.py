"""Transcoders: wide, sparse stand-ins for a model's MLPs (REFERENCE §6).

The attribution-graph method explains each MLP's output as a transcoder reconstruction
plus an error term, so the transcoder's feature activations become the graph's nodes.
This module holds the weights, the encode/decode maths and the on-disk format; it needs
only torch, safetensors and PyYAML.

Conventions (shared by single-layer and cross-layer transcoders):

* Encoder ``W_enc [d_tc, d_model]``, row f = feature f's reading direction:
  ``pre = x @ W_enc.T + b_enc``.
* Decoder ``W_dec [d_tc, d_model]``, row f = feature f's writing direction:
  ``reconstruction = a @ W_dec + b_dec``.
* Skip connection ``W_skip [d_model_out, d_model_in]`` (``nn.Linear``'s layout, as in
  circuit-tracer's single-layer transcoder): ``reconstruction += x @ W_skip.T``. A
  cross-layer transcoder has one ``W_skip [d_model, d_model]`` per layer, from that
  layer's input to that layer's output, with the same transpose.
* Activations: ``relu`` = max(pre, 0); ``jumprelu`` = ``pre * (pre > threshold)`` with a
  per-feature threshold (strict: a pre-activation equal to its threshold is off);
  ``topk`` = the k largest pre-activations of each row (``torch.topk``, ties broken by
  its order), ReLU'd, every other feature zero.
* Cross-layer: one encoder per layer i and a decoder ``W_dec_i [d_tc, L - i, d_model]``
  writing into layers i..L-1; layer j's reconstruction is
  ``sum_{i <= j} a_i @ W_dec_i[:, j - i] + b_dec_j`` (+ its skip term).
* Hooks are stored as circuit-tracer does, without the ``blocks.{layer}.`` prefix.
  circuitd reads features at ``hook_mlp_in`` (the residual stream entering the MLP
  sub-block, before ``ln2``; the adapter switches that hook on; for sequential blocks it
  equals circuit-tracer's ``hook_resid_mid``) and reconstructs ``hook_mlp_out``. Sets
  loaded from disk keep whatever hook names their config.yaml gives.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from circuitd.errors import CircuitdError

ACTIVATIONS = ("relu", "jumprelu", "topk")
KINDS = ("transcoder", "cross_layer_transcoder")
INPUT_HOOK = "hook_mlp_in"
OUTPUT_HOOK = "hook_mlp_out"
CONFIG_FILE = "config.yaml"
THRESHOLD_KEY = "activation_function.threshold"

# circuit-tracer's ``model_kind`` for each of our kinds, and every spelling load accepts.
_CT_KIND = {"transcoder": "transcoder_set", "cross_layer_transcoder": "cross_layer_transcoder"}
_KIND_ALIASES = {"transcoder": "transcoder", "transcoder_set": "transcoder", **{k: k for k in KINDS[1:]}}


class TranscoderError(CircuitdError, ValueError):
    """Transcoder weights or a directory that cannot be used; the one-line message names the
    file (or field, or tensor) and the reason, so the CLI can print it as it is."""


def activate(pre: Tensor, activation: str, threshold: Tensor | None = None, k: int | None = None) -> Tensor:
    """Feature activations from pre-activations ``[..., d_tc]``: one function for both
    transcoder kinds so the three nonlinearities cannot drift apart."""
    if activation == "relu":
        return torch.relu(pre)
    if activation == "jumprelu":
        if threshold is None:
            raise ValueError("activation: jumprelu needs a threshold")
        return pre * (pre > threshold)
    if activation == "topk":
        if k is None:
            raise ValueError("activation: topk needs k")
        values, idx = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))
    raise ValueError(f"activation: unknown {activation!r} (expected one of {', '.join(ACTIVATIONS)})")


def _check_activation(activation: str, k: int | None, d_tc: int) -> None:
    if activation not in ACTIVATIONS:
        raise TranscoderError(
            f"activation: unknown {activation!r} (expected one of {', '.join(ACTIVATIONS)})"
        )
    if activation == "topk" and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_tc):
        raise TranscoderError(f"k: topk needs an integer k in [1, {d_tc}], got {k!r}")


def _expect(where: str, name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise TranscoderError(
            f"{where}: tensor {name!r} has shape {list(tensor.shape)}, expected {list(shape)}"
        )


def _param(tensor: Tensor | None) -> nn.Parameter | None:
    # Frozen by default: attribution runs backward passes through the model and must not
    # accumulate gradients into transcoder weights; a trainer turns requires_grad back on.
    return None if tensor is None else nn.Parameter(tensor.detach(), requires_grad=False)


class Transcoder(nn.Module):
    """One MLP's transcoder: reads that MLP's input, reconstructs its output."""

    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    threshold: nn.Parameter | None
    W_skip: nn.Parameter | None

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        activation: str = "relu",
        threshold: Tensor | None = None,
        k: int | None = None,
        W_skip: Tensor | None = None,
    ):
        super().__init__()
        if W_enc.ndim != 2:
            raise TranscoderError(
                f"Transcoder: tensor 'W_enc' must be [d_tc, d_model], got {list(W_enc.shape)}"
            )
        d_tc, d_model = W_enc.shape
        _check_activation(activation, k, d_tc)
        _expect("Transcoder", "b_enc", b_enc, (d_tc,))
        _expect("Transcoder", "W_dec", W_dec, (d_tc, d_model))
        _expect("Transcoder", "b_dec", b_dec, (d_model,))
        if activation == "jumprelu":
            if threshold is None:
                raise TranscoderError("Transcoder: jumprelu needs tensor 'threshold'")
            _expect("Transcoder", "threshold", threshold, (d_tc,))
        else:
            threshold = None
        if W_skip is not None:
            _expect("Transcoder", "W_skip", W_skip, (d_model, d_model))
        self.activation = activation
        self.k = k if activation == "topk" else None
        self.W_enc, self.b_enc = _param(W_enc), _param(b_enc)
        self.W_dec, self.b_dec = _param(W_dec), _param(b_dec)
        self.register_parameter("threshold", _param(threshold))
        self.register_parameter("W_skip", _param(W_skip))

    @property
    def d_tc(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[1]

    def pre_activations(self, x: Tensor) -> Tensor:
        """``[..., d_model] -> [..., d_tc]``; attribution dots edges into these."""
        return torch.nn.functional.linear(x, self.W_enc, self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[..., d_tc]`` of MLP inputs ``x [..., d_model]``."""
        return activate(self.pre_activations(x), self.activation, self.threshold, self.k)

    def decode(self, acts: Tensor) -> Tensor:
        """``acts @ W_dec + b_dec``: the features' part of the reconstruction (no skip)."""
        return acts @ self.W_dec + self.b_dec

    def skip(self, x: Tensor) -> Tensor:
        """The skip term ``x @ W_skip.T`` (zero without a skip connection)."""
        if self.W_skip is None:
            return torch.zeros_like(x)
        return torch.nn.functional.linear(x, self.W_skip)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstructed MLP output ``[..., d_model]``."""
        out = self.decode(self.encode(x))
        return out if self.W_skip is None else out + self.skip(x)


class CrossLayerTranscoder(nn.Module):
    """One encoder per layer whose features write into that layer's MLP output and every
    later one, so a feature can stand for computation spread over several MLPs."""

    W_enc: nn.Parameter  # [L, d_tc, d_model]
    b_enc: nn.Parameter  # [L, d_tc]
    b_dec: nn.Parameter  # [L, d_model]
    threshold: nn.Parameter | None  # [L, d_tc]
    W_skip: nn.Parameter | None  # [L, d_model, d_model]

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Sequence[Tensor],
        b_dec: Tensor,
        activation: str = "relu",
        threshold: Tensor | None = None,
        k: int | None = None,
        W_skip: Tensor | None = None,
    ):
        super().__init__()
        if W_enc.ndim != 3:
            raise TranscoderError(
                "CrossLayerTranscoder: tensor 'W_enc' must be [n_layers, d_tc, d_model], "
                f"got {list(W_enc.shape)}"
            )
        n_layers, d_tc, d_model = W_enc.shape
        _check_activation(activation, k, d_tc)
        where = "CrossLayerTranscoder"
        _expect(where, "b_enc", b_enc, (n_layers, d_tc))
        _expect(where, "b_dec", b_dec, (n_layers, d_model))
        if len(W_dec) != n_layers:
            raise TranscoderError(f"{where}: W_dec has {len(W_dec)} decoders, expected {n_layers}")
        for i, w in enumerate(W_dec):
            _expect(where, f"W_dec_{i}", w, (d_tc, n_layers - i, d_model))
        if activation == "jumprelu":
            if threshold is None:
                raise TranscoderError(f"{where}: jumprelu needs tensor 'threshold'")
            _expect(where, "threshold", threshold, (n_layers, d_tc))
        else:
            threshold = None
        if W_skip is not None:
            _expect(where, "W_skip", W_skip, (n_layers, d_model, d_model))
        self.activation = activation
        self.k = k if activation == "topk" else None
        self.W_enc, self.b_enc, self.b_dec = _param(W_enc), _param(b_enc), _param(b_dec)
        self.W_dec = nn.ParameterList([_param(w) for w in W_dec])
        self.register_parameter("threshold", _param(threshold))
        self.register_parameter("W_skip", _param(W_skip))

    @property
    def n_layers(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_tc(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[2]

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s pre-activations ``[..., d_tc]`` from its input ``x``."""
        return torch.nn.functional.linear(x, self.W_enc[layer], self.b_enc[layer])

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s feature activations ``[..., d_tc]`` from its input ``x``."""
        threshold = None if self.threshold is None else self.threshold[layer]
        return activate(self.pre_activations(layer, x), self.activation, threshold, self.k)

    def encode_all(self, inputs: Tensor) -> Tensor:
        """Every layer's activations ``[L, ..., d_tc]`` from stacked inputs ``[L, ..., d_model]``."""
        return torch.stack([self.encode(i, inputs[i]) for i in range(self.n_layers)])

    def decode(self, acts: Tensor) -> Tensor:
        """Every layer's reconstruction ``[L, ..., d_model]`` (no skip) from ``acts [L, ..., d_tc]``."""
        out = self.b_dec.reshape(self.n_layers, *([1] * (acts.ndim - 2)), self.d_model)
        out = out.expand(self.n_layers, *acts.shape[1:-1], self.d_model).clone()
        for i in range(self.n_layers):
            # one product per source layer: a_i into all of its target layers at once
            out[i:] += torch.einsum("...f,fld->l...d", acts[i], self.W_dec[i])
        return out

    def skip(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s skip term ``x @ W_skip[layer].T`` (zero without skip)."""
        if self.W_skip is None:
            return torch.zeros_like(x)
        return torch.nn.functional.linear(x, self.W_skip[layer])

    def reconstruct(self, layer: int, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        """Layer ``layer``'s reconstructed MLP output; reads ``inputs[0..layer]`` only."""
        if len(inputs) <= layer:
            raise ValueError(
                f"inputs: layer {layer} needs the inputs of layers 0..{layer}, got {len(inputs)}"
            )
        out = self.b_dec[layer] + self.skip(layer, inputs[layer])
        for i in range(layer + 1):
            out = out + self.encode(i, inputs[i]) @ self.W_dec[i][:, layer - i]
        return out

    def forward(self, inputs: Tensor) -> Tensor:
        """Every layer's reconstructed MLP output ``[L, ..., d_model]`` from stacked inputs."""
        out = self.decode(self.encode_all(inputs))
        if self.W_skip is not None:
            out = out + torch.einsum("l...i,loi->l...o", inputs, self.W_skip)
        return out


class TranscoderSet(nn.Module):
    """The transcoders that replace every MLP of a model, per-layer or cross-layer, behind
    one interface, plus the hook names that say where they read and write."""

    def __init__(
        self,
        transcoders: Sequence[Transcoder] | CrossLayerTranscoder,
        feature_input_hook: str = INPUT_HOOK,
        feature_output_hook: str = OUTPUT_HOOK,
    ):
        super().__init__()
        self.feature_input_hook = feature_input_hook
        self.feature_output_hook = feature_output_hook
        if isinstance(transcoders, CrossLayerTranscoder):
            self.clt: CrossLayerTranscoder | None = transcoders
            self.layers: nn.ModuleList | None = None
            return
        layers = list(transcoders)
        if not layers:
            raise TranscoderError("TranscoderSet: no transcoders")
        first = layers[0]
        for i, tc in enumerate(layers):
            got = (tc.d_tc, tc.d_model, tc.activation, tc.k, tc.W_skip is not None)
            want = (first.d_tc, first.d_model, first.activation, first.k, first.W_skip is not None)
            if got != want:
                raise TranscoderError(
                    f"TranscoderSet: layer {i} has (d_tc, d_model, activation, k, skip) {got}, layer 0 {want}"
                )
        self.clt = None
        self.layers = nn.ModuleList(layers)

    @property
    def kind(self) -> str:
        return "transcoder" if self.clt is None else "cross_layer_transcoder"

    @property
    def _any(self) -> Transcoder | CrossLayerTranscoder:
        if self.clt is not None:
            return self.clt
        assert self.layers is not None
        return self.layers[0]

    @property
    def n_layers(self) -> int:
        return self.clt.n_layers if self.clt is not None else len(self.layers or ())

    @property
    def d_model(self) -> int:
        return self._any.d_model

    @property
    def d_tc(self) -> int:
        return self._any.d_tc

    @property
    def activation(self) -> str:
        return self._any.activation

    @property
    def k(self) -> int | None:
        return self._any.k

    @property
    def has_skip(self) -> bool:
        return self._any.W_skip is not None

    @property
    def device(self) -> torch.device:
        return self._any.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self._any.W_enc.dtype

    def input_hook(self, layer: int) -> str:
        """Full hook name the features of ``layer`` read, e.g. ``blocks.3.hook_mlp_in``."""
        return f"blocks.{layer}.{self.feature_input_hook}"

    def output_hook(self, layer: int) -> str:
        """Full hook name whose value ``layer``'s reconstruction approximates."""
        return f"blocks.{layer}.{self.feature_output_hook}"

    def transcoder(self, layer: int) -> Transcoder:
        """The per-layer transcoder of ``layer`` (per-layer sets only)."""
        if self.layers is None:
            raise TypeError("transcoder(): a cross-layer set has no per-layer transcoders")
        return self.layers[layer]

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s pre-activations ``[..., d_tc]`` from its input ``x [..., d_model]``."""
        if self.clt is not None:
            return self.clt.pre_activations(layer, x)
        return self.transcoder(layer).pre_activations(x)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s feature activations ``[..., d_tc]`` from its input ``x``."""
        if self.clt is not None:
            return self.clt.encode(layer, x)
        return self.transcoder(layer).encode(x)

    def reconstruct(self, layer: int, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        """Layer ``layer``'s reconstructed MLP output ``[..., d_model]``.

        ``inputs``: a list/tuple is always the per-layer inputs (index = layer). A tensor is
        the layer's own input ``[..., d_model]`` for a per-layer set, and the stacked inputs
        of (at least) layers 0..layer ``[n, ..., d_model]`` for a cross-layer set, whose
        reconstruction reads every earlier layer.
        """
        if self.clt is not None:
            return self.clt.reconstruct(layer, inputs)
        x = inputs[layer] if isinstance(inputs, list | tuple) else inputs
        return self.transcoder(layer)(x)

    def reconstruct_all(self, inputs: Tensor | Sequence[Tensor]) -> Tensor:
        """Every layer's reconstruction ``[L, ..., d_model]`` from all layers' inputs."""
        if len(inputs) != self.n_layers:
            raise ValueError(f"inputs: expected the inputs of {self.n_layers} layers, got {len(inputs)}")
        if self.clt is not None:
            stacked = inputs if isinstance(inputs, Tensor) else torch.stack(list(inputs))
            return self.clt(stacked)
        return torch.stack([self.transcoder(i)(inputs[i]) for i in range(self.n_layers)])

    def to(  # type: ignore[override]
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> TranscoderSet:
        """Move and/or cast every tensor (thresholds included); returns ``self``."""
        super().to(device=device, dtype=dtype)
        return self


# ----------------------------------------------------------------------------- files


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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise TranscoderError(f"{directory}: not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise TranscoderError(f"{path}: missing file")
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TranscoderError(f"{path}: not valid YAML ({_first_line(exc)})") from exc
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
        raise TranscoderError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc


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
    hooks = {}
    for key, default in (("feature_input_hook", INPUT_HOOK), ("feature_output_hook", OUTPUT_HOOK)):
        value = config.get(key, default)
        if not isinstance(value, str) or not value:
            raise TranscoderError(f"{config_path}: {key}: expected a hook name, got {value!r}")
        hooks[key] = value
    if _KIND_ALIASES[raw_kind] == "transcoder":
        tset = TranscoderSet(_load_layers(root, config, config_path), **hooks)
    else:
        tset = TranscoderSet(_load_clt(root, config, config_path), **hooks)
    return tset.to(device=device, dtype=dtype)


def _load_layers(root: Path, config: dict[str, Any], config_path: Path) -> list[Transcoder]:
    names = config.get("files", config.get("transcoders"))
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TranscoderError(f"{config_path}: files: expected a non-empty list of file names, got {names!r}")
    n_layers = _config_int(config, "n_layers", config_path)
    if n_layers is not None and n_layers != len(names):
        raise TranscoderError(f"{config_path}: n_layers is {n_layers} but files lists {len(names)}")
    for name in names:
        if "://" in name:
            raise TranscoderError(
                f"{config_path}: files: {name!r} is remote; download it next to config.yaml"
            )
    paths = [root / name for name in names]
    first = _read_tensors(paths[0])
    d_tc, d_model = _encoder_dims(first, paths[0], "W_enc", config, config_path)
    activation, k = _activation(config, THRESHOLD_KEY in first, d_tc, config_path)
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

    return Transcoder(
        W_enc=take("W_enc", (d_tc, d_model)),
        b_enc=take("b_enc", (d_tc,)),
        W_dec=take("W_dec", (d_tc, d_model)),
        b_dec=take("b_dec", (d_model,)),
        activation=activation,
        threshold=take(THRESHOLD_KEY, (d_tc,)) if activation == "jumprelu" else None,
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
    enc_paths = [root / f"W_enc_{i}.safetensors" for i in range(n_layers)]
    dec_paths = [root / f"W_dec_{i}.safetensors" for i in range(n_layers)]
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
