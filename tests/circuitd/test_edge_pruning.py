"""Edge Pruning: the known circuit of the copy model, faithfulness on zoo:synth IOI measured by
the shared evaluator, seeded reproducibility, progress and cancel, the CLI and an API job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from circuitd.discover import discover
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError
from circuitd.evaluate import Evaluator
from circuitd.methods import METHODS
from circuitd.methods.edge_pruning import EdgePruningParams
from circuitd.methods.edge_pruning_scores import score_edge_pruning, target_edge_count
from circuitd.progress import Cancelled
from circuitd.settings import get_settings
from circuitd.spec import JobSpec
from tests.circuitd.test_cli import circuitd
from tests.support.models import COPY_CIRCUIT, copy_model, copy_task, method_context
from tests.support.service import Api, deployment, ensure_redis


def _kept(graph: EdgeGraph, keep: torch.Tensor) -> set[str]:
    return {name for name, k in zip(graph.edge_names, keep.tolist(), strict=True) if k}


@pytest.mark.parametrize("relaxation,metric", [("hard-concrete", "logit_diff"), ("sigmoid", "kl")])
def test_copy_model_gives_exactly_its_circuit(relaxation: str, metric: str) -> None:
    """Three of the copy model's 29 edges carry the first token to the logits; trained for 3
    edges, the masks keep exactly those, every other mask is below 1/2 and the circuit is as
    faithful as the model."""
    model = copy_model()
    graph = EdgeGraph(model.shape, True)
    ctx = MethodContext(model, graph, copy_task(metric), metric, "resample", batch_size=8)
    params = EdgePruningParams.model_validate({"target_edges": 3, "steps": 200, "relaxation": relaxation})
    result = score_edge_pruning(ctx, params)
    assert result.keep is not None and graph.n_edges == 29
    assert _kept(graph, result.keep) == COPY_CIRCUIT
    assert result.info["masks_above_half"] == 3 and result.info["final_faithfulness_loss"] < 0.05
    assert Evaluator(ctx).summary(result.keep)["faithfulness"] == pytest.approx(1.0, abs=1e-6)
    # the scores rank the circuit first, so a top_n selection of them picks the same edges
    top3 = torch.sort(result.scores, descending=True, stable=True).indices[:3]
    assert {graph.edge_names[i] for i in top3.tolist()} == COPY_CIRCUIT


def test_zoo_synth_ioi_reaches_its_faithfulness_at_five_percent() -> None:
    """On zoo:synth IOI (1519 edges, 64 prompts) the 76-edge circuit (5%), measured by the
    workflow's evaluator, has faithfulness 0.79 where it was tuned (EAP's top 76 edges: 0.44,
    EAP-IG's: 0.69); the bound below leaves room for other thread counts. The issue's goal
    of 0.9 at 5% is not reached."""
    common = {"model": "zoo:synth", "task": "ioi", "batch_size": 16, "curve": False}
    spec = JobSpec.model_validate({**common, "method": "edge-pruning", "steps": 300, "target_edges": 76})
    found = discover(spec).metrics
    assert found["n_edges"] == 76 and found["n_edges_total"] == 1519 and found["target_edges"] == 76
    assert found["faithfulness"] >= 0.7
    eap = discover(JobSpec.model_validate({**common, "method": "eap", "top_n": 76})).metrics
    assert eap["n_edges"] <= 76 and found["faithfulness"] > eap["faithfulness"] + 0.2


def _tiny(**kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and circuit of 30 steps on random:tiny (110 edges)."""
    ctx = method_context("random:tiny@0", metric="logit_diff", n=6, batch_size=3, dtype="float32")
    params = EdgePruningParams.model_validate({"steps": 30, "target_edges": 10, **kw})
    result = score_edge_pruning(ctx, params)
    assert result.keep is not None
    return result.scores, result.keep


def test_same_seed_same_scores_other_seed_other_scores() -> None:
    first, first_keep = _tiny(mask_seed=7)
    again, again_keep = _tiny(mask_seed=7)
    other, _ = _tiny(mask_seed=8)
    assert torch.equal(first, again) and torch.equal(first_keep, again_keep)
    assert int(first_keep.sum()) == 10
    assert (first - other).abs().max() > 1e-3  # the seed is the hard-concrete noise's


def test_sigmoid_masks_need_no_seed() -> None:
    a, _ = _tiny(relaxation="sigmoid", mask_seed=1)
    b, _ = _tiny(relaxation="sigmoid", mask_seed=2)
    assert torch.equal(a, b)


