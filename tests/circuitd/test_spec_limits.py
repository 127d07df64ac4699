"""Limits before work: every spec field, generator parameter, method parameter and inline task
is bounded at validation, with one line naming the field (and the setting that raises a limit),
so a hostile spec never reaches a worker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from circuitd.cli import build_parser
from circuitd.cli.analysis import _spec_from_args
from circuitd.errors import CircuitdError, TaskError
from circuitd.jobs import build_task
from circuitd.methods.attribution_graph import _duplicate
from circuitd.models.registry import load_model
from circuitd.settings import get_settings
from circuitd.spec import JobSpec, spec_error_line
from circuitd.tasks import GENERATORS, load_task_data
from circuitd.tasks import random as random_task
from circuitd.tasks.base import TaskData

INLINE = {"clean": ["a"], "corrupted": ["b"], "correct": ["c"], "incorrect": ["d"]}
EDGE = {"model": "random:tiny", "task": "random"}
GRAPH = {"model": "random:tiny", "method": "attribution-graph", "prompt": [1, 2]}


@pytest.fixture(autouse=True)
def default_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shipped limits, whatever the environment says."""
    for name in ("MAX_PROMPTS", "MAX_TOKENS", "MAX_BATCH_SIZE", "MAX_EDGES", "MAX_IG_STEPS",
                 "MAX_FEATURE_NODES", "MAX_LOGIT_TARGETS"):
        monkeypatch.delenv(f"CIRCUITD_{name}", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _error(**spec: Any) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    return spec_error_line(info.value)


@pytest.mark.parametrize(
    "change,line",
    [
        ({"n_prompts": 0}, "n_prompts: Input should be greater than or equal to 1"),
        ({"n_prompts": 1025}, "n_prompts: 1025 exceeds the limit of 1024 (CIRCUITD_MAX_PROMPTS)"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"batch_size": 4096}, "batch_size: 4096 exceeds the limit of 256 (CIRCUITD_MAX_BATCH_SIZE)"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        ({"device": "banana"}, "device: 'banana' is not cpu, mps, cuda or cuda:N"),
        ({"device": "cuda:"}, "device: 'cuda:' is not cpu, mps, cuda or cuda:N"),
        ({"device": "cuda:0;rm"}, "device: 'cuda:0;rm' is not cpu, mps, cuda or cuda:N"),
        ({"device": "x" * 10_000}, "device: String should have at most 16 characters"),
    ],
)
def test_spec_fields_are_bounded(change: dict[str, Any], line: str) -> None:
    assert _error(**EDGE, **change) == line


def test_the_edges_of_the_spec_fields_pass() -> None:
    for device in ("cpu", "mps", "cuda", "cuda:0", "cuda:12"):
        assert JobSpec.model_validate({**EDGE, "device": device}).device == device
    spec = JobSpec.model_validate({**EDGE, "n_prompts": 1024, "batch_size": 256, "seed": 2**32 - 1})
    assert (spec.n_prompts, spec.batch_size, spec.seed) == (1024, 256, 2**32 - 1)


def test_a_limit_follows_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITD_MAX_BATCH_SIZE", "512")
    get_settings.cache_clear()
    assert JobSpec.model_validate({**EDGE, "batch_size": 300}).batch_size == 300
    line = "batch_size: 600 exceeds the limit of 512 (CIRCUITD_MAX_BATCH_SIZE)"
    assert _error(**EDGE, batch_size=600) == line


@pytest.mark.parametrize(
    "task,params,line",
    [
        ("random", {"length": 1_000_000_000},
         "task_params.length: 1000000000 exceeds the limit of 512 (CIRCUITD_MAX_TOKENS)"),
        ("random", {"length": 0}, "task_params.length: Input should be greater than or equal to 1"),
        ("random", {"length": "many"},
         "task_params.length: Input should be a valid integer, unable to parse string as an integer"),
        ("random", {"foo": 1}, "task_params.foo: Extra inputs are not permitted"),
        ("random", {"n": 10**9}, "task_params.n: Extra inputs are not permitted"),  # n is n_prompts
        ("random", {"seed": 3}, "task_params.seed: Extra inputs are not permitted"),
        ("random", {"metric": "accuracy"},
         "task_params.metric: Input should be 'logit_diff', 'prob_diff', 'kl' or 'nll'"),
        ("ioi", {"templates": "ABC"}, "task_params.templates: Input should be 'ABBA', 'BABA' or 'both'"),
        ("induction", {"seq_len": 1000}, "task_params.seq_len: Input should be less than or equal to 50"),
        ("induction", {"seq_len": 6, "prefix_len": 6}, "task_params.prefix_len: must be in 1..5, got 6"),
        ("greater_than", {"centuries": "11"},
         "task_params.centuries.0: Input should be '12', '13', '14', '15', '16', '17' or '18'"),
        ("greater_than", {"centuries": ["17"] * 8}, "task_params.centuries: List should have at most 7 items "
         "after validation, not 8"),
    ],
)
def test_generator_params_are_typed_and_bounded(task: str, params: dict[str, Any], line: str) -> None:
    assert _error(model="random:tiny", task=task, task_params=params) == line


def test_task_params_need_a_generator_task() -> None:
    assert _error(model="random:tiny", task=INLINE, task_params={"length": 3}) == (
        "task_params: only for a generator task (ioi, random, ...), not with an inline task")
    assert _error(**GRAPH, task_params={"length": 3}) == (
        "task_params: only for a generator task (ioi, random, ...), not without a task")
    assert _error(**EDGE, task_params=[1]) == "task_params: expected an object of the generator's parameters"
    assert JobSpec.model_validate({**GRAPH, "task_params": {}}).task_params == {}


def test_task_params_are_stored_typed_and_read_back() -> None:
    spec = JobSpec.model_validate({**EDGE, "task_params": {"length": "12", "metric": "kl"}})
    assert spec.task_params == {"length": 12, "metric": "kl"}
    gt = JobSpec.model_validate(
        {"model": "zoo:synth", "task": "greater_than", "task_params": {"centuries": "16,17"}})
    assert gt.task_params == {"centuries": ["16", "17"]}
    for s in (spec, gt):
        assert JobSpec.model_validate(s.model_dump(mode="json")) == s
    assert spec.replace(seed=4).task_params == spec.task_params


def test_every_generator_publishes_its_parameters() -> None:
    schemas = {name: g.describe() for name, g in GENERATORS.items()}
    assert list(schemas) == ["ioi", "greater_than", "induction", "random"]
    assert all(s["additionalProperties"] is False and "metric" in s["properties"] for s in schemas.values())
    assert schemas["random"]["properties"]["length"]["default"] == 6
    assert schemas["ioi"]["properties"]["templates"]["enum"] == ["ABBA", "BABA", "both"]
    assert schemas["greater_than"]["properties"]["metric"]["default"] == "prob_diff"


def test_the_generators_read_their_params_through_the_model() -> None:
    with pytest.raises(TaskError) as err:
        load_task_data("random", None, 50, n=4, length=1_000_000_000)
    assert err.value.field == "length" and "exceeds the limit of 512 (CIRCUITD_MAX_TOKENS)" in str(err.value)
    with pytest.raises(TaskError) as err:
        load_task_data("random", None, 50, n=4, bogus=1)
    assert str(err.value) == "bogus: Extra inputs are not permitted"
    data = load_task_data("random", None, 50, n=3, length="9")
    assert len(data.clean) == 3 and all(len(p) == 9 for p in data.clean)


def test_a_generators_size_is_its_n_and_a_written_tasks_is_capped() -> None:
    """The spec bounds n_prompts; the transcoder trainer draws more prompts than a job may have."""
    data = random_task.generate(None, 50, n=1500, length=2)
    assert len(data.clean) == len(data.correct) == 1500
    with pytest.raises(ValidationError, match="1500 entries exceed the limit of 1024"):
        TaskData.model_validate(data.model_dump())


def test_build_task_uses_the_spec_task_params() -> None:
    spec = JobSpec.model_validate({**EDGE, "n_prompts": 3, "task_params": {"length": 12, "metric": "kl"}})
    task = build_task(spec, load_model("random:tiny"))
    assert len(task) == 3 and {len(p) for p in task.clean} == {12} and task.metric == "kl"


@pytest.mark.parametrize(
    "params,line",
    [
        ({"threshold": float("inf")}, "params.threshold: Input should be a finite number"),
        ({"threshold": float("nan")}, "params.threshold: Input should be a finite number"),
        ({"threshold": -1.0}, "params.threshold: Input should be greater than or equal to 0"),
        ({"top_n": 1_000_001}, "params.top_n: 1000001 exceeds the limit of 1000000 (CIRCUITD_MAX_EDGES)"),
        ({"ig_steps": 65}, "params.ig_steps: 65 exceeds the limit of 64 (CIRCUITD_MAX_IG_STEPS)"),
    ],
)
def test_edge_method_params_are_bounded(params: dict[str, Any], line: str) -> None:
    assert _error(**EDGE, method="eap-ig", params=params) == line


@pytest.mark.parametrize(
    "params,line",
    [
        ({"tau": [float("inf")]}, "params.tau: every tau must be finite and >= 0 (got inf)"),
        ({"tau": float("nan")}, "params.tau: every tau must be finite and >= 0 (got nan)"),
        ({"tau": [0.01] * 65}, "params.tau: List should have at most 64 items after validation, not 65"),
        ({"prefilter_top_n": 10**9},
         "params.prefilter_top_n: 1000000000 exceeds the limit of 1000000 (CIRCUITD_MAX_EDGES)"),
        ({"prefilter_threshold": float("inf")},
         "params.prefilter_threshold: Input should be a finite number"),
        ({"ig_steps": 1000}, "params.ig_steps: 1000 exceeds the limit of 64 (CIRCUITD_MAX_IG_STEPS)"),
    ],
)
def test_acdc_params_are_bounded(params: dict[str, Any], line: str) -> None:
    assert _error(**EDGE, method="acdc", params=params) == line


@pytest.mark.parametrize(
    "change,line",
    [
        ({"prompt": [1, -1]}, "params.prompt: token id -1 is outside 0..2147483647"),
        ({"prompt": [2**31]}, "params.prompt: token id 2147483648 is outside 0..2147483647"),
        ({"prompt": [1] * 513}, "params.prompt: 513 entries exceed the limit of 512 (CIRCUITD_MAX_TOKENS)"),
        ({"prompt": "a" * 16_385},
         "params.prompt: 16385 characters exceed the limit of 16384 (32 per token of CIRCUITD_MAX_TOKENS)"),
        ({"node_threshold": float("nan")}, "params.node_threshold: Input should be a finite number"),
        ({"edge_threshold": 2.0}, "params.edge_threshold: Input should be less than or equal to 1"),
        ({"desired_logit_prob": float("inf")}, "params.desired_logit_prob: Input should be a finite number"),
        ({"validate_scale": float("-inf")}, "params.validate_scale: Input should be a finite number"),
        ({"validate_scale": 1e9}, "params.validate_scale: Input should be less than or equal to 1000"),
        ({"max_feature_nodes": 5000},
         "params.max_feature_nodes: 5000 exceeds the limit of 4096 (CIRCUITD_MAX_FEATURE_NODES)"),
        ({"max_n_logits": 65},
         "params.max_n_logits: 65 exceeds the limit of 64 (CIRCUITD_MAX_LOGIT_TARGETS)"),
        ({"target_tokens": list(range(65))},
         "params.target_tokens: 65 entries exceed the limit of 64 (CIRCUITD_MAX_LOGIT_TARGETS)"),
        ({"target_tokens": [2**31]}, "params.target_tokens.0: token id 2147483648 is outside 0..2147483647"),
        ({"logit_diff": ["a" * 257, "b"]},
         "params.logit_diff.0: 257 characters exceed the limit of 256 for one token"),
        ({"validate_nodes": [f"f0.{i}@1" for i in range(257)]},
         "params.validate_nodes: List should have at most 256 items after validation, not 257"),
        ({"validate_nodes": ["f" * 65]}, "params.validate_nodes.0: String should have at most 64 characters"),
        ({"validate_nodes": [f"f0.{i}@1" for i in range(255)] + ["f0.7@1"]},
         "params.validate_nodes[255]: repeats an earlier entry"),
    ],
)
def test_attribution_graph_params_are_bounded(change: dict[str, Any], line: str) -> None:
    assert _error(**{**GRAPH, **change}) == line


def test_duplicates_are_found_with_a_set() -> None:
    values: list[str | int] = [*range(100_000), "x", 99_999]
    assert _duplicate(values) == 100_001  # linear: a list scan would take minutes here
    assert _duplicate(["1", 1]) is None


@pytest.mark.parametrize(
    "change,line",
    [
        ({"clean": ["a"] * 1025}, "task.clean: 1025 entries exceed the limit of 1024 (CIRCUITD_MAX_PROMPTS)"),
        ({"correct": ["c"] * 1025},
         "task.correct: 1025 entries exceed the limit of 1024 (CIRCUITD_MAX_PROMPTS)"),
        ({"clean": [[1] * 513]}, "task.clean.0: 513 entries exceed the limit of 512 (CIRCUITD_MAX_TOKENS)"),
        ({"clean": [[1, -3]]}, "task.clean.0: token id -3 is outside 0..2147483647"),
        ({"corrupted": [[2**31]]}, "task.corrupted.0: token id 2147483648 is outside 0..2147483647"),
        ({"clean": ["w " * 8193]},
         "task.clean.0: 16386 characters exceed the limit of 16384 (32 per token of CIRCUITD_MAX_TOKENS)"),
        ({"correct": [["c"] * 1025]}, "task.correct.0: 1025 entries exceed the limit of 1024"),
        ({"incorrect": ["d" * 257]},
         "task.incorrect.0: 257 characters exceed the limit of 256 for one token"),
        ({"incorrect": [2**31]}, "task.incorrect.0: token id 2147483648 is outside 0..2147483647"),
        ({"name": "n" * 129}, "task.name: String should have at most 128 characters"),
        ({"description": "d" * 4097}, "task.description: String should have at most 4096 characters"),
        ({"answer_position": 10**6},
         "task.answer_position: 1000000 is outside -512..511 (CIRCUITD_MAX_TOKENS)"),
        ({"answer_position": [0] * 1025},
         "task.answer_position: 1025 entries exceed the limit of 1024 (CIRCUITD_MAX_PROMPTS)"),
    ],
)
def test_inline_tasks_are_bounded(change: dict[str, Any], line: str) -> None:
    assert _error(model="random:tiny", task={**INLINE, **change}) == line


def test_the_cli_task_params_go_through_the_generator_model() -> None:
    args = build_parser().parse_args([
        "discover", "--model", "random:tiny", "--task", "random", "--task-param", "length=12",
        "--task-param", "metric=kl", "--out", "x.json",
    ])
    assert _spec_from_args(args, "eap", {}).task_params == {"length": 12, "metric": "kl"}
    for flags, message in [
        (["--task-param", "length"], "--task-param: expected NAME=VALUE, got 'length'"),
        (["--task-param", "length=3", "--task-param", "length=4"], "--task-param: 'length' is given twice"),
        (["--task-param", "length=9999"],
         "task_params.length: 9999 exceeds the limit of 512 (CIRCUITD_MAX_TOKENS)"),
        (["--task-param", "size=3"], "task_params.size: Extra inputs are not permitted"),
    ]:
        args = build_parser().parse_args(
            ["discover", "--model", "random:tiny", "--task", "random", *flags, "--out", "x.json"])
        with pytest.raises(CircuitdError) as err:
            _spec_from_args(args, "eap", {})
        assert str(err.value) == message


def test_the_cli_refuses_an_oversized_task_param_in_one_line(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "circuitd.cli", "discover", "--model", "random:tiny", "--task", "random",
         "--task-param", "length=1000000000", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "circuitd: error: task_params.length: 1000000000 exceeds the limit of 512 (CIRCUITD_MAX_TOKENS)"]
    assert not (tmp_path / "x.json").exists()
