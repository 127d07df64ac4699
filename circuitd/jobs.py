"""What discover and the methods share about a job: its task built for the model, and the
versions recorded with every result. Kept apart from ``discover`` so methods never import it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuitd import __version__
from circuitd.errors import TaskError
from circuitd.settings import get_settings
from circuitd.tasks import load_task_data, resolve_task

if TYPE_CHECKING:
    from circuitd.models.adapter import ModelAdapter
    from circuitd.spec import JobSpec
    from circuitd.tasks.base import Task


def build_task(spec: JobSpec, model: ModelAdapter, metric: str | None = None) -> Task:
    """Resolve the spec's task against the model's tokenizer and limits; ``metric`` overrides
    the task's own."""
    s = model.shape
    if isinstance(spec.task, str):
        data = load_task_data(
            spec.task, model.tokenizer, s.d_vocab, n=spec.n_prompts, seed=spec.seed, **spec.task_params
        )
    elif spec.task is not None:
        data = spec.task.head(spec.n_prompts) if spec.n_prompts else spec.task
    else:
        raise TaskError("task", "required")
    if metric:
        data = data.model_copy(update={"metric": metric})
    task = resolve_task(data, model.tokenizer, s.d_vocab, s.n_ctx)
    limit = get_settings().max_tokens
    for i, ids in enumerate(task.clean):
        if len(ids) > limit:
            raise TaskError(f"clean[{i}]", f"{len(ids)} tokens exceed the limit of {limit}")
    return task


def versions() -> dict[str, str]:
    """The versions of circuitd and of the libraries that computed a result."""
    from importlib.metadata import version

    import torch

    return {
        "circuitd": __version__,
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
    }
