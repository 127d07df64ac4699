"""The local replacement model of attribution graphs (Ameisen et al. 2025).

One prompt, one real forward pass: :func:`record` hooks the model and keeps what the local
replacement model freezes. :class:`ReplacementContext` then runs that replacement model with
our own forward pass built from the model's weights (read through the adapter's accessors), so
every frozen quantity is explicit:

* attention patterns (``hook_pattern``) are constants, so attention is linear in its values
  (rotary positions, score soft caps and sliding windows only shape the pattern; with
  grouped-query attention each query head weighs the values of its key/value head);
* every norm scale is a constant computed from the recorded norm *input* (the adapter fuses
  LayerNorm, so ``hook_scale`` does not fire): LayerNorm ``sqrt(var + eps)`` with the mean
  subtraction kept (it is linear), RMSNorm ``sqrt(mean(x^2) + eps)``: ``ln1``, ``ln_final``,
  ``ln2`` where the transcoders read after it, Gemma-2's ``ln1_post`` and ``ln2_post``
  (circuit-tracer stops the gradient at every norm's scale alike);
* each MLP output is ``transcoder reconstruction + error`` with ``error = target −
  reconstruction`` a constant, so at the recorded point the forward pass reproduces the real
  model.

The transcoders read their input site (``hook_mlp_in``; ``ln2.hook_normalized``; ``mlp.hook_in``,
see :mod:`circuitd.transcoders.modules`), which is affine in the residual stream once ``ln2``'s
scale is frozen, and reconstruct their output site: ``hook_mlp_out`` is added to the residual
stream as it is, ``mlp.hook_out`` through the frozen ``ln2_post`` where the model has one.
Logits are the unembedding's output before any final soft cap (the attribution targets, as
circuit-tracer's); :attr:`ReplacementContext.logits` are the model's own, cap included.

With the feature activations also held fixed (``features="frozen"``) the model is affine in the
residual stream; that is the linear model the edges live in. The transcoders' skip connections
read the transcoders' input and stay inside the residual stream; biases (``b_V``, ``b_O``, norm
shifts, ``b_dec``, ``b_U``) are constants that no node owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from circuitd.models.adapter import ModelAdapter, Norm
from circuitd.transcoders.modules import (
    INPUT_HOOK,
    MLP_INPUT_HOOK,
    MLP_OUTPUT_HOOK,
    NORMALIZED_INPUT_HOOK,
    OUTPUT_HOOK,
    TranscoderSet,
)

FeatureMode = Literal["live", "frozen"]
INPUT_SITES = (INPUT_HOOK, NORMALIZED_INPUT_HOOK, MLP_INPUT_HOOK)
OUTPUT_SITES = (OUTPUT_HOOK, MLP_OUTPUT_HOOK)
NORMS = ("LN", "LNPre", "RMS", "RMSPre")


class AttributionError(ValueError):
    """A model, transcoder set or request that attribution cannot handle; one-line message."""


def check_supported(adapter: ModelAdapter, transcoders: TranscoderSet) -> None:
    """Refuse architectures our explicit forward pass does not reproduce, rather than attribute
    through the wrong maths."""
    cfg, shape = adapter.config, adapter.shape
    problems = []
    if cfg("attn_only"):
        problems.append("attention-only (no MLPs to replace)")
    if cfg("normalization_type") not in NORMS:
        problems.append(f"normalization {cfg('normalization_type')!r} (need one of {', '.join(NORMS)})")
    elif adapter.normalizes_outputs():
        problems.append("ln1/ln2 on the sub-blocks' outputs (OLMo 2/3 post-norm blocks)")
    if cfg("clip_qkv") is not None:
        problems.append("clipped values (clip_qkv), not linear in the residual stream")
    if cfg("load_in_4bit", False):
        problems.append("4-bit weights")
    if transcoders.n_layers != shape.n_layers or transcoders.d_model != shape.d_model:
        problems.append(
            f"transcoders for {transcoders.n_layers} layers of d_model {transcoders.d_model}, model has "
            f"{shape.n_layers} of {shape.d_model}"
        )
    if transcoders.input_site not in INPUT_SITES or transcoders.output_site not in OUTPUT_SITES:
        problems.append(
            "transcoders must read an MLP input (hook_mlp_in, hook_resid_mid, ln2.hook_normalized or "
            "mlp.hook_in) and write an MLP output (hook_mlp_out or mlp.hook_out), not "
            f"{transcoders.feature_input_hook} / {transcoders.feature_output_hook}"
        )
    if problems:
        raise AttributionError(f"attribution: unsupported setup: {'; '.join(problems)}")


def _scale(norm: Norm, x: Tensor) -> Tensor:
    """A norm's denominator ``[..., P]`` at its input ``x [..., P, D]``: ``sqrt(var + eps)``
    (biased variance, as ``F.layer_norm``) for LayerNorm, ``sqrt(mean(x^2) + eps)`` for RMSNorm."""
    spread = x.var(-1, unbiased=False) if norm.center else x.pow(2).mean(-1)
    return (spread + norm.eps).sqrt()


def _normalized(norm: Norm, x: Tensor, scale: Tensor) -> Tensor:
    """The norm's output before its gain (``hook_normalized``), its scale frozen at ``scale [P]``."""
    return (x - x.mean(-1, keepdim=True) if norm.center else x) / scale[:, None]


