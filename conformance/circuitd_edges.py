"""circuitd's side of the edge-method conformance run (circuitd's venv): the shared fixture
(a seeded random model written as a ``local:`` checkpoint, a clean/corrupted task in token
ids, the model's logits on it) and circuitd's EAP and ACDC on it, by name and timed.

Values come from :func:`circuitd.discover.discover`, the entry point the CLI and the workers
call; the time is that of the method's own scoring (the registry entry's ``score``, inside the
same workflow), which is what the peer's prune-score functions compute too: no model loading,
task building or circuit evaluation on either side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from circuitd.access import full_access
from circuitd.discover import discover
from circuitd.edge_context import MethodContext, MethodResult
from circuitd.edges import EdgeGraph
from circuitd.methods import METHODS
from circuitd.methods.acdc.order import visit_order
from circuitd.methods.contract import EdgeParams, RunContext, load_entry
from circuitd.methods.edge_run import run_edge_method
from circuitd.models.adapter import ModelAdapter
from circuitd.models.registry import load_model, model_config
from circuitd.spec import JobSpec
from circuitd.tasks.base import TaskData
from conformance.timing import timed

MODEL_DIR, TASK_FILE, LOGITS_FILE = "model", "task.json", "circuitd_logits.safetensors"
DTYPES = ("float32", "float64")  # float64: the values compared; float32: the runs timed


@dataclass(frozen=True)
class Fixture:
    """The files both sides read: ``work/model`` (``config.json``, ``model.safetensors``),
    ``work/task.json`` (a TaskData in token ids) and ``work/circuitd_logits.safetensors``
    (the clean prompts and circuitd's logits on them at each of :data:`DTYPES`)."""

    work: Path

    @property
    def model_id(self) -> str:
        return f"local:{(self.work / MODEL_DIR).resolve()}"

    def task(self) -> TaskData:
        return TaskData.model_validate_json((self.work / TASK_FILE).read_text())


def _answers(
    model: ModelAdapter, clean: torch.Tensor, corrupted: torch.Tensor
) -> tuple[list[int], list[int]]:
    """Per prompt: the clean model's top token at the last position (correct) and the
    corrupted prompt's top token, or the clean runner-up where they agree (incorrect), so the
    logit difference is the corruption's effect."""
    with torch.no_grad():
        top_clean = model.run(clean)[:, -1].topk(2, dim=-1).indices
        top_corrupt = model.run(corrupted)[:, -1].argmax(-1)
    same = top_corrupt == top_clean[:, 0]
    incorrect = torch.where(same, top_clean[:, 1], top_corrupt)
    return top_clean[:, 0].tolist(), incorrect.tolist()


def make_fixture(
    work: Path, source_model: str, n_prompts: int, length: int, n_changed: int, seed: int
) -> Fixture:
    """Write the fixture: ``source_model``'s config and weights (a ``random:`` preset has
    seeded random weights, LayerNorm gains and biases included), ``n_prompts`` random clean
    prompts of ``length`` tokens whose corrupted versions differ at ``n_changed`` positions,
    and circuitd's logits on the clean prompts."""
    model = load_model(source_model)
    folder = work / MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in model_config(source_model).items() if k != "seed"}
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    weights = {name: p.detach().contiguous().clone() for name, p in model.named_parameters()}
    save_file(weights, str(folder / "model.safetensors"))

    gen = torch.Generator().manual_seed(seed)
    vocab = model.shape.d_vocab
    clean = torch.randint(vocab, (n_prompts, length), generator=gen)
    corrupted = clean.clone()
    for row in corrupted:
        where = torch.randperm(length - 1, generator=gen)[:n_changed] + 1  # never the first token
        shift = torch.randint(1, vocab, (n_changed,), generator=gen)
        row[where] = (row[where] + shift) % vocab  # a different token, always
    correct, incorrect = _answers(model, clean, corrupted)
    task = TaskData(
        name="conformance", clean=clean.tolist(), corrupted=corrupted.tolist(), correct=list(correct),
        incorrect=list(incorrect), metric="logit_diff", prepend_bos=False,
    )
    (work / TASK_FILE).write_text(task.model_dump_json())
    fixture = Fixture(work)
    saved: dict[str, torch.Tensor] = {"clean": clean}
    with torch.no_grad():
        for dtype in DTYPES:  # through the checkpoint, as every run below loads it
            saved[f"logits_{dtype}"] = load_model(fixture.model_id, "cpu", dtype).run(clean).contiguous()
        if not torch.equal(saved["logits_float32"], model.run(clean)):
            raise RuntimeError(f"{folder}: the saved checkpoint's logits differ from {source_model}'s")
    save_file(saved, str(work / LOGITS_FILE))
    return fixture


def spec_for(fixture: Fixture, method: str, params: dict[str, Any], dtype: str) -> JobSpec:
    """The job: the fixture's model and task, every prompt in one batch (auto-circuit's ACDC
    reads only its loader's first batch), no curve (not part of either side's method)."""
    task = fixture.task()
    with full_access():  # the machine's own user: a local checkpoint directory
        return JobSpec.model_validate({
            "model": fixture.model_id, "task": task.model_dump(), "method": method,
            "params": {"curve": False, **params}, "batch_size": len(task.clean), "dtype": dtype,
        })


@dataclass
class MethodRun:
    """One method on circuitd's side: every edge's score and kept flag by edge name, and the
    median seconds of its timed runs (nan when not timed)."""

    scores: dict[str, float]
    keep: dict[str, bool]
    seconds: float


def run_method(spec: JobSpec, repeats: int = 0) -> MethodRun:
    """``spec``'s method as :func:`circuitd.discover.discover` runs it. With ``repeats``, the
    method's scoring is timed inside that same run (one warm-up, the median of ``repeats``):
    the workflow gives the score function the context it built, and the score function is
    the registry entry's, wrapped only to time it."""
    seconds: list[float] = []
    if repeats:
        score = load_entry(METHODS[spec.method].entry)

        def timed_score(ctx: MethodContext, params: EdgeParams) -> MethodResult:
            out, median = timed(lambda: score(ctx, params), repeats)
            seconds.append(median)
            return out

        assert isinstance(spec.params, EdgeParams)
        result = run_edge_method(RunContext(spec), spec.params, timed_score)
    else:
        result = discover(spec)
    assert result.scores is not None and result.keep is not None
    names = EdgeGraph(load_model(spec.model, spec.device, spec.dtype).shape, split_qkv=True).edge_names
    return MethodRun(
        dict(zip(names, result.scores.tolist(), strict=True)),
        dict(zip(names, result.keep.tolist(), strict=True)),
        seconds[0] if seconds else math.nan,
    )


def acdc_visit_order(fixture: Fixture) -> list[str]:
    """circuitd's ACDC test order as edge names (:func:`circuitd.methods.acdc.order.visit_order`)."""
    graph = EdgeGraph(load_model(fixture.model_id).shape, split_qkv=True)
    names = graph.edge_names
    return [names[e] for block in visit_order(graph) for node in block for e in node.edges]
