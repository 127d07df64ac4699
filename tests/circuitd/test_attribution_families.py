"""Attribution graphs on random-weight Hugging Face checkpoints of every family (GPT-2, GPT-NeoX,
Llama, Qwen2, Gemma-2, Mistral: LayerNorm and RMSNorm, parallel blocks, rotary positions,
grouped-query attention, Gemma-2's norms after sub-blocks and logit soft cap) with random
transcoders reading every input hook.

Each graph is pinned by a computation that does not use circuitd's replacement model:
TransformerLens's own forward pass (its LayerNorm unfused, so ``hook_scale`` fires), hooked so
that every attention pattern and every norm scale is detached, each MLP output replaced by the
transcoders' reconstruction from their input as TransformerLens computes it plus a constant error,
and the feature activations held at ``encode(TransformerLens's tensor at the input hook)``. Its
autograd Jacobian with respect to each source's coefficient equals the adjacency.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import Tensor

from circuitd.access import full_access
from circuitd.attribution import ReplacementContext, attribute, record
from circuitd.discover import discover
from circuitd.models import registry
from circuitd.models.adapter import ModelAdapter
from circuitd.spec import JobSpec
from circuitd.transcoders import TranscoderSet, random_transcoders, save
from graphs.attribution_graph import Node
from graphs.attribution_networkx import from_networkx
from tests.circuitd.test_hf_checkpoints import FAMILIES, VOCAB

# (input hook, output hook, transcoder kind): every input hook, both output hooks, both kinds
SITES = [
    ("hook_resid_mid", "hook_mlp_out", "transcoder"),
    ("ln2.hook_normalized", "hook_mlp_out", "transcoder"),
    ("mlp.hook_in", "mlp.hook_out", "cross_layer_transcoder"),
    ("mlp.hook_in", "hook_mlp_out", "transcoder"),
]
SITE_IDS = ["-".join(s[:2]) for s in SITES]
N_POS = 5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Every family saved once (seeded random weights) as a ``save_pretrained`` directory. Norm
    gains and shifts are randomised too (initialised to 1 and 0 they would hide a gain applied
    where it should not be, or left out where it should be)."""
    root = tmp_path_factory.mktemp("families")
    paths = {}
    for family, build in FAMILIES.items():
        torch.manual_seed(0)
        model = build().eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name or ".ln_" in name:
                    param.add_(0.3 * torch.randn_like(param))
        model.save_pretrained(root / family)
        paths[family] = root / family
    yield paths
    registry.clear_cache()


def _load(checkpoints: dict[str, Path], family: str, dtype: str) -> ModelAdapter:
    with full_access():
        return registry.load_model(f"local:{checkpoints[family]}", dtype=dtype)


def _context(adapter: ModelAdapter, site: tuple[str, str, str], d_tc: int = 16) -> ReplacementContext:
    input_hook, output_hook, kind = site
    shape = adapter.shape
    tcs = random_transcoders(
        shape.n_layers,
        shape.d_model,
        d_tc,
        kind,
        "relu",
        skip=True,
        seed=1,
        feature_input_hook=input_hook,
        feature_output_hook=output_hook,
    ).to(dtype=adapter.dtype)
    tokens = torch.randint(0, VOCAB, (N_POS,), generator=torch.Generator().manual_seed(2))
    return record(adapter, tcs, tokens)


def _capped(adapter: ModelAdapter, logits: Tensor) -> Tensor:
    """Gemma-2's final soft cap ``c·tanh(x / c)`` (identity where the model has none)."""
    cap = adapter.config("output_logits_soft_cap") or 0.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


