"""Shared fixtures: small random models and their tasks, fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch

from circuitd.batch import TaskBatch
from circuitd.edges import EdgeGraph
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.tasks import load_task_data, resolve_task

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def random_setup(
    model_id: str, split_qkv: bool = True, n: int = 5, seed: int = 0, metric: str = "logit_diff"
):
    model = load_model(model_id)
    graph = EdgeGraph(model.shape, split_qkv)
    engine = PatchingEngine(model, graph)
    data = load_task_data("random", None, model.shape.d_vocab, n=n, seed=seed, metric=metric)
    task = resolve_task(data, None, model.shape.d_vocab, model.shape.n_ctx)
    return model, graph, engine, task, TaskBatch.from_task(task)


@pytest.fixture(params=["random:tiny@0", "random:tiny@1", "random:tiny-attn-only@2", "random:small@3"])
def random_model_id(request: pytest.FixtureRequest) -> str:
    return request.param
