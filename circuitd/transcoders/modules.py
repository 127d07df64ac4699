"""Transcoders: wide, sparse stand-ins for a model's MLPs (Ameisen et al. 2025).

The attribution-graph method explains each MLP's output as a transcoder reconstruction
plus an error term, so the transcoder's feature activations become the graph's nodes.
This module holds the weights and the encode/decode maths (:mod:`circuitd.transcoders.io` the
on-disk format and seeded random sets); it needs only torch.

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
* Hooks are stored as circuit-tracer does, without the ``blocks.{layer}.`` prefix, with
  circuit-tracer's meanings (a TransformerLens block computes ``mlp_in = hook_mlp_in(resid_mid)``,
  ``mlp_out = hook_mlp_out(mlp(ln2(mlp_in)))``, Gemma-2's ``ln2_post`` inside before
  ``hook_mlp_out``). Inputs: ``hook_mlp_in`` = ``hook_resid_mid`` (before ``ln2``; the adapter
  switches that hook on), ``ln2.hook_normalized`` (where TransformerLens 2.x, which
  circuit-tracer runs on, fires it: a LayerNorm's output after its gain and shift, an RMSNorm's
  before its gain; TransformerLens 3.x fires it before a LayerNorm's gain too, so sets are read
  as circuit-tracer wrote them) and ``mlp.hook_in`` (``ln2``'s output, the MLP's own input).
  Outputs: ``hook_mlp_out`` and ``mlp.hook_out`` (the MLP's own output: the same tensor but
  where a norm follows the MLP).
  Sets keep the names their config.yaml gives; :func:`canonical_hook` maps the two spellings
  of the pre-norm input to one internal name, the *site* the replacement model reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast, overload

import torch
from torch import Tensor, nn

from circuitd.errors import CircuitdError

ACTIVATIONS = ("relu", "jumprelu", "topk")
KINDS = ("transcoder", "cross_layer_transcoder")
INPUT_HOOK = "hook_mlp_in"
"""The MLP sub-block's input before ``ln2`` (the residual stream; ``hook_resid_mid`` too)."""
NORMALIZED_INPUT_HOOK = "ln2.hook_normalized"
"""``ln2``'s normalised output as circuit-tracer (TransformerLens 2.x) reads it: after a
LayerNorm's gain and shift, before an RMSNorm's gain."""
MLP_INPUT_HOOK = "mlp.hook_in"
"""``ln2``'s output: what the MLP itself reads."""
OUTPUT_HOOK = "hook_mlp_out"
"""What the MLP sub-block adds to the residual stream (after Gemma-2's ``ln2_post``)."""
MLP_OUTPUT_HOOK = "mlp.hook_out"
"""The MLP's own output (before Gemma-2's ``ln2_post``; elsewhere :data:`OUTPUT_HOOK`)."""
INPUT_HOOKS = (INPUT_HOOK, "hook_resid_mid", NORMALIZED_INPUT_HOOK, MLP_INPUT_HOOK)
"""Every input hook accepted: the MLP input before ``ln2``, after its scale, after its gain."""
OUTPUT_HOOKS = (OUTPUT_HOOK, MLP_OUTPUT_HOOK)
"""Every output hook accepted."""


def canonical_hook(name: str) -> str:
    """The site a hook name stands for: ``hook_resid_mid`` is :data:`INPUT_HOOK` (the same
    tensor in a sequential block); every other name comes back unchanged."""
    return INPUT_HOOK if name == "hook_resid_mid" else name


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


@overload
def _param(tensor: Tensor) -> nn.Parameter: ...
@overload
def _param(tensor: None) -> None: ...
@overload
def _param(tensor: Tensor | None) -> nn.Parameter | None: ...
def _param(tensor: Tensor | None) -> nn.Parameter | None:
    # Frozen by default: attribution runs backward passes through the model and must not
    # accumulate gradients into transcoder weights; a trainer turns requires_grad back on.
    return None if tensor is None else nn.Parameter(tensor.detach(), requires_grad=False)


