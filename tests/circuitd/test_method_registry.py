"""The method contract: one registry feeds the spec, the CLI flags, the API catalog and discover;
a new method is one registry entry."""

from __future__ import annotations

import argparse

import pytest
import torch
from pydantic import ValidationError

from api.routes.catalog import methods as catalog_methods
from circuitd.cli import build_parser
from circuitd.cli.method_flags import add_method_flags, flag_of, method_params
from circuitd.discover import discover
from circuitd.edge_context import MethodContext, MethodResult
from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError
from circuitd.evaluate import Evaluator
from circuitd.jobs import build_task
from circuitd.methods import METHODS
from circuitd.methods.contract import EdgeMethod, EdgeParams
from circuitd.models.registry import load_model
from circuitd.spec import JobSpec, spec_error_line


class RampParams(EdgeParams):
    offset: float = 0.0


PATH = ("input->a0.h0<v>", "a0.h0->logits")


def ramp_score(ctx: MethodContext, params: RampParams) -> MethodResult:
    """The edges of ``PATH`` score 1 + offset, every other edge less: the top-2 circuit is ``PATH``."""
    scores = torch.linspace(0, 0.5, ctx.graph.n_edges)
    scores[ctx.graph.index_of(list(PATH))] = 1.0
    return MethodResult(scores + params.offset)


RAMP = EdgeMethod("ramp", "a test method", RampParams, "tests.circuitd.test_method_registry:ramp_score")


def _error(**spec: object) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    return spec_error_line(info.value)


def test_every_parameter_is_a_flag_and_in_the_catalog() -> None:
    parser = argparse.ArgumentParser()
    add_method_flags(parser)
    flags = set(parser.format_usage().replace("[", " ").replace("]", " ").split())
    described = {m["name"]: m["params"]["properties"] for m in catalog_methods()["methods"]}
    assert list(described) == list(METHODS)
    for method in METHODS.values():
        for name, info in method.params.model_fields.items():
            assert flag_of(name, info) in flags
            assert name in described[method.name]
    assert described["acdc"]["prefilter_method"]["default"] == "eap-ig"  # one default, everywhere


def test_cli_flags_become_the_methods_params() -> None:
    args = build_parser().parse_args([
        "discover", "--model", "zoo:synth", "--method", "acdc", "--tau", "0.1", "--tau", "0.2", "--abs",
        "--no-curve", "--top-n", "7", "--out", "x.json",
    ])
    assert method_params(args, "acdc") == {"tau": [0.1, 0.2], "abs_diff": True, "curve": False, "top_n": 7}
    with pytest.raises(CircuitdError, match="--tau: only for acdc, not eap"):
        method_params(args, "eap")
    args = build_parser().parse_args(["discover", "--model", "zoo:synth", "--method", "attribution-graph",
                                      "--prompt", "[0, 42, 54]", "--logit-diff", "a", "b", "--out", "x"])
    assert method_params(args, "attribution-graph") == {"prompt": [0, 42, 54], "logit_diff": ["a", "b"]}


def test_spec_takes_params_nested_or_at_the_top_and_names_the_field() -> None:
    base = {"model": "zoo:synth", "task": "ioi"}
    nested = JobSpec.model_validate({**base, "method": "acdc", "params": {"tau": [0.02], "top_n": 5}})
    flat = JobSpec.model_validate({**base, "method": "acdc", "tau": 0.02, "top_n": 5})
    assert nested == flat and flat.params.model_dump()["tau"] == [0.02]
    assert JobSpec.model_validate(flat.model_dump(mode="json")) == flat  # a stored spec reads back
    assert _error(**base, method="eap", tau=[1.0]) == "tau: only for acdc, not eap"
    assert _error(**base, method="acdc", params={"tau": [-1.0]}) == (
        "params.tau: every tau must be finite and >= 0 (got -1.0)")
    assert _error(**base, method="acdc", tau=[1.0], params={"tau": [2.0]}) == (
        "tau: given both at the top level and in params")
    assert _error(**base, method="nope").startswith("method: 'nope' is not one of eap,")
    assert _error(**base, method=["eap"]).startswith("method: ['eap'] is not one of")
    assert _error(**base, params={"bogus": 1}) == "params.bogus: Extra inputs are not permitted"


def test_a_new_method_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "ramp", RAMP)
    spec = JobSpec.model_validate({"model": "random:tiny", "task": "random", "n_prompts": 4, "method": "ramp",
                                   "top_n": 2, "offset": 1.0, "curve": False})
    assert isinstance(spec.params, RampParams) and spec.params.offset == 1.0
    result = discover(spec)
    assert result.scores is not None and result.keep is not None
    assert float(result.scores.max()) == 2.0 and float(result.scores.min()) == 1.0
    assert {name for _, _, name in result.graph.edges(data="name")} == set(PATH)
    model = load_model("random:tiny")  # the workflow evaluated the method's circuit as the evaluator does
    task = build_task(spec, model)
    evaluator = Evaluator(MethodContext(model, EdgeGraph(model.shape), task, task.metric, batch_size=32))
    assert result.metrics["n_edges"] == 2
    expected = evaluator.summary(result.keep)["faithfulness"]
    assert result.metrics["faithfulness"] == pytest.approx(expected, abs=1e-6)
    assert result.graph.graph["method"] == "ramp" and result.graph.graph["params"]["offset"] == 1.0
    args = build_parser().parse_args(["discover", "--model", "random:tiny", "--method", "ramp",
                                      "--offset", "2.5", "--out", "x.json"])
    assert method_params(args, "ramp") == {"offset": 2.5}