def _affine(norm: Norm, y: Tensor) -> Tensor:
    """The norm's gain and shift, where it has them."""
    y = y if norm.w is None else y * norm.w
    return y if norm.b is None else y + norm.b


def _frozen_norm(norm: Norm, x: Tensor, scale: Tensor) -> Tensor:
    """The norm with its scale frozen at ``scale [P]``: affine in ``x [..., P, D]``."""
    return _affine(norm, _normalized(norm, x, scale))


def _site_input(site: str, ln2: Norm, resid: Tensor, scale: Tensor) -> Tensor:
    """The transcoders' input at ``site`` from ``ln2``'s input ``resid [..., P, D]``: itself
    (``hook_mlp_in``), or ``ln2`` with its scale frozen at ``scale [P]``: after its gain and
    shift (``mlp.hook_in``), and for ``ln2.hook_normalized`` where circuit-tracer's
    TransformerLens 2.x fires that hook: after a LayerNorm's gain and shift, before an
    RMSNorm's gain (see :data:`circuitd.transcoders.modules.NORMALIZED_INPUT_HOOK`)."""
    if site == INPUT_HOOK:
        return resid
    y = _normalized(ln2, resid, scale)
    after_gain = site == MLP_INPUT_HOOK or (site == NORMALIZED_INPUT_HOOK and ln2.center)
    return _affine(ln2, y) if after_gain else y