class TranscoderBase(nn.Module):
    """What per-layer and cross-layer transcoders share: the activation (with its threshold or
    ``k``), the encoder maths, the skip connection and the checks of their shapes. A cross-layer
    transcoder's tensors have one leading layer dimension that a per-layer transcoder's lack;
    ``layer`` below indexes it (``None`` for a per-layer transcoder)."""

    W_enc: nn.Parameter  # [(L,) d_tc, d_model]
    b_enc: nn.Parameter  # [(L,) d_tc]
    b_dec: nn.Parameter  # [(L,) d_model]
    threshold: nn.Parameter | None  # [(L,) d_tc]
    W_skip: nn.Parameter | None  # [(L,) d_model, d_model]

    def _setup(
        self,
        where: str,
        lead: tuple[int, ...],
        W_enc: Tensor,
        b_enc: Tensor,
        activation: str,
        threshold: Tensor | None,
        k: int | None,
        W_skip: Tensor | None,
        check_decoder: Callable[[int, int], None],
    ) -> Tensor | None:
        """Check the activation and every shape (``check_decoder(d_tc, d_model)`` checks the
        decoder, after the encoder bias), set ``activation`` and ``k``; returns the threshold
        kept (``None`` unless jumprelu)."""
        d_tc, d_model = W_enc.shape[-2:]
        _check_activation(activation, k, d_tc)
        _expect(where, "b_enc", b_enc, (*lead, d_tc))
        check_decoder(d_tc, d_model)
        if activation == "jumprelu":
            if threshold is None:
                raise TranscoderError(f"{where}: jumprelu needs tensor 'threshold'")
            _expect(where, "threshold", threshold, (*lead, d_tc))
        else:
            threshold = None
        if W_skip is not None:
            _expect(where, "W_skip", W_skip, (*lead, d_model, d_model))
        self.activation = activation
        self.k = k if activation == "topk" else None
        return threshold

    def _register_optional(self, threshold: Tensor | None, W_skip: Tensor | None) -> None:
        self.register_parameter("threshold", _param(threshold))
        self.register_parameter("W_skip", _param(W_skip))

    @property
    def d_tc(self) -> int:
        return self.W_enc.shape[-2]

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[-1]

    def encoder_weights(self, layer: int | None) -> tuple[Tensor, Tensor]:
        """The encoder ``W_enc [d_tc, d_model]`` and ``b_enc [d_tc]`` (of ``layer``, when stacked)."""
        if layer is None:
            return self.W_enc, self.b_enc
        return self.W_enc[layer], self.b_enc[layer]

    def _pre_activations(self, x: Tensor, layer: int | None) -> Tensor:
        return torch.nn.functional.linear(x, *self.encoder_weights(layer))

    def _encode(self, x: Tensor, layer: int | None) -> Tensor:
        threshold = self.threshold if layer is None or self.threshold is None else self.threshold[layer]
        return activate(self._pre_activations(x, layer), self.activation, threshold, self.k)

    def _skip(self, x: Tensor, layer: int | None) -> Tensor:
        if self.W_skip is None:
            return torch.zeros_like(x)
        return torch.nn.functional.linear(x, self.W_skip if layer is None else self.W_skip[layer])