@pytest.mark.parametrize("site", SITES, ids=SITE_IDS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_replacement_model_reproduces_the_model(checkpoints: dict[str, Path], family: str, site: Any) -> None:
    """At the recorded point the replacement model (features live or frozen) gives the model's own
    logits once its soft cap is applied, and its own transcoder inputs and final residual."""
    adapter = _load(checkpoints, family, "float64")
    ctx = _context(adapter, site)
    real = adapter.hooked_transformer(ctx.tokens[None])[0]
    torch.testing.assert_close(ctx.logits, real, atol=1e-10, rtol=0)
    for mode in ("live", "frozen"):
        run = ctx.forward(mode)
        torch.testing.assert_close(_capped(adapter, run.logits), real, atol=1e-4, rtol=0)
        torch.testing.assert_close(run.mlp_in, ctx.mlp_in, atol=1e-8, rtol=0)
        torch.testing.assert_close(run.final_resid, ctx.final_resid, atol=1e-8, rtol=0)
    if family == "gpt2":  # the learned positions; rotary models have none in the residual stream
        assert ctx.pos_embed is not None
        torch.testing.assert_close(ctx.pos_embed, adapter.hooked_transformer.W_pos[:N_POS], atol=0, rtol=0)
    else:
        assert ctx.pos_embed is None
    assert (ctx.ln2_post_scale is not None) == (family == "gemma2")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_float32_replacement_model_reproduces_the_logits(checkpoints: dict[str, Path], family: str) -> None:
    adapter = _load(checkpoints, family, "float32")
    ctx = _context(adapter, SITES[0])
    run = ctx.forward("frozen")
    torch.testing.assert_close(_capped(adapter, run.logits), ctx.logits, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ TransformerLens's own frozen model


class _FrozenTL:
    """TransformerLens's forward pass as the linear model of the edges, built from hooks alone:
    ``readouts(coef)`` are the targets' read-outs when each source (features, errors, tokens in
    node order) is scaled by ``1 + coef``, every pattern and norm scale detached at its value."""

    def __init__(self, adapter: ModelAdapter, tcs: TranscoderSet, tokens: Tensor, nodes: list[Node]):
        self.tl = copy.deepcopy(adapter.hooked_transformer)
        for module in self.tl.modules():
            module.__dict__.pop("forward", None)  # circuitd's fused LayerNorm: back to TL's own
        self.tcs, self.tokens, self.nodes = tcs, tokens, nodes
        self.n_layers = adapter.shape.n_layers
        self.inputs: dict[int, Tensor] = {}  # TL's tensor at the input hook, per layer
        self.targets: dict[int, Tensor] = {}  # TL's own tensor at the output hook, per layer
        sources = [n for n in nodes if n.kind != "logit"]

        def where(kind: str, *fields: str) -> tuple[list[int], tuple[Tensor, ...]]:
            picked = [j for j, n in enumerate(sources) if n.kind == kind]
            index = [torch.tensor([getattr(sources[j], f) for j in picked]) for f in fields]
            return picked, tuple(index)

        self.feats = where("feature", "layer", "pos", "index")
        self.errors = where("error", "layer", "pos")
        self.toks = where("token", "pos")

    def _hooks(self, coef: Tensor) -> list[Any]:
        """Register the hooks for one pass; returns their handles."""
        tcs, tl, n_pos = self.tcs, self.tl, len(self.tokens)
        feat = coef.new_zeros(self.n_layers, n_pos, tcs.d_tc).index_put(self.feats[1], coef[self.feats[0]])
        err = coef.new_zeros(self.n_layers, n_pos).index_put(self.errors[1], coef[self.errors[0]])
        tok = coef.new_zeros(n_pos).index_put(self.toks[1], coef[self.toks[0]])
        input_hook, output_hook = tcs.feature_input_hook, tcs.feature_output_hook
        acts: list[Tensor] = []
        handles = []

        def on(module: torch.nn.Module, fn: Callable[[Tensor], Tensor | None]) -> None:
            handles.append(module.register_forward_hook(lambda m, i, out: fn(out)))

        on(tl.blocks[0].hook_resid_pre, lambda act: act * (1 + tok)[None, :, None])
        for name, module in tl.named_modules():
            if name.endswith("hook_scale") or name.endswith("hook_pattern"):
                on(module, lambda act: act.detach())

        for layer, block in enumerate(tl.blocks):

            def read(x: Tensor, layer: int = layer) -> None:
                self.inputs[layer] = x[0]

            # ln2.hook_normalized as circuit-tracer's TransformerLens 2.x fires it: after a
            # LayerNorm's gain and shift (the MLP's input), before an RMSNorm's gain
            layer_norm = type(block.ln2).__name__ in ("LayerNorm", "LayerNormPre")
            if input_hook == "mlp.hook_in" or (input_hook == "ln2.hook_normalized" and layer_norm):
                handles.append(block.mlp.register_forward_pre_hook(lambda m, args, read=read: read(args[0])))
            elif input_hook == "ln2.hook_normalized":
                on(block.ln2.hook_normalized, read)
            else:
                on(block.hook_mlp_in, read)

            def write(real: Tensor, layer: int = layer) -> Tensor:
                x = self.inputs[layer]
                a = tcs.encode(layer, x.detach())  # the activations, held fixed
                acts.append(a * (1 + feat[layer]))
                if tcs.clt is not None:
                    out = tcs.clt.b_dec[layer] + tcs.clt.skip(layer, x)
                    for i in range(layer + 1):
                        out = out + acts[i] @ tcs.clt.W_dec[i][:, layer - i]
                else:
                    t = tcs.transcoder(layer)
                    out = acts[layer] @ t.W_dec + t.b_dec + t.skip(x)
                self.targets[layer] = real[0].detach()
                error = real[0].detach() - out.detach()
                return (out + error * (1 + err[layer])[:, None])[None]

            on(block.mlp if output_hook == "mlp.hook_out" else block.hook_mlp_out, write)
        return handles

    def readouts(self, coef: Tensor) -> Tensor:
        """Feature targets' pre-activations and logit targets' demeaned pre-cap logits ``[T]``."""
        handles = self._hooks(coef)
        logits: list[Tensor] = []
        handles.append(self.tl.unembed.register_forward_hook(lambda m, i, out: logits.append(out[0])))
        try:
            self.tl(self.tokens[None])
        finally:
            for h in handles:
                h.remove()
        vals = []
        for n in self.nodes:
            if n.kind == "feature":
                layer = cast(int, n.layer)
                vals.append(self.tcs.pre_activations(layer, self.inputs[layer][n.pos])[n.index])
            elif n.kind == "logit":
                row = logits[0][n.pos]
                other = row[n.contrast] if n.contrast is not None else row.mean()
                vals.append(row[n.index] - other)
        return torch.stack(vals)


@pytest.mark.parametrize("site", SITES, ids=SITE_IDS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_adjacency_equals_the_jacobian_of_transformer_lens(
    checkpoints: dict[str, Path], family: str, site: Any
) -> None:
    """The adjacency equals d(read-out)/d(source coefficient) of TransformerLens's own model with
    patterns, norm scales and activations frozen; the recorded activations, transcoder inputs and
    targets are TransformerLens's own tensors at the hooks; the graph's scores lie in [0, 1]."""
    adapter = _load(checkpoints, family, "float64")
    ctx = _context(adapter, site)
    att = attribute(ctx, batch_size=16)
    nodes = att.nodes
    assert sum(n.kind == "feature" for n in nodes) >= 10
    frozen = _FrozenTL(adapter, ctx.transcoders, ctx.tokens, nodes)
    sources = [i for i, n in enumerate(nodes) if n.kind != "logit"]
    targets = [i for i, n in enumerate(nodes) if n.kind in ("feature", "logit")]
    zero = torch.zeros(len(sources), dtype=torch.float64)
    frozen.readouts(zero)  # TL's tensors at the hooks, at the recorded point
    for layer in range(ctx.n_layers):
        torch.testing.assert_close(ctx.mlp_in[layer], frozen.inputs[layer], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(ctx.mlp_out[layer], frozen.targets[layer], atol=1e-10, rtol=1e-10)
        encoded = ctx.transcoders.encode(layer, frozen.inputs[layer])
        torch.testing.assert_close(ctx.activations[layer], encoded, atol=1e-10, rtol=1e-10)
    jac = torch.autograd.functional.jacobian(frozen.readouts, zero, vectorize=True)
    expected = att.adjacency[targets][:, sources]
    scale = float(jac.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(expected, jac, atol=1e-4 * scale, rtol=1e-4)
    scores = att.graph().scores()
    for key in ("replacement_score", "completeness_score"):
        assert 0.0 <= scores[key] <= 1.0, (key, scores[key])


# ------------------------------------------------------------------ the service's method, end to end


@pytest.mark.parametrize("family", ["gpt_neox", "gemma2"])
def test_attribution_graph_job_on_a_checkpoint(
    checkpoints: dict[str, Path], family: str, tmp_path: Path
) -> None:
    """An ``attribution-graph`` job on a checkpoint directory with a transcoder set on disk (reading
    ``mlp.hook_in``, writing ``mlp.hook_out``) gives the graph attribution computes directly, pinned
    above; its scores lie in [0, 1]."""
    adapter = _load(checkpoints, family, "float32")
    site = ("mlp.hook_in", "mlp.hook_out", "transcoder")
    ctx = _context(adapter, site)
    save(ctx.transcoders, tmp_path / "tcs")
    prompt = ctx.tokens.tolist()
    model = f"local:{checkpoints[family]}"
    with full_access():
        spec = JobSpec(
            model=model, method="attribution-graph", prompt=prompt, transcoders=str(tmp_path / "tcs")
        )
        result = discover(spec)
    full = from_networkx(result.full_graph)
    direct = attribute(ctx)
    assert [n.kind for n in full.nodes] == [n.kind for n in direct.nodes]
    torch.testing.assert_close(
        torch.from_numpy(full.adjacency.copy()),
        direct.adjacency,
        atol=1e-4 * float(direct.adjacency.abs().max()),
        rtol=1e-4,
    )
    for key in ("replacement_score", "completeness_score"):
        assert 0.0 <= result.metrics[key] <= 1.0
