"""The one module that imports TransformerLens.

Everything else sees a :class:`ModelAdapter`: the model's shape, its tokenizer, the hook
points that edge methods read and write (named in TransformerLens's vocabulary), and a
forward pass with hooks. A TransformerBridge backend would be a second adapter with the
same surface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from circuitd.errors import ModelError
from circuitd.models.tokenizer import HFTokenizer, Tokenizer

HookFn = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class ModelShape:
    """What the edge graph needs to know about an architecture."""

    n_layers: int
    n_heads: int
    d_model: int
    d_vocab: int
    n_ctx: int
    attn_only: bool = False
    parallel_attn_mlp: bool = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        return cls(
            n_layers=int(cfg["n_layers"]),
            n_heads=int(cfg["n_heads"]),
            d_model=int(cfg["d_model"]),
            d_vocab=int(cfg["d_vocab"]),
            n_ctx=int(cfg["n_ctx"]),
            attn_only=bool(cfg.get("attn_only", False)),
            parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
        )


@dataclass
class LeanPass:
    """An unpatched pass run by :meth:`ModelAdapter.lean_pass`: the tensors at every
    destination input, on the autograd graph when the pass tracks gradients."""

    qkv: list[torch.Tensor]  # per layer [B, P, 3, H, E]: queries, keys, values (before rotary)
    resid_pre: list[torch.Tensor]  # per layer [B, P, D], detached
    mlp_in: list[torch.Tensor]  # per layer [B, P, D] (none for attention-only models)
    final: torch.Tensor  # the final residual stream [B, P, D]


def _enable_edge_hooks(model: Any) -> None:
    # Per-head results are computed from hook_z by ``head_results`` (a batched matmul);
    # TransformerLens's use_attn_result builds a [batch, pos, head, d_head, d_model]
    # broadcast product instead, which is several times slower than the whole model.
    model.set_use_attn_result(False)
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    if getattr(model.cfg, "n_key_value_heads", None):
        model.set_ungroup_grouped_query_attention(True)


def _fuse_layer_norms(model: Any) -> None:
    """Run LayerNorms as one fused ``F.layer_norm`` call.

    With split q/k/v inputs every head normalises its own copy of the residual stream;
    TransformerLens's elementwise LayerNorm then dominates the forward and backward
    passes. The fused call computes the same values, scale and shift included;
    ``hook_normalized`` still fires when a hook is on it (the shift then follows it),
    ``hook_scale`` no longer does.
    """
    from transformer_lens.components import LayerNorm, LayerNormPre

    for module in model.modules():
        if isinstance(module, LayerNorm | LayerNormPre):
            module.forward = _fused_forward(module, affine=isinstance(module, LayerNorm))


def _fused_forward(module: Any, affine: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        dtype = module.cfg.dtype
        shape = (x.shape[-1],)
        full_precision = dtype in (torch.float32, torch.float64)
        if full_precision and not module.hook_normalized._forward_hooks:
            if affine:
                return F.layer_norm(x, shape, module.w, module.b, eps=module.eps)
            return F.layer_norm(x, shape, eps=module.eps)
        x = x if full_precision else x.to(torch.float32)
        y = module.hook_normalized(F.layer_norm(x, shape, eps=module.eps)).to(dtype)
        return y * module.w + module.b if affine else y

    return forward


class ModelAdapter:
    """A loaded model with the hook points that edge patching uses."""

    def __init__(self, model: Any, tokenizer: Tokenizer | None, model_id: str):
        _enable_edge_hooks(model)
        _fuse_layer_norms(model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self._qkv_cache: dict[int, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self.model_id = model_id
        cfg = model.cfg
        self.shape = ModelShape(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            d_model=cfg.d_model,
            d_vocab=cfg.d_vocab,
            n_ctx=cfg.n_ctx,
            attn_only=bool(cfg.attn_only),
            parallel_attn_mlp=bool(cfg.parallel_attn_mlp),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # Hook points, in TransformerLens's names.
    @staticmethod
    def hook_input() -> str:
        """Token plus positional embedding: the ``input`` source."""
        return "blocks.0.hook_resid_pre"

    @staticmethod
    def hook_head_z(layer: int) -> str:
        """Per-head attention-weighted values ``[batch, pos, head, d_head]``."""
        return f"blocks.{layer}.attn.hook_z"

    def head_results(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Each head's output ``[head, batch, pos, d_model]`` from its ``z`` (no ``b_O``,
        which belongs to no head)."""
        w_o = self.model.blocks[layer].attn.W_O  # [head, d_head, d_model]
        b, p, h, e = z.shape
        out = torch.bmm(z.permute(2, 0, 1, 3).reshape(h, b * p, e), w_o.to(z.dtype))
        return out.view(h, b, p, -1)

    @staticmethod
    def hook_mlp_out(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def hook_head_input(layer: int, qkv: str) -> str:
        """Per-head residual input to q, k or v ``[batch, pos, head, d_model]``."""
        return f"blocks.{layer}.hook_{qkv}_input"

    @staticmethod
    def hook_mlp_in(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_in"

    def hook_final_resid(self) -> str:
        """The residual stream that the unembedding reads: the ``logits`` destination."""
        return f"blocks.{self.shape.n_layers - 1}.hook_resid_post"

    # Gradients at the heads' inputs without per-head input copies (used by EAP).
    def shared_head_input_grads_supported(self) -> bool:
        """Whether :meth:`head_input_grads` is exact for this architecture: LayerNorm (or
        LayerNormPre) before attention, one key/value head per head, no extra q/k terms."""
        cfg = self.model.cfg
        return (
            cfg.normalization_type in ("LN", "LNPre")
            and not getattr(cfg, "n_key_value_heads", None)
            and cfg.positional_embedding_type in ("standard", "rotary")
            and not getattr(cfg, "use_qk_norm", False)
        )

    @contextmanager
    def shared_head_inputs(self) -> Iterator[None]:
        """Run with one attention input per layer (no per-head copies), as the plain model:
        for unpatched passes, and for gradients when :meth:`head_input_grads` applies."""
        self.model.set_use_split_qkv_input(False)
        try:
            yield
        finally:
            self.model.set_use_split_qkv_input(True)

    @staticmethod
    def hook_head_qkv(layer: int, qkv: str) -> str:
        """Per-head queries, keys or values ``[batch, pos, head, d_head]``."""
        return f"blocks.{layer}.attn.hook_{qkv}"

    @staticmethod
    def hook_resid_pre(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_pre"

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
        block = self.model.blocks[layer]
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

        cfg = self.model.cfg
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

    def input_source(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``input`` source ``[batch, pos, d_model]`` (what :meth:`hook_input` sees):
        the embeddings alone, no block run."""
        return self.model(tokens, stop_at_layer=0)

    def head_project(self, layer: int, heads: torch.Tensor, which: int, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys or values (``which`` 0, 1, 2) ``[H', ..., P, E]`` of the heads
        ``heads`` of ``layer`` from their residual inputs ``[H', ..., P, D]``: the block's
        first LayerNorm, the projection and its bias, rotary positions for queries and keys
        (positions 0..P-1). Head-major, so that each head is one product over every circuit,
        prompt and position, and no operand is copied into another layout."""
        block = self.model.blocks[layer]
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
        arithmetic: its forward pass of zoo:synth on 16 prompts takes 10 ms on a CPU core,
        this one 7 ms.

        ``sources [S, B, P, D]``: filled with every source's output (input, then each
        layer's heads and MLP). ``input_fn``: applied to the input embedding first (EAP-IG's
        interpolation). ``track``: start the autograd graph at the input, so that
        gradients at the pass's tensors can be taken."""
        cfg = self.model.cfg
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
        for layer, block in enumerate(self.model.blocks):
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
        attn = self.model.blocks[layer].attn
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
        return self.model.cfg.positional_embedding_type == "rotary"

    def head_attend(
        self, layer: int, heads: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        visible: torch.Tensor, queries: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Head outputs ``[H', ..., B, Q, D]`` (no ``b_O``) from queries ``[H', ..., B, Q, E]``
        and keys and values ``[H', ..., B, P, E]`` (broadcast), where query i sees key j
        when ``visible[..., i, j]`` (broadcast; the causal mask). ``queries``: only these
        of the flattened ``B * Q`` queries are projected out: ``[H', ..., T, D]``. The
        output projection is one product per head over everything else."""
        attn = self.model.blocks[layer].attn
        if self.model.cfg.dtype not in (torch.float32, torch.float64):
            q, k = q.float(), k.float()
        scores = (q @ k.transpose(-1, -2) / attn.attn_scale).masked_fill(~visible, float("-inf"))
        z = scores.softmax(-1).to(v.dtype) @ v  # [H', ..., B, Q, E]
        if queries is not None:
            z = z.flatten(-3, -2).index_select(-2, queries)  # [H', ..., T, E]
        h, e = z.shape[0], z.shape[-1]
        return torch.bmm(z.reshape(h, -1, e), attn.W_O.index_select(0, heads)).view(*z.shape[:-1], -1)

    def mlp_output(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The MLP output of ``layer`` (``hook_mlp_out``) for its input ``resid [..., P, D]``."""
        block = self.model.blocks[layer]
        return block.apply_mlp(block.ln2(resid))

    def attn_output_bias(self, layer: int) -> torch.Tensor:
        """``b_O`` of ``layer``: added to the residual stream with the heads' outputs."""
        return self.model.blocks[layer].attn.b_O

    def logits_of(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits from the final residual stream ``[..., D]`` (final norm, unembedding)."""
        from transformer_lens.utilities.activation_functions import apply_softcap

        m = self.model
        x = m.ln_final(resid) if m.cfg.normalization_type is not None else resid
        logits = torch.addmm(m.unembed.b_U, x.reshape(-1, x.shape[-1]), m.unembed.W_U)
        return apply_softcap(logits.view(*x.shape[:-1], -1), m.cfg.output_logits_soft_cap)

    def run(
        self, tokens: torch.Tensor, hooks: Sequence[tuple[str, HookFn]] = (), logits: bool = True
    ) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` of a forward pass with ``hooks`` (name, fn(act));
        with ``logits=False`` the final residual stream instead (the unembedding, a large
        product for real vocabularies, is skipped when only the hooks' values are wanted)."""
        stop = None if logits else self.shape.n_layers
        with self._hooked(hooks):
            return self.model(tokens, return_type="logits", stop_at_layer=stop)

    def run_blocks(
        self,
        resid: torch.Tensor,
        start: int,
        hooks: Sequence[tuple[str, HookFn]],
        stop: int | None = None,
    ) -> torch.Tensor:
        """Logits of the model run from block ``start`` on the residual stream ``resid``;
        with ``stop``, the residual stream entering block ``stop`` instead."""
        with self._hooked(hooks):
            return self.model(resid, start_at_layer=start, stop_at_layer=stop, return_type="logits")

    @contextmanager
    def _hooked(self, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
        """``hooks`` on their hook points for one pass, then removed: only these handles
        (TransformerLens's ``run_with_hooks`` resets every hook point of the model after
        each pass: about a sixth of zoo:synth's forward pass on a CPU)."""
        handles = []
        try:
            for name, fn in hooks:
                handles.append(self.model.mod_dict[name].register_forward_hook(_module_hook(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _module_hook(fn: HookFn) -> Callable[[torch.nn.Module, Any, torch.Tensor], torch.Tensor | None]:
    """``fn(act)`` as a PyTorch forward hook on a hook point (which returns its input)."""

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output)

    return hook


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


def load_pretrained(name: str, device: str, dtype: torch.dtype) -> ModelAdapter:
    """A TransformerLens model by its name (needs the model hub or its local cache)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        get_official_model_name(name)
    except ValueError as exc:
        raise ModelError(
            f"unknown model '{name}': use a TransformerLens name, zoo:<name>, "
            "random:<preset>[@seed] or local:<dir>"
        ) from exc
    try:
        with _quiet_hub():
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype)
    except Exception as exc:  # network, cache and hub errors all end the same way
        reason = _first_line(exc)
        raise ModelError(f"model '{name}' could not be loaded (is the hub reachable?): {reason}") from exc
    return ModelAdapter(model, HFTokenizer(model.tokenizer), name)


def pretrained_config(name: str) -> dict[str, Any]:
    """The config of a TransformerLens model, without its weights (needs the hub)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    try:
        with _quiet_hub():
            return get_pretrained_model_config(name).to_dict()
    except Exception as exc:
        reason = _first_line(exc)
        raise ModelError(f"model '{name}' could not be resolved (is the hub reachable?): {reason}") from exc
