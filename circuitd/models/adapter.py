"""The boundary to TransformerLens: :class:`ModelAdapter` wraps a HookedTransformer.

Only the adapter side of :mod:`circuitd.models` (this module, :mod:`circuitd.models.node_math`
and :mod:`circuitd.models.loading`) imports TransformerLens or touches the wrapped model
(``ModelAdapter._tl``).
Everything else sees a :class:`ModelAdapter`: the model's shape, its tokenizer, the hook
points that edge methods read and write (named in TransformerLens's vocabulary), a forward
pass with hooks, and small named accessors for the weights that other modules compute with.
A TransformerBridge backend would be a second adapter with the same surface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from circuitd.errors import ModelError
from circuitd.models.node_math import NodeMath
from circuitd.tokenizer import Tokenizer

HookFn = Callable[[torch.Tensor], torch.Tensor | None]


DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def _positive(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """A config's positive integer; TransformerLens writes None or -1 for "derive it"."""
    value = cfg.get(key)
    if value is None or value == -1:
        if default is None:
            raise ModelError(f"model config: {key}: missing (a positive integer is needed)")
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"model config: {key}: expected a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelShape:
    """What the edge graph needs to know about an architecture, and what sizes its weights
    (known from the config alone, so a model too large is refused before anything loads)."""

    n_layers: int
    n_heads: int
    d_model: int
    d_vocab: int
    n_ctx: int
    attn_only: bool = False
    parallel_attn_mlp: bool = False
    d_head: int = 0  # 0: d_model // n_heads
    d_mlp: int = 0  # 0: no MLPs (attn_only)
    n_key_value_heads: int = 0  # 0: n_heads (no grouped-query attention)
    gated_mlp: bool = False
    d_vocab_out: int = 0  # 0: d_vocab
    learned_positions: bool = True  # a positional embedding matrix (TL's "standard", "shortformer")
    n_experts: int = 1
    norm_params: int | None = field(default=None, compare=False)  # None: LayerNorms (gain, bias)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """From HookedTransformerConfig fields, filling what TransformerLens derives itself;
        a missing or malformed size is a :class:`ModelError` naming the field."""
        d_model = _positive(cfg, "d_model")
        if cfg.get("d_head") in (None, -1):
            d_head = max(d_model // _positive(cfg, "n_heads"), 1)
        else:
            d_head = _positive(cfg, "d_head")
        n_heads = _positive(cfg, "n_heads", max(d_model // d_head, 1))
        attn_only = bool(cfg.get("attn_only", False))
        d_vocab = _positive(cfg, "d_vocab")
        n_layers = _positive(cfg, "n_layers")
        return cls(
            n_layers=n_layers,
            n_heads=n_heads,
            d_model=d_model,
            d_vocab=d_vocab,
            n_ctx=_positive(cfg, "n_ctx"),
            attn_only=attn_only,
            parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
            d_head=d_head,
            d_mlp=0 if attn_only else _positive(cfg, "d_mlp", 4 * d_model),
            n_key_value_heads=_positive(cfg, "n_key_value_heads", n_heads),
            gated_mlp=bool(cfg.get("gated_mlp", False)),
            d_vocab_out=_positive(cfg, "d_vocab_out", d_vocab),
            learned_positions=cfg.get("positional_embedding_type", "standard") in ("standard", "shortformer"),
            n_experts=_positive(cfg, "num_experts", 1),
            norm_params=_norm_params(cfg, n_layers, d_model, d_head, attn_only),
        )

    @property
    def n_params(self) -> int:
        """Parameters of the HookedTransformer (embedding and unembedding untied, as TL holds them)."""
        d, heads, kv = self.d_model, self.n_heads, self.n_key_value_heads or self.n_heads
        d_head = self.d_head or d // heads
        attn = 2 * heads * d * d_head + 2 * kv * d * d_head + (heads + 2 * kv) * d_head + d
        mlp = 0
        if self.d_mlp:
            per_expert = (3 if self.gated_mlp else 2) * d * self.d_mlp + self.d_mlp + d
            mlp = self.n_experts * per_expert + (d * self.n_experts if self.n_experts > 1 else 0)
        norms = self.norm_params
        if norms is None:  # a gain and a bias per LayerNorm, one before each sublayer and the last
            norms = 2 * d * (self.n_layers * (1 if self.attn_only else 2) + 1)
        layers = self.n_layers * (attn + mlp)
        embed = self.d_vocab * d + (self.n_ctx * d if self.learned_positions else 0)
        unembed = d * (self.d_vocab_out or self.d_vocab) + (self.d_vocab_out or self.d_vocab)
        return embed + layers + norms + unembed

    def memory_bytes(self, dtype: str, positions: int | None = None) -> tuple[int, int]:
        """(weights, activations) in bytes at ``dtype``. Activations: one sequence of ``positions``
        tokens (default and at most ``n_ctx``): residual stream, attention and MLP outputs and
        logits; a rough floor for a job."""
        size = DTYPE_BYTES[dtype]
        n = min(positions or self.n_ctx, self.n_ctx)
        per_position = self.n_layers * (4 * self.d_model + self.d_mlp) + (self.d_vocab_out or self.d_vocab)
        return self.n_params * size, n * per_position * size


def _norm_params(cfg: dict[str, Any], n_layers: int, d_model: int, d_head: int, attn_only: bool) -> int:
    """Parameters of every norm of a HookedTransformer, as TransformerLens builds them: a
    LayerNorm has a gain and a bias, an RMSNorm a gain, a folded one (``LNPre``, ``RMSPre``)
    none; ``final_rms`` makes the last norm an RMSNorm, ``use_normalization_before_and_after``
    adds an RMSNorm after each sublayer (Gemma-2), ``use_qk_norm`` one on each query and key."""
    kind = cfg.get("normalization_type", "LN")
    per_norm = {"LN": 2, "RMS": 1}.get(kind, 0)
    final = 1 if kind == "LN" and cfg.get("final_rms") else per_norm
    post = 1 if cfg.get("use_normalization_before_and_after") and kind in ("RMS", "RMSPre") else 0
    sublayers = 1 if attn_only else 2
    per_layer = sublayers * (per_norm + post) * d_model + (2 * d_head if cfg.get("use_qk_norm") else 0)
    return n_layers * per_layer + final * d_model


def _enable_edge_hooks(model: Any) -> None:
    # Per-head results are computed from hook_z by ``head_results`` (a batched matmul);
    # TransformerLens's use_attn_result builds a [batch, pos, head, d_head, d_model]
    # broadcast product instead.
    model.set_use_attn_result(False)
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    if getattr(model.cfg, "n_key_value_heads", None):
        # k/v inputs per query head unless a pass asks for grouped ones (ModelAdapter.kv_inputs)
        model.set_ungroup_grouped_query_attention(True)


def _fuse_layer_norms(model: Any) -> None:
    """Run LayerNorms as one fused ``F.layer_norm`` call.

    With split q/k/v inputs every head normalises its own copy of the residual stream;
    TransformerLens's elementwise LayerNorm then dominates the forward and backward
    passes. The fused call computes the same values, scale and shift included;
    ``hook_normalized`` still fires when a hook is on it (the shift then follows it),
    ``hook_scale`` no longer does.
    """
    from transformer_lens.components.layer_norm import LayerNorm
    from transformer_lens.components.layer_norm_pre import LayerNormPre

    for module in model.modules():
        if isinstance(module, LayerNorm | LayerNormPre):
            module.forward = _fused_forward(module, affine=isinstance(module, LayerNorm))


class _Forward(Protocol):
    """A module's ``forward(x)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def _fused_forward(module: Any, affine: bool) -> _Forward:
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