@dataclass
class FrozenRun:
    """What one pass of the replacement model gives: every transcoder input ``[..., L, P, D]``
    (at the set's input site), the final residual ``[..., P, D]`` and the logits ``[..., P, V]``
    (before any soft cap)."""

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
    mlp_resid: Tensor  # [L, P, D]: hook_mlp_in, ln2's input (resid_mid; resid_pre in parallel blocks)
    mlp_in: Tensor  # [L, P, D]: the transcoders' inputs, at their input site
    mlp_out: Tensor  # [L, P, D]: what the transcoders reconstruct, at their output site
    patterns: Tensor  # [L, H, P, P]
    ln1_scale: Tensor  # [L, P]
    ln2_scale: Tensor  # [L, P]
    final_resid: Tensor  # [P, D]
    ln_final_scale: Tensor  # [P]
    logits: Tensor  # [P, V]: the real model's (soft cap included)
    activations: Tensor  # [L, P, d_tc]: transcoder activations at the recorded inputs
    reconstruction: Tensor  # [L, P, D]
    errors: Tensor  # [L, P, D]: mlp_out − reconstruction
    pos_embed: Tensor | None = None  # [P, D]: hook_pos_embed, the positional part of embed; None without
    ln1_post_scale: Tensor | None = None  # [L, P]: Gemma-2's norm on the attention output
    ln2_post_scale: Tensor | None = None  # [L, P]: Gemma-2's norm on the MLP output

    @property
    def n_layers(self) -> int:
        return self.mlp_in.shape[0]

    @property
    def n_pos(self) -> int:
        return self.mlp_in.shape[1]

    @property
    def parallel(self) -> bool:
        """Attention and MLP both read ``resid_pre`` (GPT-J, GPT-NeoX/Pythia)."""
        return bool(self.adapter.config("parallel_attn_mlp", False))

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

    def _attention(self, layer: int, resid: Tensor) -> Tensor:
        """Block ``layer``'s attention output ``[..., P, D]`` with its pattern and norm scales
        frozen: ``ln1``, values per key/value head, each query head's pattern over its group's
        values, ``W_O``, and Gemma-2's ``ln1_post``."""
        adapter = self.adapter
        W_V, b_V, W_O, b_O = adapter.attn_ov(layer)
        x = _frozen_norm(adapter.layer_norm(layer, "ln1"), resid, self.ln1_scale[layer])
        v = torch.einsum("...pd,kde->...pke", x, W_V) + b_V  # [..., P, K, E]
        n_kv, (n_heads, n_q, n_k) = W_V.shape[0], self.patterns[layer].shape
        pattern = self.patterns[layer].view(n_kv, n_heads // n_kv, n_q, n_k)  # query head h: group h // G
        z = torch.einsum("kgqp,...pke->...qkge", pattern, v).flatten(-3, -2)  # [..., Q, H, E]
        out = torch.einsum("...qhe,hed->...qd", z, W_O) + b_O
        if self.ln1_post_scale is not None:
            out = _frozen_norm(adapter.layer_norm(layer, "ln1_post"), out, self.ln1_post_scale[layer])
        return out

    def transcoder_input(self, layer: int, resid: Tensor) -> Tensor:
        """Layer ``layer``'s transcoder input from ``ln2``'s input ``resid [..., P, D]``."""
        norm = self.adapter.layer_norm(layer, "ln2")
        return _site_input(self.transcoders.input_site, norm, resid, self.ln2_scale[layer])

    def _block_output(self, layer: int, out: Tensor) -> Tensor:
        """What the MLP sub-block adds to the residual stream from the transcoders' output site:
        through the frozen ``ln2_post`` for ``mlp.hook_out`` on a model that has one."""
        if self.ln2_post_scale is None or self.transcoders.output_site != MLP_OUTPUT_HOOK:
            return out
        return _frozen_norm(self.adapter.layer_norm(layer, "ln2_post"), out, self.ln2_post_scale[layer])

    def forward(
        self,
        features: FeatureMode = "frozen",
        embed_delta: Tensor | None = None,
        out_delta: Tensor | None = None,
        clamp: Sequence[tuple[int, int, int, float]] = (),
    ) -> FrozenRun:
        """The replacement model with frozen patterns and norm scales.

        ``features="live"``: activations recomputed by the transcoders from their inputs (the
        local replacement model). ``"frozen"``: activations held at their recorded values (the
        linear model of the edges). ``embed_delta [..., P, D]`` is added to the token vectors and
        ``out_delta [..., L, P, D]`` to the transcoders' outputs (their output site); their leading
        dims batch the pass. ``clamp`` holds ``(layer, pos, feature, value)``: in a live pass those
        activations are set to ``value`` whatever their input (an intervention on a feature node).
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
            attn = self._attention(layer, resid)
            mlp_resid = resid if self.parallel else resid + attn
            x = self.transcoder_input(layer, mlp_resid)
            mlp_ins.append(x)
            if features == "live":
                act = self.transcoders.encode(layer, x)
                here = [(p, f, v) for lay, p, f, v in clamp if lay == layer]
                if here:
                    act = act.clone()
                    for p, f, v in here:
                        act[..., p, f] = v
                acts.append(act)
            else:  # constants: kept without the batch dims, broadcast when added
                acts.append(self.activations[layer])
            out = self._feature_output(layer, acts) + self._skip(layer, x) + self.errors[layer]
            if out_delta is not None:
                out = out + out_delta[..., layer, :, :]
            resid = resid + attn + self._block_output(layer, out)
        final = _frozen_norm(adapter.final_norm(), resid, self.ln_final_scale)
        logits = adapter.unembed(final)
        return FrozenRun(torch.stack(mlp_ins, dim=-3), resid, logits)

    def pre_activations(self, mlp_in: Tensor) -> Tensor:
        """Every layer's pre-activations ``[..., L, P, d_tc]`` from transcoder inputs ``[..., L, P, D]``."""
        return torch.stack(
            [self.transcoders.pre_activations(i, mlp_in[..., i, :, :]) for i in range(self.n_layers)], dim=-3
        )


@torch.no_grad()
def record(adapter: ModelAdapter, transcoders: TranscoderSet, tokens: Tensor) -> ReplacementContext:
    """Run the real model once on ``tokens [P]`` and keep what the replacement model freezes.

    The transcoders' inputs are computed from the recorded ``hook_mlp_in`` with ``ln2``'s scale
    (the replacement model's own maths, so it reproduces them exactly); their targets are the
    recorded ``hook_mlp_out``, or the MLP module's output for ``mlp.hook_out``."""
    check_supported(adapter, transcoders)
    if tokens.ndim != 1 or tokens.numel() < 1:
        raise AttributionError("attribution: tokens must be one prompt [P] of at least one token")
    n_layers = adapter.shape.n_layers
    post_norms = bool(adapter.config("use_normalization_before_and_after", False))
    learned_pos = adapter.config("positional_embedding_type", "standard") == "standard"
    store: dict[str, Tensor] = {}

    def keep(name: str) -> tuple[str, Any]:
        def fn(act: Tensor) -> None:
            store[name] = act[0].detach().clone()

        return name, fn

    names = ["blocks.0.hook_resid_pre", adapter.hook_final_resid()]
    names += ["hook_pos_embed"] if learned_pos else []
    for layer in range(n_layers):
        names += [
            adapter.hook_resid_pre(layer),
            adapter.hook_mlp_in(layer),
            adapter.hook_mlp_out(layer),
            f"blocks.{layer}.attn.hook_pattern",
        ]
        if post_norms:  # the inputs of ln1_post and ln2_post: the attention and MLP modules' outputs
            names += [f"blocks.{layer}.attn", f"blocks.{layer}.mlp"]
    tokens = tokens.to(adapter.device)
    logits = adapter.run(tokens[None], [keep(n) for n in dict.fromkeys(names)])[0]

    def stack(fmt: str) -> Tensor:
        return torch.stack([store[fmt.format(layer)] for layer in range(n_layers)])

    def scales(which: str, inputs: Tensor) -> Tensor:
        return torch.stack([_scale(adapter.layer_norm(i, which), inputs[i]) for i in range(n_layers)])

    tc = transcoders
    resid_pre = stack("blocks.{}.hook_resid_pre")
    mlp_resid = stack("blocks.{}.hook_mlp_in")
    ln2_scale = scales("ln2", mlp_resid)
    mlp_in = torch.stack(
        [
            _site_input(tc.input_site, adapter.layer_norm(i, "ln2"), mlp_resid[i], ln2_scale[i])
            for i in range(n_layers)
        ]
    )
    own_output = post_norms and tc.output_site == MLP_OUTPUT_HOOK  # before ln2_post
    mlp_out = stack("blocks.{}.mlp" if own_output else "blocks.{}.hook_mlp_out")
    reconstruction = torch.stack([tc.reconstruct(i, list(mlp_in)) for i in range(n_layers)])
    final_resid = store[adapter.hook_final_resid()]
    return ReplacementContext(
        adapter=adapter,
        transcoders=tc,
        tokens=tokens,
        embed=store["blocks.0.hook_resid_pre"],
        resid_pre=resid_pre,
        mlp_resid=mlp_resid,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        patterns=stack("blocks.{}.attn.hook_pattern"),
        ln1_scale=scales("ln1", resid_pre),
        ln2_scale=ln2_scale,
        final_resid=final_resid,
        ln_final_scale=_scale(adapter.final_norm(), final_resid),
        logits=logits,
        activations=torch.stack([tc.encode(i, mlp_in[i]) for i in range(n_layers)]),
        reconstruction=reconstruction,
        errors=mlp_out - reconstruction,
        pos_embed=store["hook_pos_embed"] if learned_pos else None,
        ln1_post_scale=scales("ln1_post", stack("blocks.{}.attn")) if post_norms else None,
        ln2_post_scale=scales("ln2_post", stack("blocks.{}.mlp")) if post_norms else None,
    )
