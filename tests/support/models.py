"""Models and tasks the tests share: small random models with a random task, and a hand-built
model whose circuit is known by construction."""

from __future__ import annotations

import torch

from circuitd.batch import TaskBatch
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.models import zoo_known
from circuitd.models.adapter import ModelAdapter
from circuitd.models.loading import build_from_config
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.tasks import load_task_data, resolve_task
from circuitd.tasks.base import Task

RANDOM_MODEL_IDS = ["random:tiny@0", "random:tiny@1", "random:tiny-attn-only@2", "random:small@3"]


def random_setup(
    model_id: str, split_qkv: bool = True, n: int = 5, seed: int = 0, metric: str = "logit_diff"
) -> tuple[ModelAdapter, EdgeGraph, PatchingEngine, Task, TaskBatch]:
    """A random model, its edge graph and engine, a random task of ``n`` prompts and its batch."""
    model = load_model(model_id)
    graph = EdgeGraph(model.shape, split_qkv)
    engine = PatchingEngine(model, graph)
    data = load_task_data("random", None, model.shape.d_vocab, n=n, seed=seed, metric=metric)
    task = resolve_task(data, None, model.shape.d_vocab, model.shape.n_ctx)
    return model, graph, engine, task, TaskBatch.from_task(task)


def method_context(
    model_id: str, metric: str = "kl", ablation: str = "resample", n: int = 6, seed: int = 0,
    batch_size: int = 4, dtype: str = "float64", split: bool = True,
) -> MethodContext:
    """An edge method's context on a model: its IOI task when it has a tokenizer, else a random one."""
    model = load_model(model_id, dtype=dtype)
    graph = EdgeGraph(model.shape, split)
    if model.tokenizer is None:
        data = load_task_data("random", None, model.shape.d_vocab, n=n, seed=seed, metric=metric)
    else:
        data = load_task_data("ioi", model.tokenizer, model.shape.d_vocab, n=n, seed=seed, metric=metric)
    task = resolve_task(data, model.tokenizer, model.shape.d_vocab, model.shape.n_ctx)
    return MethodContext(model, graph, task, metric, ablation, batch_size)


def copy_model() -> ModelAdapter:
    """zoo:known-copy in float64: attention-only, 2 layers x 2 heads, no LayerNorm. a0.h0 moves
    the first token to every position; a1.h0 at the last position reads it and writes to the
    subspace the unembedding reads. Every other weight is zero (``circuitd.models.zoo_known``)."""
    return load_model("zoo:known-copy", dtype="float64")


COPY_CIRCUIT = set(zoo_known.COPY_CIRCUIT)  # the copy model's circuit


def copy_task(metric: str) -> Task:
    """Every prompt of the copy model (its shipped task): the answer is the first token;
    corrupted, that token shifted by two."""
    data = zoo_known.shipped_task("known-copy").model_copy(update={"metric": metric})
    return resolve_task(data, None, zoo_known.COPY_VOCAB, zoo_known.COPY_CTX)


# architecture variants the engine's node math claims, on one small base shape
BASE = dict(
    n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=50,
    act_fn="gelu", normalization_type="LN",
)
VARIANTS = {
    "standard": {},
    "rotary": dict(positional_embedding_type="rotary", rotary_dim=4),
    "parallel": dict(parallel_attn_mlp=True),
    "neox-like": dict(
        positional_embedding_type="rotary", rotary_dim=8, parallel_attn_mlp=True, act_fn="gelu_new"
    ),
    "attn-only": dict(attn_only=True),
    "ln-pre": dict(normalization_type="LNPre"),
    "inverse-layer-scale": dict(scale_attn_by_inverse_layer_idx=True),
}


def variant_model(variant: str, seed: int = 1) -> ModelAdapter:
    """A small random model of one architecture variant, norms and biases off their defaults."""
    model = build_from_config(dict(BASE, **VARIANTS[variant], seed=seed), None, None, f"test:{variant}")
    with torch.no_grad():  # LayerNorm scales and shifts and every bias away from their defaults
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b")) or ".b_" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model