@dataclass(frozen=True)
class Norm:
    """One norm's constants: ``eps``, its gain ``w`` and shift ``b`` (``None`` where it has
    none: LayerNormPre and RMSNormPre neither, RMSNorm no shift), and ``center``: whether it
    subtracts the mean (LayerNorm, scale ``sqrt(var + eps)``) or not (RMSNorm, scale
    ``sqrt(mean(x^2) + eps)``)."""

    eps: float
    w: torch.Tensor | None
    b: torch.Tensor | None
    center: bool = True


def _norm(module: Any) -> Norm:
    from transformer_lens.components.rms_norm import RMSNorm
    from transformer_lens.components.rms_norm_pre import RMSNormPre

    center = not isinstance(module, RMSNorm | RMSNormPre)
    return Norm(module.eps, getattr(module, "w", None), getattr(module, "b", None), center)


class ModelAdapter(NodeMath):
    """A loaded model with the hook points that edge patching uses."""

    def __init__(self, model: Any, tokenizer: Tokenizer | None, model_id: str):
        _enable_edge_hooks(model)
        _fuse_layer_norms(model)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._tl = model  # only the model-side modules (adapter, node_math, loading) read it
        self.tokenizer = tokenizer
        self._qkv_cache: dict[int, tuple[tuple, torch.Tensor, torch.Tensor]] = {}
        self.model_id = model_id
        self.shape = ModelShape.from_config(vars(model.cfg))

    @property
    def hooked_transformer(self) -> Any:
        """The TransformerLens model itself, for tests and benchmarks that check circuitd against
        TransformerLens directly (an independent computation); circuitd never uses it."""
        return self._tl

    @property
    def device(self) -> torch.device:
        return next(self._tl.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._tl.parameters()).dtype

    def config(self, name: str, default: Any = None) -> Any:
        """One field of the model's TransformerLens config (``normalization_type``,
        ``n_key_value_heads``, ...), or ``default`` where the config has no such field."""
        return getattr(self._tl.cfg, name, default)

    # Parameters and modes (seeded random weights, training the zoo model).
    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """Every parameter of the model."""
        return self._tl.parameters()

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """Every parameter of the model with its TransformerLens name (``blocks.0.attn.W_Q``,
        ``blocks.0.ln1.w``, ``unembed.b_U``, ...)."""
        return self._tl.named_parameters()

    def set_training(self, training: bool) -> None:
        """Train (``True``) or leave training: module train mode and gradients on every
        parameter. Training runs without the per-head hook points (they cost time and memory);
        leaving it switches them back on, per-head results (``use_attn_result``) included."""
        model = self._tl
        model.set_use_attn_result(not training)
        model.set_use_split_qkv_input(not training)
        model.set_use_hook_mlp_in(not training)
        model.train(training)
        for p in model.parameters():
            p.requires_grad_(training)

    # Weights for a forward pass computed elsewhere (attribution's local replacement model).
    def layer_norm(self, layer: int, which: str) -> Norm:
        """The constants of block ``layer``'s norm ``which``: ``"ln1"`` before attention,
        ``"ln2"`` before the MLP, and with normalization after sub-blocks (Gemma-2)
        ``"ln1_post"`` / ``"ln2_post"`` on the attention / MLP output."""
        return _norm(getattr(self._tl.blocks[layer], which))

    def final_norm(self) -> Norm:
        """The constants of the norm before the unembedding (``ln_final``)."""
        return _norm(self._tl.ln_final)

    def normalizes_outputs(self) -> bool:
        """Whether blocks apply ``ln1``/``ln2`` to their sub-blocks' outputs instead of their
        inputs (TransformerLens's post-norm architectures, OLMo 2 and 3)."""
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

        return self._tl.cfg.original_architecture in POST_NORM_ARCHITECTURES

    def attn_ov(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``W_V [K, D, E]``, ``b_V [K, E]``, ``W_O [H, E, D]`` and ``b_O [D]`` of ``layer``:
        with its attention pattern held fixed, attention is linear in these. ``K`` key/value
        heads (``K = H`` but for grouped-query attention, where query head ``h`` reads value
        head ``h // (H / K)``, TransformerLens's ``repeat_interleave``)."""
        attn = self._tl.blocks[layer].attn
        if hasattr(attn, "_W_V"):  # grouped-query: the un-repeated value heads
            return attn._W_V, attn._b_V, attn.W_O, attn.b_O
        return attn.W_V, attn.b_V, attn.W_O, attn.b_O

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W_U + b_U`` for ``x [..., D]``: the unembedding alone (no final norm, no soft
        cap; :meth:`logits_of` has both)."""
        return x @ self._tl.unembed.W_U + self._tl.unembed.b_U

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
        w_o = self._tl.blocks[layer].attn.W_O  # [head, d_head, d_model]
        b, p, h, e = z.shape
        out = torch.bmm(z.permute(2, 0, 1, 3).reshape(h, b * p, e), w_o.to(z.dtype))
        return out.view(h, b, p, -1)

    @staticmethod
    def hook_mlp_out(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def hook_head_input(layer: int, qkv: str) -> str:
        """Per-head residual input to q, k or v ``[batch, pos, head, d_model]`` (k and v:
        per key/value head inside :meth:`kv_inputs` with ``grouped``)."""
        return f"blocks.{layer}.hook_{qkv}_input"

    @staticmethod
    def hook_mlp_in(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_in"

    def hook_final_resid(self) -> str:
        """The residual stream that the unembedding reads: the ``logits`` destination."""
        return f"blocks.{self.shape.n_layers - 1}.hook_resid_post"

    @contextmanager
    def shared_head_inputs(self) -> Iterator[None]:
        """Run with one attention input per layer (no per-head copies), as the plain model:
        for unpatched passes, and for gradients when :meth:`head_input_grads` applies."""
        self._tl.set_use_split_qkv_input(False)
        try:
            yield
        finally:
            self._tl.set_use_split_qkv_input(True)

    @contextmanager
    def kv_inputs(self, grouped: bool) -> Iterator[None]:
        """Run with the k and v inputs (:meth:`hook_head_input`) of a grouped-query model per
        key/value head (``grouped``: ``[batch, pos, n_key_value_heads, d_model]``, each read
        by its group's query heads) or per query head (TransformerLens's ungrouped
        attention: each key/value head's weights repeated for every query head). No effect
        on other models."""
        cfg = self._tl.cfg
        if not getattr(cfg, "n_key_value_heads", None):
            yield
            return
        before = cfg.ungroup_grouped_query_attention
        self._tl.set_ungroup_grouped_query_attention(not grouped)
        try:
            yield
        finally:
            self._tl.set_ungroup_grouped_query_attention(before)

    @staticmethod
    def hook_head_qkv(layer: int, qkv: str) -> str:
        """Per-head queries, keys or values ``[batch, pos, head, d_head]``."""
        return f"blocks.{layer}.attn.hook_{qkv}"

    @staticmethod
    def hook_resid_pre(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_pre"

    def input_source(self, tokens: torch.Tensor) -> torch.Tensor:
        """The ``input`` source ``[batch, pos, d_model]`` (what :meth:`hook_input` sees):
        the embeddings alone, no block run."""
        return self._tl(tokens, stop_at_layer=0)

    def run(
        self, tokens: torch.Tensor, hooks: Sequence[tuple[str, HookFn]] = (), logits: bool = True
    ) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` of a forward pass with ``hooks`` (name, fn(act));
        with ``logits=False`` the final residual stream instead (the unembedding, a large
        product for real vocabularies, is skipped when only the hooks' values are wanted)."""
        stop = None if logits else self.shape.n_layers
        with self._hooked(hooks):
            return self._tl(tokens, return_type="logits", stop_at_layer=stop)

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
            return self._tl(resid, start_at_layer=start, stop_at_layer=stop, return_type="logits")

    @contextmanager
    def _hooked(self, hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
        """``hooks`` on their hook points for one pass, then removed: only these handles
        (TransformerLens's ``run_with_hooks`` resets every hook point of the model after
        each pass)."""
        handles = []
        try:
            for name, fn in hooks:
                handles.append(self._tl.mod_dict[name].register_forward_hook(_module_hook(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _module_hook(fn: HookFn) -> Callable[[torch.nn.Module, Any, torch.Tensor], torch.Tensor | None]:
    """``fn(act)`` as a PyTorch forward hook on a hook point (which returns its input)."""

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        return fn(output)

    return hook
