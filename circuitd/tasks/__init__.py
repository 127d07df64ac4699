"""Built-in task generators and task files.

A generator is ``generate(tokenizer, d_vocab, n=..., seed=..., **params) -> TaskData`` whose
``params`` are its parameter model's (:class:`~circuitd.tasks.params.GeneratorParams`);
``--task`` takes a generator's name or the path of a task JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from circuitd.errors import TaskError
from circuitd.tasks import greater_than, induction, ioi, random
from circuitd.tasks.base import Task, TaskData, resolve_task
from circuitd.tasks.params import Generator, GeneratorParams
from circuitd.tokenizer import Tokenizer

GENERATORS: dict[str, Generator] = {
    "ioi": Generator(ioi.IOIParams, ioi.generate),
    "greater_than": Generator(greater_than.GreaterThanParams, greater_than.generate),
    "induction": Generator(induction.InductionParams, induction.generate),
    "random": Generator(random.RandomParams, random.generate),
}

__all__ = [
    "GENERATORS", "GeneratorParams", "Task", "TaskData", "generator", "load_task_data", "resolve_task",
]


def generator(name: str) -> Callable[..., TaskData]:
    if name not in GENERATORS:
        raise TaskError("task", f"unknown generator '{name}' (choose from {', '.join(GENERATORS)})")
    return GENERATORS[name].generate


def task_data_from_json(obj: Any, where: str = "task") -> TaskData:
    """Validate a task JSON object; the first problem is reported with its field path."""
    try:
        return TaskData.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise TaskError(f"{where}.{loc}" if loc else where, msg) from exc


def load_task_data(
    task: str, tokenizer: Tokenizer | None, d_vocab: int, n: int | None = None, seed: int = 0,
    **params: Any,
) -> TaskData:
    """A generator by name (``params`` checked by its model, so ``n`` and ``seed`` cannot hide
    in them), or a task JSON file by path."""
    path = Path(task)
    if task.endswith(".json") or path.is_file():
        if not path.is_file():
            raise TaskError("task", f"no such task file: {task}")
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TaskError("task", f"{task} is not valid JSON: {exc}") from exc
        data = task_data_from_json(obj, where=path.name)
        return data.head(n) if n else data
    generate = generator(task)
    kwargs = GENERATORS[task].params.of(params).model_dump(exclude_unset=True)
    return generate(tokenizer, d_vocab, **({"n": n} if n else {}), seed=seed, **kwargs)
