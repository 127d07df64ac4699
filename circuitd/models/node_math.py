"""Node math: single nodes and the unpatched pass computed from the model's weights.

:class:`NodeMath` is a mixin of :class:`~circuitd.models.adapter.ModelAdapter` (the adapter
side of the TransformerLens boundary): the queries, keys, values and outputs of chosen heads,
MLP outputs and logits from their inputs (incremental patched passes), the unpatched pass
without hook points (EAP), and gradients at the heads' inputs without per-head copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F


@dataclass
class LeanPass:
    """An unpatched pass run by :meth:`ModelAdapter.lean_pass`: the tensors at every
    destination input, on the autograd graph when the pass tracks gradients."""

    qkv: list[torch.Tensor]  # per layer [B, P, 3, H, E]: queries, keys, values (before rotary)
    resid_pre: list[torch.Tensor]  # per layer [B, P, D], detached
    mlp_in: list[torch.Tensor]  # per layer [B, P, D] (none for attention-only models)
    final: torch.Tensor  # the final residual stream [B, P, D]


class NodeMath:
    """Node-math methods of :class:`~circuitd.models.adapter.ModelAdapter`, which provides
    ``_tl`` (the TransformerLens model), ``_qkv_cache``, :meth:`input_source` and
    :meth:`head_results`."""

    _tl: Any
    _qkv_cache: dict[int, tuple[tuple, torch.Tensor, torch.Tensor]]

    if TYPE_CHECKING:  # provided by ModelAdapter

        def input_source(self, tokens: torch.Tensor) -> torch.Tensor: ...

        def head_results(self, layer: int, z: torch.Tensor) -> torch.Tensor: ...

    # Gradients at the heads' inputs without per-head input copies (used by EAP).
    def shared_head_input_grads_supported(self) -> bool:
        """Whether :meth:`head_input_grads` is exact for this architecture: LayerNorm (or
        LayerNormPre) before attention, one key/value head per head, no extra q/k terms."""
        cfg = self._tl.cfg
        return (
            cfg.normalization_type in ("LN", "LNPre")
            and not getattr(cfg, "n_key_value_heads", None)
            and cfg.positional_embedding_type in ("standard", "rotary")
            and not getattr(cfg, "use_qk_norm", False)
        )

    def head_input_grads(
        self,
        layer: int,
        grads: torch.Tensor,
        acts: torch.Tensor,
        resid_pre: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``d m / d (head input)`` ``[3H, batch * pos, d_model]`` for the q, k and v inputs
        of every head (rows q of every head, then k, then v), from the gradients at the heads'
        queries, keys and values and those values themselves (``[3, batch, pos, head,
        d_head]`` each), back through ``W_Q``/``W_K``/``W_V`` and the layer's first
        LayerNorm at ``resid_pre``: what split q/k/v inputs would give when every head reads
        the same residual stream.

        With ``v = gamma * (grad @ W^T)`` and ``xhat``, ``sigma`` the LayerNorm's
        normalised input and scale, the gradient is ``(v - mean(v) - xhat * mean(v *
        xhat)) / sigma``. Centring ``W`` over d_model gives ``v - mean(v)`` in the product
        itself, and ``sum(v * xhat) = grad . (xhat @ (gamma * W))`` is the gradient dotted
        with the activation less its biases (``b`` and ``beta @ W``): no second projection.
        ``out``: a buffer to write into (large gradients are not allocated afresh for every
        layer)."""
        block = self._tl.blocks[layer]
        attn, ln = block.attn, block.ln1
        w = torch.cat([attn.W_Q, attn.W_K, attn.W_V])  # [3H, D, E]
        bias = torch.cat([attn.b_Q, attn.b_K, attn.b_V])  # [3H, E]
        if hasattr(ln, "w"):
            bias = bias + torch.einsum("d,hde->he", ln.b, w)
            w = w * ln.w[None, :, None]
        w = w - w.mean(1, keepdim=True)
        _, b, p, h, e = grads.shape
        x = resid_pre.reshape(b * p, -1)
        x = x - x.mean(-1, keepdim=True)
        sigma = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()  # [N, 1]
        g = grads.permute(0, 3, 1, 2, 4).reshape(3 * h, b * p, e) / sigma  # [3H, N, E], over sigma
        xw = acts.permute(0, 3, 1, 2, 4).reshape(3 * h, b * p, e) - bias[:, None, :]  # xhat @ W
        v_xhat = (g * xw).sum(-1) / x.shape[-1]  # [3H, N]: mean_d v * xhat
        full = torch.bmm(g, w.transpose(1, 2).contiguous(), out=out)  # [3H, N, D]: v - mean(v)
        return full.addcmul_(v_xhat.unsqueeze(-1), (x / sigma).unsqueeze(0), value=-1.0)

    # Single nodes computed from their inputs (incremental patched passes).
    def node_math_supported(self) -> bool:
        """Whether :meth:`head_project`, :meth:`head_attend`, :meth:`mlp_output` and
        :meth:`logits_of` compute what the model's own blocks do: pre-norm blocks, causal
        attention with standard or rotary positions, one key/value head per head, no caps,
        clips, sinks or q/k norms."""
        from transformer_lens.utilities.activation_functions import softcap_enabled
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

        cfg = self._tl.cfg
        return (
            cfg.original_architecture not in POST_NORM_ARCHITECTURES
            and not cfg.use_normalization_before_and_after
            and cfg.positional_embedding_type in ("standard", "rotary")
            and cfg.attention_dir == "causal"
            and not getattr(cfg, "n_key_value_heads", None)
            and not cfg.use_qk_norm
            and cfg.clip_qkv is None
            and not cfg.use_logn_attn
            and not cfg.use_dynamic_ntk_rope
            and not cfg.use_local_attn
            and not getattr(cfg, "use_attention_sinks", False)
            and not cfg.load_in_4bit
            and not softcap_enabled(cfg.attn_scores_soft_cap)
        )

    def head_project(self, layer: int, heads: torch.Tensor, which: int, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys or values (``which`` 0, 1, 2) ``[H', ..., P, E]`` of the heads
        ``heads`` of ``layer`` from their residual inputs ``[H', ..., P, D]``: the block's
        first LayerNorm, the projection and its bias, rotary positions for queries and keys
        (positions 0..P-1). Head-major, so that each head is one product over every circuit,
        prompt and position, and no operand is copied into another layout."""
        block = self._tl.blocks[layer]
        attn = block.attn
        w = (attn.W_Q, attn.W_K, attn.W_V)[which].index_select(0, heads)  # [H', D, E]
        b = (attn.b_Q, attn.b_K, attn.b_V)[which].index_select(0, heads)  # [H', E]
        h, d = x.shape[0], x.shape[-1]
        y = torch.baddbmm(b[:, None, :], block.ln1(x).reshape(h, -1, d), w)  # [H', N, E]
        y = y.view(*x.shape[:-1], -1)
        if which < 2 and self.rotary():
            p, e = y.shape[-2], y.shape[-1]
            flat = y.reshape(h, -1, p, e).permute(1, 2, 0, 3)  # [N, P, H', E] as TransformerLens has it
            y = attn.apply_rotary(flat).permute(2, 0, 1, 3).reshape(y.shape)
        return y

    # The unpatched pass by node math (EAP's passes and source values).
    def lean_pass_supported(self) -> bool:
        """Whether :meth:`lean_pass` computes what the model does: the node-math family
        with shared head inputs (see :meth:`node_math_supported`)."""
        return self.node_math_supported() and self.shared_head_input_grads_supported()

    def lean_pass(
        self,
        tokens: torch.Tensor,
        sources: torch.Tensor | None = None,
        input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        track: bool = False,
    ) -> LeanPass:
        """The unpatched model's pass computed here, without hook points: one projection
        for every head's q, k and v, fused attention, per-head outputs summed. On small
        models TransformerLens's per-module calls and hook points cost more than the
        arithmetic.

        ``sources [S, B, P, D]``: filled with every source's output (input, then each
        layer's heads and MLP). ``input_fn``: applied to the input embedding first (EAP-IG's
        interpolation). ``track``: start the autograd graph at the input, so that
        gradients at the pass's tensors can be taken."""
        cfg = self._tl.cfg
        x = self.input_source(tokens)
        if input_fn is not None:
            x = input_fn(x)
        if sources is not None:
            sources[0].copy_(x)
        x = x.detach().requires_grad_(track)
        b, p, d = x.shape
        h, e = cfg.n_heads, cfg.d_head
        low = cfg.dtype not in (torch.float32, torch.float64)  # attention in float32 then
        out = LeanPass([], [], [], x)
        at = 1
        for layer, block in enumerate(self._tl.blocks):
            attn = block.attn
            out.resid_pre.append(x.detach())
            w, bias = self._qkv_weights(layer)
            qkv = torch.addmm(bias, block.ln1(x).reshape(-1, d), w).view(b, p, 3, h, e)
            out.qkv.append(qkv)
            q, k, v = qkv.unbind(2)  # [B, P, H, E]
            if self.rotary():
                q, k = attn.apply_rotary(q), attn.apply_rotary(k)
            q, k, v = (t.transpose(1, 2).float() if low else t.transpose(1, 2) for t in (q, k, v))
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / attn.attn_scale)
            heads = self.head_results(layer, z.to(x.dtype).transpose(1, 2))  # [H, B, P, D]
            if sources is not None:
                sources[at : at + h].copy_(heads.detach())
            at += h
            attn_out = heads.sum(0) + attn.b_O
            if cfg.attn_only:
                x = x + attn_out
                continue
            resid_mid = x if cfg.parallel_attn_mlp else x + attn_out
            mlp_in = resid_mid.clone()  # its own node: the gradient of the MLP's path only
            out.mlp_in.append(mlp_in)
            mlp_out = self.mlp_output(layer, mlp_in)
            if sources is not None:
                sources[at].copy_(mlp_out.detach())
            at += 1
            x = resid_mid + mlp_out + (attn_out if cfg.parallel_attn_mlp else 0.0)
        out.final = x
        return out

    def _qkv_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_Q``, ``W_K``, ``W_V`` of every head as one ``[D, 3 * H * E]`` matrix and their
        biases, cached until a weight changes."""
        attn = self._tl.blocks[layer].attn
        params = (attn.W_Q, attn.W_K, attn.W_V, attn.b_Q, attn.b_K, attn.b_V)
        key = tuple((id(t), t._version) for t in params)
        cached = self._qkv_cache.get(layer)
        if cached is None or cached[0] != key:
            w = torch.stack(params[:3], 1)  # [H, 3, D, E]
            w = w.permute(2, 1, 0, 3).reshape(w.shape[2], -1).contiguous()  # [D, (3, H, E)]
            bias = torch.stack(params[3:]).reshape(-1)  # [(3, H, E)]
            cached = self._qkv_cache[layer] = (key, w, bias)
        return cached[1], cached[2]

    def rotary(self) -> bool:
        return self._tl.cfg.positional_embedding_type == "rotary"

    def head_attend(
        self, layer: int, heads: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        visible: torch.Tensor, queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Head outputs ``[H', ..., B, Q, D]`` (no ``b_O``) from queries ``[H', ..., B, Q, E]``
        and keys and values ``[H', ..., B, P, E]`` (broadcast), where query i sees key j
        when ``visible[..., i, j]`` (broadcast; the causal mask). ``queries``: only these
        of the flattened ``B * Q`` queries are projected out: ``[H', ..., T, D]``. The
        output projection is one product per head over everything else."""
        attn = self._tl.blocks[layer].attn
        if self._tl.cfg.dtype not in (torch.float32, torch.float64):
            q, k = q.float(), k.float()
        scores = (q @ k.transpose(-1, -2) / attn.attn_scale).masked_fill(~visible, float("-inf"))
        z = scores.softmax(-1).to(v.dtype) @ v  # [H', ..., B, Q, E]
        if queries is not None:
            z = z.flatten(-3, -2).index_select(-2, queries)  # [H', ..., T, E]
        h, e = z.shape[0], z.shape[-1]
        return torch.bmm(z.reshape(h, -1, e), attn.W_O.index_select(0, heads)).view(*z.shape[:-1], -1)

    def mlp_output(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The MLP output of ``layer`` (``hook_mlp_out``) for its input ``resid [..., P, D]``."""
        block = self._tl.blocks[layer]
        return block.apply_mlp(block.ln2(resid))

    def attn_output_bias(self, layer: int) -> torch.Tensor:
        """``b_O`` of ``layer``: added to the residual stream with the heads' outputs."""
        return self._tl.blocks[layer].attn.b_O

    def logits_of(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from the final residual stream ``[..., D]`` (final norm, unembedding)."""
        from transformer_lens.utilities.activation_functions import apply_softcap

        m = self._tl
        x = m.ln_final(resid) if m.cfg.normalization_type is not None else resid
        logits = torch.addmm(m.unembed.b_U, x.reshape(-1, x.shape[-1]), m.unembed.W_U)
        return apply_softcap(logits.view(*x.shape[:-1], -1), m.cfg.output_logits_soft_cap)
