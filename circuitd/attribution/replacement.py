"""The local replacement model of attribution graphs (Ameisen et al. 2025).

One prompt, one real forward pass: :func:`record` hooks the model and keeps what the local
replacement model freezes. :class:`ReplacementContext` then runs that replacement model with
our own forward pass built from the model's weights (read through the adapter's accessors), so
every frozen quantity is explicit:

* attention patterns (``hook_pattern``) are constants, so attention is linear in its values;
* every LayerNorm scale (``ln1``, ``ln2``, ``ln_final``) is a constant ``sigma = sqrt(var + eps)``
  computed from the recorded LayerNorm *input* (the adapter fuses LayerNorm, so ``hook_scale``
  does not fire); the mean subtraction stays, it is linear;
* each MLP output is ``transcoder reconstruction + error`` with ``error = mlp_out −
  reconstruction`` a constant, so at the recorded point the forward pass reproduces the real
  model's logits. ``ln2`` does not enter: transcoders read ``hook_mlp_in``, before ``ln2``.

With the feature activations also held fixed (``features="frozen"``) the model is affine in the
residual stream; that is the linear model the edges live in. The transcoders' skip connections
read the residual stream and stay inside it; biases (``b_V``, ``b_O``, LayerNorm shifts,
``b_dec``, ``b_U``) are constants that no node owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

from circuitd.models.adapter import ModelAdapter, Norm
from circuitd.transcoders import INPUT_HOOK, OUTPUT_HOOK, TranscoderSet

FeatureMode = Literal["live", "frozen"]


class AttributionError(ValueError):
    """A model, transcoder set or request that attribution cannot handle; one-line message."""


def check_supported(adapter: ModelAdapter, transcoders: TranscoderSet) -> None:
    """Refuse architectures our explicit forward pass does not reproduce, rather than attribute
    through the wrong maths."""
    cfg, shape = adapter.config, adapter.shape
    problems = []
    if cfg("attn_only"):
        problems.append("attention-only (no MLPs to replace)")
    if cfg("parallel_attn_mlp"):
        problems.append("parallel attention and MLP")
    if cfg("normalization_type") not in ("LN", "LNPre"):
        problems.append(f"normalization {cfg('normalization_type')!r} (need LN or LNPre)")
    if cfg("n_key_value_heads"):
        problems.append("grouped-query attention")
    if cfg("use_normalization_before_and_after", False):
        problems.append("normalization after sub-blocks")
    if (cfg("output_logits_soft_cap") or 0) > 0:
        problems.append("logit soft cap")
    if transcoders.n_layers != shape.n_layers or transcoders.d_model != shape.d_model:
        problems.append(
            f"transcoders for {transcoders.n_layers} layers of d_model {transcoders.d_model}, model has "
            f"{shape.n_layers} of {shape.d_model}"
        )
    if (transcoders.input_site, transcoders.output_site) != (INPUT_HOOK, OUTPUT_HOOK):
        problems.append(
            "transcoders must read the MLP input before ln2 (hook_mlp_in, hook_resid_mid or "
            "mlp.hook_in) and write hook_mlp_out (or mlp.hook_out), not "
            f"{transcoders.feature_input_hook} / {transcoders.feature_output_hook}"
        )
    if problems:
        raise AttributionError(f"attribution: unsupported setup: {'; '.join(problems)}")


def _sigma(x: Tensor, eps: float) -> Tensor:
    """LayerNorm denominator ``sqrt(var + eps)`` (biased variance, as ``F.layer_norm``)."""
    return (x.var(-1, unbiased=False) + eps).sqrt()


def _frozen_norm(norm: Norm, x: Tensor, sigma: Tensor) -> Tensor:
    """LayerNorm with its scale frozen at ``sigma [P]``: affine in ``x [..., P, D]``."""
    y = (x - x.mean(-1, keepdim=True)) / sigma[:, None]
    # a LayerNorm has both w and b, a LayerNormPre neither
    return y * norm.w + cast(Tensor, norm.b) if norm.w is not None else y


@dataclass
class FrozenRun:
    """What one pass of the replacement model gives: every MLP input ``[..., L, P, D]``, the
    final residual ``[..., P, D]`` and the logits ``[..., P, V]``."""

    mlp_in: Tensor
    final_resid: Tensor
    logits: Tensor


@dataclass
class ReplacementContext:
    """Everything recorded from one real forward pass of one prompt, and the local replacement
    model built on it. Tensors have no batch dimension; ``L`` layers, ``P`` positions."""

    adapter: ModelAdapter
    transcoders: TranscoderSet
    tokens: Tensor  # [P]
    embed: Tensor  # [P, D]: blocks.0.hook_resid_pre, the token vectors
    resid_pre: Tensor  # [L, P, D]: ln1 inputs
    mlp_in: Tensor  # [L, P, D]
    mlp_out: Tensor  # [L, P, D]
    patterns: Tensor  # [L, H, P, P]
    ln1_scale: Tensor  # [L, P]
    ln2_scale: Tensor  # [L, P]
    final_resid: Tensor  # [P, D]
    ln_final_scale: Tensor  # [P]
    logits: Tensor  # [P, V]: the real model's
    activations: Tensor  # [L, P, d_tc]: transcoder activations at the recorded MLP inputs
    reconstruction: Tensor  # [L, P, D]
    errors: Tensor  # [L, P, D]: mlp_out − reconstruction

    @property
    def n_layers(self) -> int:
        return self.mlp_in.shape[0]

    @property
    def n_pos(self) -> int:
        return self.mlp_in.shape[1]

    def decoder_vectors(self, layer: int, feature: int) -> Tensor:
        """What one unit of ``feature``'s activation writes into each MLP output ``[L, D]``
        (zero before its layer; cross-layer features write into every later layer)."""
        tc = self.transcoders
        out = torch.zeros(self.n_layers, tc.d_model, dtype=self.mlp_in.dtype, device=self.mlp_in.device)
        if tc.clt is not None:
            out[layer:] = tc.clt.W_dec[layer][feature]
        else:
            out[layer] = tc.transcoder(layer).W_dec[feature]
        return out

    def _feature_output(self, layer: int, acts: Sequence[Tensor]) -> Tensor:
        """Layer ``layer``'s reconstruction without skip, ``[..., P, D]``, from the activations
        ``acts[i] [..., P, d_tc]`` of layers ``0..layer``."""
        tc = self.transcoders
        if tc.clt is None:
            t = tc.transcoder(layer)
            return acts[layer] @ t.W_dec + t.b_dec
        out = tc.clt.b_dec[layer]
        for i in range(layer + 1):
            out = out + acts[i] @ tc.clt.W_dec[i][:, layer - i]
        return out

    def _skip(self, layer: int, x: Tensor) -> Tensor:
        tc = self.transcoders
        return tc.clt.skip(layer, x) if tc.clt is not None else tc.transcoder(layer).skip(x)

    def forward(
        self,
        features: FeatureMode = "frozen",
        embed_delta: Tensor | None = None,
        out_delta: Tensor | None = None,
        clamp: Sequence[tuple[int, int, int, float]] = (),
    ) -> FrozenRun:
        """The replacement model with frozen patterns and LayerNorm scales.

        ``features="live"``: activations recomputed by the transcoders from the MLP inputs (the
        local replacement model). ``"frozen"``: activations held at their recorded values (the
        linear model of the edges). ``embed_delta [..., P, D]`` is added to the token vectors and
        ``out_delta [..., L, P, D]`` to the MLP outputs; their leading dims batch the pass.
        ``clamp`` holds ``(layer, pos, feature, value)``: in a live pass those activations are set
        to ``value`` whatever their input (an intervention on a feature node).
        """
        if features not in ("live", "frozen"):
            raise ValueError(f"features: expected 'live' or 'frozen', got {features!r}")
        adapter = self.adapter
        lead: tuple[int, ...] = ()
        for d, k in ((embed_delta, 2), (out_delta, 3)):
            if d is not None:
                lead = torch.broadcast_shapes(lead, d.shape[:-k])
        resid = self.embed if embed_delta is None else self.embed + embed_delta
        resid = resid.expand(*lead, *self.embed.shape)
        mlp_ins: list[Tensor] = []
        acts: list[Tensor] = []
        for layer in range(self.n_layers):
            W_V, b_V, W_O, b_O = adapter.attn_ov(layer)
            x = _frozen_norm(adapter.layer_norm(layer, "ln1"), resid, self.ln1_scale[layer])
            v = torch.einsum("...pd,hde->...phe", x, W_V) + b_V
            z = torch.einsum("hqk,...khe->...qhe", self.patterns[layer], v)
            resid = resid + torch.einsum("...qhe,hed->...qd", z, W_O) + b_O
            mlp_ins.append(resid)
            if features == "live":
                act = self.transcoders.encode(layer, resid)
                here = [(p, f, v) for lay, p, f, v in clamp if lay == layer]
                if here:
                    act = act.clone()
                    for p, f, v in here:
                        act[..., p, f] = v
                acts.append(act)
            else:  # constants: kept without the batch dims, broadcast when added
                acts.append(self.activations[layer])
            out = self._feature_output(layer, acts) + self._skip(layer, resid) + self.errors[layer]
            if out_delta is not None:
                out = out + out_delta[..., layer, :, :]
            resid = resid + out
        final = _frozen_norm(adapter.final_norm(), resid, self.ln_final_scale)
        logits = adapter.unembed(final)
        return FrozenRun(torch.stack(mlp_ins, dim=-3), resid, logits)

    def pre_activations(self, mlp_in: Tensor) -> Tensor:
        """Every layer's pre-activations ``[..., L, P, d_tc]`` from MLP inputs ``[..., L, P, D]``."""
        return torch.stack(
            [self.transcoders.pre_activations(i, mlp_in[..., i, :, :]) for i in range(self.n_layers)], dim=-3
        )