class Transcoder(TranscoderBase):
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

        def check_decoder(d_tc: int, d_model: int) -> None:
            _expect("Transcoder", "W_dec", W_dec, (d_tc, d_model))
            _expect("Transcoder", "b_dec", b_dec, (d_model,))

        threshold = self._setup(
            "Transcoder", (), W_enc, b_enc, activation, threshold, k, W_skip, check_decoder
        )
        self.W_enc, self.b_enc = _param(W_enc), _param(b_enc)
        self.W_dec, self.b_dec = _param(W_dec), _param(b_dec)
        self._register_optional(threshold, W_skip)

    def pre_activations(self, x: Tensor) -> Tensor:
        """``[..., d_model] -> [..., d_tc]``; attribution dots edges into these."""
        return self._pre_activations(x, None)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[..., d_tc]`` of MLP inputs ``x [..., d_model]``."""
        return self._encode(x, None)

    def decode(self, acts: Tensor) -> Tensor:
        """``acts @ W_dec + b_dec``: the features' part of the reconstruction (no skip)."""
        return acts @ self.W_dec + self.b_dec

    def skip(self, x: Tensor) -> Tensor:
        """The skip term ``x @ W_skip.T`` (zero without a skip connection)."""
        return self._skip(x, None)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstructed MLP output ``[..., d_model]``."""
        out = self.decode(self.encode(x))
        return out if self.W_skip is None else out + self.skip(x)


class CrossLayerTranscoder(TranscoderBase):
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
        n_layers = W_enc.shape[0]
        where = "CrossLayerTranscoder"

        def check_decoder(d_tc: int, d_model: int) -> None:
            _expect(where, "b_dec", b_dec, (n_layers, d_model))
            if len(W_dec) != n_layers:
                raise TranscoderError(f"{where}: W_dec has {len(W_dec)} decoders, expected {n_layers}")
            for i, w in enumerate(W_dec):
                _expect(where, f"W_dec_{i}", w, (d_tc, n_layers - i, d_model))

        threshold = self._setup(
            where, (n_layers,), W_enc, b_enc, activation, threshold, k, W_skip, check_decoder
        )
        self.W_enc, self.b_enc, self.b_dec = _param(W_enc), _param(b_enc), _param(b_dec)
        self.W_dec = nn.ParameterList([_param(w) for w in W_dec])
        self._register_optional(threshold, W_skip)

    @property
    def n_layers(self) -> int:
        return self.W_enc.shape[0]

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s pre-activations ``[..., d_tc]`` from its input ``x``."""
        return self._pre_activations(x, layer)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s feature activations ``[..., d_tc]`` from its input ``x``."""
        return self._encode(x, layer)

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
        return self._skip(x, layer)

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
        return cast(Transcoder, self.layers[0])  # the ModuleList holds Transcoders only

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

    @property
    def input_site(self) -> str:
        """The input hook under its internal name (:func:`canonical_hook`)."""
        return canonical_hook(self.feature_input_hook)

    @property
    def output_site(self) -> str:
        """The output hook under its internal name (:func:`canonical_hook`)."""
        return canonical_hook(self.feature_output_hook)

    def input_hook(self, layer: int) -> str:
        """Full name of the site the features of ``layer`` read, e.g. ``blocks.3.hook_mlp_in``
        (internal name, whatever spelling the config used; ``mlp.hook_in`` and ``mlp.hook_out``
        are circuit-tracer's names, not HookedTransformer hook points)."""
        return f"blocks.{layer}.{self.input_site}"

    def output_hook(self, layer: int) -> str:
        """Full hook name whose value ``layer``'s reconstruction approximates."""
        return f"blocks.{layer}.{self.output_site}"

    def transcoder(self, layer: int) -> Transcoder:
        """The per-layer transcoder of ``layer`` (per-layer sets only)."""
        if self.layers is None:
            raise TypeError("transcoder(): a cross-layer set has no per-layer transcoders")
        return cast(Transcoder, self.layers[layer])  # the ModuleList holds Transcoders only

    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """Layer ``layer``'s pre-activations ``[..., d_tc]`` from its input ``x [..., d_model]``."""
        if self.clt is not None:
            return self.clt.pre_activations(layer, x)
        return self.transcoder(layer).pre_activations(x)

    def encoder_rows(self, layer: int, features: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder rows ``[F, d_model]`` and biases ``[F]`` of ``features`` of ``layer``: the
        linear map of :meth:`pre_activations`, so one feature's pre-activation is read without
        computing its layer's ``d_tc`` others."""
        if self.clt is not None:
            w, b = self.clt.encoder_weights(layer)
        else:
            w, b = self.transcoder(layer).encoder_weights(None)
        return w[features], b[features]

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