def test_progress_and_cancel() -> None:
    ctx = method_context("random:tiny@0", metric="logit_diff", n=6, batch_size=3, dtype="float32")
    seen: list[tuple[float, str]] = []
    ctx.progress = lambda f, stage: seen.append((f, stage))
    score_edge_pruning(ctx, EdgePruningParams(steps=20, target_edges=10))
    assert [f for f, _ in seen] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert seen[-1][1] == "training masks: step 20/20"

    seen.clear()
    asked = iter(range(100))
    ctx.should_stop = lambda: next(asked) == 7  # the 8th step is asked to stop
    with pytest.raises(Cancelled):
        score_edge_pruning(ctx, EdgePruningParams(steps=20, target_edges=10))
    assert [f for f, _ in seen] == [0.0, 0.25]  # steps 1..7 ran: one report, after step 5


def test_target_and_limits(settings_env: pytest.MonkeyPatch) -> None:
    assert target_edge_count(1519, EdgePruningParams()) == 75  # at most 5% by default
    assert target_edge_count(1519, EdgePruningParams(target_sparsity=0.95)) == 75
    assert target_edge_count(1519, EdgePruningParams(target_sparsity=0.5)) == 759
    assert target_edge_count(110, EdgePruningParams()) == 16  # 5% would be 5 edges: the floor
    assert target_edge_count(12, EdgePruningParams()) == 12
    assert target_edge_count(1519, EdgePruningParams(target_edges=30)) == 30
    with pytest.raises(CircuitdError, match="target_edges: 2000 exceeds the graph's 1519 edges"):
        target_edge_count(1519, EdgePruningParams(target_edges=2000))
    with pytest.raises(ValidationError, match="give at most one"):
        EdgePruningParams(target_edges=10, target_sparsity=0.9)
    settings_env.setenv("CIRCUITD_MAX_MASK_STEPS", "50")
    get_settings.cache_clear()
    with pytest.raises(ValidationError, match="CIRCUITD_MAX_MASK_STEPS"):
        EdgePruningParams(steps=51)
    assert METHODS["edge-pruning"].params is EdgePruningParams


def test_cli_discover(tmp_path: Path) -> None:
    out = tmp_path / "circuit.json"
    run = circuitd(
        "discover", "--method", "edge-pruning", "--model", "zoo:synth", "--task", "ioi", "--n-prompts", "8",
        "--steps", "10", "--target-edges", "20", "--no-curve", "--out", str(out),
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    assert len(doc["links"]) == 20 and doc["graph"]["metrics"]["target_edges"] == 20
    assert doc["graph"]["method"] == "edge-pruning" and doc["graph"]["params"]["steps"] == 10


@pytest.mark.service
def test_api_job(tmp_path: Path) -> None:
    ensure_redis()
    spec = {
        "model": "random:tiny", "task": "random", "method": "edge-pruning", "n_prompts": 6,
        "steps": 20, "target_edges": 10, "curve": False,
    }
    with deployment(tmp_path, no_auth=True) as svc:
        api = Api(svc.url, None)
        r = api.submit(spec)
        assert r.status_code == 202, r.text
        done = api.wait(r.json()["id"])
        circuit = api.http.get(f"/v1/jobs/{done['id']}/graph").json()
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0
    assert done["metrics"]["n_edges"] == 10 and done["metrics"]["n_edges_total"] == 110
    assert len(circuit["links"]) == 10 and circuit["graph"]["method"] == "edge-pruning"
    assert circuit["graph"]["metrics"]["target_edges"] == 10


@pytest.mark.parametrize("name", ["known-copy", "known-induction", "known-xor"])
def test_the_default_target_keeps_a_small_models_known_circuit(name: str) -> None:
    """The default target's floor: 5% of these 29- and 46-edge graphs is one or two edges, which
    collapsed the masks (faithfulness 0); 16 edges hold each known circuit, and the trained
    circuit keeps it whole."""
    from circuitd.discover import discover
    from circuitd.models.zoo_known import known_circuit_path, shipped_task
    from circuitd.roc import KnownCircuit

    known = KnownCircuit.read(known_circuit_path(name))
    task = shipped_task(name)
    spec = JobSpec.model_validate(
        {"model": f"zoo:{name}", "task": task, "method": "edge-pruning", "params": {"curve": False}}
    )
    result = discover(spec)
    kept = {d["name"] for *_, d in result.graph.edges(data=True)}
    assert result.metrics["target_edges"] == 16
    assert set(known.edges) <= kept, sorted(set(known.edges) - kept)
    assert result.metrics["faithfulness"] == pytest.approx(1.0, abs=1e-3)