@torch.no_grad()
def record(adapter: ModelAdapter, transcoders: TranscoderSet, tokens: Tensor) -> ReplacementContext:
    """Run the real model once on ``tokens [P]`` and keep what the replacement model freezes."""
    check_supported(adapter, transcoders)
    if tokens.ndim != 1 or tokens.numel() < 1:
        raise AttributionError("attribution: tokens must be one prompt [P] of at least one token")
    n_layers = adapter.shape.n_layers
    store: dict[str, Tensor] = {}

    def keep(name: str) -> tuple[str, Any]:
        def fn(act: Tensor) -> None:
            store[name] = act[0].detach().clone()

        return name, fn

    names = ["blocks.0.hook_resid_pre", f"blocks.{n_layers - 1}.hook_resid_post"]
    for layer in range(n_layers):
        names += [
            adapter.hook_resid_pre(layer),
            adapter.hook_mlp_in(layer),
            adapter.hook_mlp_out(layer),
            f"blocks.{layer}.attn.hook_pattern",
        ]
    tokens = tokens.to(adapter.device)
    logits = adapter.run(tokens[None], [keep(n) for n in dict.fromkeys(names)])[0]

    def stack(fmt: str) -> Tensor:
        return torch.stack([store[fmt.format(layer)] for layer in range(n_layers)])

    resid_pre = stack("blocks.{}.hook_resid_pre")
    mlp_in = stack("blocks.{}.hook_mlp_in")
    mlp_out = stack("blocks.{}.hook_mlp_out")
    final_resid = store[f"blocks.{n_layers - 1}.hook_resid_post"]
    tc = transcoders
    activations = torch.stack([tc.encode(i, mlp_in[i]) for i in range(n_layers)])
    reconstruction = torch.stack([tc.reconstruct(i, list(mlp_in)) for i in range(n_layers)])
    return ReplacementContext(
        adapter=adapter,
        transcoders=tc,
        tokens=tokens,
        embed=store["blocks.0.hook_resid_pre"],
        resid_pre=resid_pre,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        patterns=stack("blocks.{}.attn.hook_pattern"),
        ln1_scale=torch.stack(
            [_sigma(resid_pre[i], adapter.layer_norm(i, "ln1").eps) for i in range(n_layers)]
        ),
        ln2_scale=torch.stack([_sigma(mlp_in[i], adapter.layer_norm(i, "ln2").eps) for i in range(n_layers)]),
        final_resid=final_resid,
        ln_final_scale=_sigma(final_resid, adapter.final_norm().eps),
        logits=logits,
        activations=activations,
        reconstruction=reconstruction,
        errors=mlp_out - reconstruction,
    )
