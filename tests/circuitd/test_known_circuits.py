"""The known-circuit zoo models (:mod:`circuitd.models.zoo_known`) do what their cards say;
EAP and EAP-IG rank their circuits first; :mod:`circuitd.roc` is the pairwise AUC; and
``circuitd evaluate --against`` prints it."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from circuitd.batch import TaskBatch
from circuitd.cli import main
from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError
from circuitd.evaluate import Evaluator, trapezoid
from circuitd.known_circuits import differences
from circuitd.methods.eap import EAPIGParams, EAPParams
from circuitd.methods.eap_scores import score_eap, score_eap_ig
from circuitd.models.adapter import ModelAdapter
from circuitd.models.ids import ZOO_DIR
from circuitd.models.registry import load_model
from circuitd.models.zoo_known import KNOWN_MODELS, known_circuit_path, shipped_task
from circuitd.roc import KnownCircuit, against_known, auc, roc
from circuitd.tasks import resolve_task
from circuitd.tasks.base import Task

NAMES = list(KNOWN_MODELS)


@dataclass
class Setup:
    name: str
    model: ModelAdapter
    graph: EdgeGraph
    task: Task
    ctx: MethodContext
    evaluator: Evaluator
    known: KnownCircuit
    card: dict[str, Any]

    def mask(self, edges: list[str] | tuple[str, ...]) -> torch.Tensor:
        keep = torch.zeros(self.graph.n_edges, dtype=torch.bool)
        keep[self.graph.index_of(list(edges))] = True
        return keep


@pytest.fixture(scope="module", params=NAMES)
def setup(request: pytest.FixtureRequest) -> Setup:
    name = request.param
    model = load_model(f"zoo:{name}")
    graph = EdgeGraph(model.shape)
    task = resolve_task(shipped_task(name), None, model.shape.d_vocab, model.shape.n_ctx)
    ctx = MethodContext(model, graph, task, task.metric)
    card = json.loads((ZOO_DIR / name / "card.json").read_text())
    known = KnownCircuit.read(known_circuit_path(name))
    return Setup(name, model, graph, task, ctx, Evaluator(ctx), known, card)


def _faithfulness(s: Setup, keep: torch.Tensor) -> list[float]:
    ev = s.evaluator
    return ((ev.metric_of(keep) - ev.metric_empty) / (ev.metric_full - ev.metric_empty)).tolist()


@pytest.mark.parametrize("name", NAMES)
def test_rebuild_gives_the_shipped_files(name: str) -> None:
    """Weights tensor for tensor, config, task and known circuit byte for byte, the card's
    measured figures within its tolerance."""
    assert differences(name, ZOO_DIR / name) == []


def test_files_small_and_circuit_file_consistent(setup: Setup) -> None:
    folder = ZOO_DIR / setup.name
    assert (folder / "model.safetensors").stat().st_size < 200_000
    doc = json.loads(known_circuit_path(setup.name).read_text())
    assert doc["format"] == "circuitd.known-circuit/1" and doc["model"] == f"zoo:{setup.name}"
    assert tuple(doc["edges"]) == KNOWN_MODELS[setup.name].circuit
    # the nodes are every source and destination of the edges, in the graph's node order
    ends = {e.split("->")[0] for e in doc["edges"]} | {e.split("->")[1].split("<")[0] for e in doc["edges"]}
    assert doc["nodes"] == [n for n in setup.graph.nodes if n in ends]


def test_forward_answers_every_prompt(setup: Setup) -> None:
    """The mechanism the card describes: the clean answer wins on every prompt, by the card's
    logit difference, and the corrupted prompt's answer wins on its prompt."""
    batch = TaskBatch.from_task(setup.task)
    with torch.no_grad():
        clean = setup.model.run(batch.clean)[:, -1]
        corrupted = setup.model.run(batch.corrupted)[:, -1]
    correct = torch.tensor([c[0] for c in setup.task.correct])
    incorrect = torch.tensor([c[0] for c in setup.task.incorrect])
    assert torch.equal(clean.argmax(-1), correct)
    assert torch.equal(corrupted.argmax(-1), incorrect)
    diff = clean.gather(-1, correct[:, None]) - clean.gather(-1, incorrect[:, None])
    assert float(diff.mean()) == pytest.approx(setup.card["measured"]["metric_full"], abs=1e-3)
    assert float(diff.min()) > 0.98 * setup.card["measured"]["metric_full"]  # every prompt


def test_known_circuit_alone_is_faithful_and_no_part_of_it_is(setup: Setup) -> None:
    """The known circuit has faithfulness 1 (±1e-5); every proper subset of it, including the
    empty circuit, stays below 0.6; the empty circuit is the corrupted run (the other answer
    wins as strongly)."""
    ev = setup.evaluator
    assert ev.metric_full == pytest.approx(setup.card["measured"]["metric_full"], abs=1e-3)
    assert ev.metric_empty == pytest.approx(-ev.metric_full, rel=1e-3)
    edges = setup.known.edges
    subsets = [[e for e, kept in zip(edges, bits, strict=True) if kept]
               for bits in itertools.product([False, True], repeat=len(edges))]
    faith = _faithfulness(setup, torch.stack([setup.mask(s) for s in subsets]))
    assert faith[-1] == pytest.approx(1.0, abs=1e-5)  # all of them
    assert max(faith[:-1]) < 0.6
    card_drops = setup.card["measured"]["faithfulness_without_edge"]
    for i, edge in enumerate(edges):  # the subsets that lack exactly one edge
        without = faith[(2 ** len(edges) - 1) - 2 ** (len(edges) - 1 - i)]
        assert without == pytest.approx(card_drops[edge], abs=1e-3), edge


def test_every_other_edge_is_inert(setup: Setup) -> None:
    """Ablating any one edge outside the known circuit leaves the full model's metric as it was."""
    others = [e for e in setup.graph.edge_names if e not in setup.known.edges]
    full = torch.ones(setup.graph.n_edges, dtype=torch.bool)
    masks = torch.stack([full & ~setup.mask([e]) for e in others])
    assert len(others) == setup.graph.n_edges - len(setup.known.edges) >= 20
    assert _faithfulness(setup, masks) == pytest.approx([1.0] * len(others), abs=1e-5)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_eap_family_ranks_the_known_circuit_first(setup: Setup, method: str) -> None:
    """AUROC 1.0 at edge and node level: every edge outside the circuit scores exactly 0 (its
    destination reads nothing its source changes), every known edge does not."""
    score = score_eap(setup.ctx, EAPParams()) if method == "eap" else score_eap_ig(setup.ctx, EAPIGParams())
    scores = dict(zip(setup.graph.edge_names, score.scores.tolist(), strict=True))
    report = against_known(setup.graph, setup.known, scores)
    assert (report.edge.auc, report.node.auc) == (1.0, 1.0)
    assert all(scores[e] == 0.0 for e in scores if e not in setup.known.edges)
    assert min(abs(scores[e]) for e in setup.known.edges) > 1e-3
    assert report.edge.n_positive == len(setup.known.edges)
    assert report.node.n_positive == len(setup.known.nodes or ())


def _pairwise_auc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a positive > score of a negative), ties counting one half: every pair."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(20))
def test_auc_is_the_pairwise_probability_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 60)
    scores = [float(rng.randint(0, rng.choice([2, 5, 30]))) for _ in range(n)]  # many ties
    positive = [rng.random() < 0.3 for _ in range(n)]
    positive[0], positive[1] = True, False
    expected = _pairwise_auc(scores, positive)
    assert auc(scores, positive) == pytest.approx(expected, abs=1e-12)
    curve = roc(scores, positive)
    assert curve.auc == pytest.approx(expected, abs=1e-12)
    assert trapezoid(curve.fpr, curve.tpr) == pytest.approx(expected, abs=1e-12)  # the points agree
    assert (curve.fpr[0], curve.tpr[0], curve.fpr[-1], curve.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert len(curve.fpr) == len(set(scores)) + 1  # one point per distinct score
    assert all(a <= b for a, b in itertools.pairwise(curve.fpr))
    assert all(a <= b for a, b in itertools.pairwise(curve.tpr))


def test_auc_fixed_cases() -> None:
    assert auc([3.0, 2.0, 1.0, 0.0], [True, True, False, False]) == 1.0
    assert auc([0.0, 1.0, 2.0, 3.0], [True, True, False, False]) == 0.0
    assert auc([1.0, 1.0, 1.0, 1.0], [True, False, True, False]) == 0.5
    assert auc([2.0, 1.0, 1.0, 0.0], [True, True, False, False]) == 0.875
    assert roc([2.0, 1.0, 1.0, 0.0], [True, True, False, False]).fpr == [0.0, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="1 positive, 0 negative"):
        auc([1.0], [True])


def _induction() -> tuple[EdgeGraph, KnownCircuit, dict[str, float]]:
    graph = EdgeGraph(load_model("zoo:known-induction").shape)
    known = KnownCircuit.read(known_circuit_path("known-induction"))
    return graph, known, {e: float(e in known.edges) for e in graph.edge_names}


@pytest.mark.parametrize("seed", range(5))
def test_node_roc_ranks_nodes_by_their_largest_edge(seed: int) -> None:
    """Node scores are the max |score| over each node's edges (in or out), read here from the
    edge names alone; the node AUC is their pairwise AUC."""
    graph, known, _ = _induction()
    rng = random.Random(seed)
    scores = {e: rng.choice([0.0, -1.0, 2.0, -3.0]) for e in graph.edge_names}
    best: dict[str, float] = dict.fromkeys(graph.nodes, 0.0)
    for name, score in scores.items():
        src, dst = name.split("->")
        for node in (src, dst.split("<")[0]):
            best[node] = max(best[node], abs(score))
    report = against_known(graph, known, scores)
    positive = [n in (known.nodes or ()) for n in best]
    assert report.node.auc == pytest.approx(_pairwise_auc(list(best.values()), positive), abs=1e-12)
    edge_positive = [e in known.edges for e in scores]
    edge_scores = [abs(v) for v in scores.values()]
    assert report.edge.auc == pytest.approx(_pairwise_auc(edge_scores, edge_positive), abs=1e-12)


def test_readable_errors() -> None:
    graph, known, scores = _induction()
    doc = known.to_json(graph)
    wrong_edge = KnownCircuit.from_json({**doc, "edges": ["input->a0.h0", *doc["edges"][1:]], "nodes": None})
    with pytest.raises(CircuitdError) as info:
        against_known(graph, wrong_edge, scores, "g.json")
    assert str(info.value) == (
        "known circuit edge 'input->a0.h0' is not an edge of zoo:known-induction's edge graph "
        "(29 edges, q/k/v split)"
    )
    lacking = {e: s for e, s in scores.items() if e != "a1.h0->logits"}
    with pytest.raises(CircuitdError) as info:
        against_known(graph, known, lacking, "g.json")
    assert str(info.value) == (
        "g.json: no score for known edge 'a1.h0->logits': it has 28 of 29 edges of "
        "zoo:known-induction (write the graph with discover --all-edges)"
    )
    with pytest.raises(CircuitdError) as info:
        against_known(graph, known, {**scores, "m0->logits": 1.0}, "g.json")
    assert str(info.value).startswith("g.json: edge 'm0->logits' is not in zoo:known-induction's edge graph")
    with pytest.raises(CircuitdError) as info:
        against_known(graph, KnownCircuit.from_json({**doc, "nodes": ["input", "logits"]}), scores)
    assert str(info.value).startswith("known circuit nodes: 'a0.h0' is a node of its edges")
    with pytest.raises(CircuitdError) as info:
        KnownCircuit.from_json({**doc, "format": "other/1"}, "k.json")
    assert str(info.value) == "k.json: format: expected 'circuitd.known-circuit/1', got 'other/1'"


def discover_graph(name: str, method: str, out: Path, *flags: str) -> str:
    """``discover`` on zoo model ``name``'s shipped task, written to ``out``."""
    task = str(ZOO_DIR / name / "task.json")
    assert main(["discover", "--model", f"zoo:{name}", "--task", task, "--method", method, *flags,
                 "--out", str(out)]) == 0
    return str(out)


def evaluate_against(known: str, scores: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``evaluate --against known scores`` prints (it succeeds)."""
    capsys.readouterr()
    assert main(["evaluate", "--against", known, scores]) == 0
    return capsys.readouterr().out


def test_cli_evaluate_against(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """discover --all-edges, then evaluate --against prints the AUC lines (and --json the
    points); a circuit-only graph and another model's known circuit are one-line errors."""
    known = str(known_circuit_path("known-xor"))
    full = discover_graph("known-xor", "eap", tmp_path / "full.json", "--all-edges")
    pruned = discover_graph("known-xor", "eap", tmp_path / "pruned.json")
    out = evaluate_against(known, full, capsys)
    assert "edge AUROC: 1.0000 (4 known, 42 other edges)" in out
    assert "node AUROC: 1.0000 (4 known, 4 other nodes)" in out
    assert "edge ROC (FPR, TPR): (0, 0) " in out
    assert main(["evaluate", "--against", known, full, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["edge"]["auc"] == 1.0 and doc["edge"]["points"][-1] == [1.0, 1.0]
    assert doc["node"]["n_negative"] == 4
    assert main(["evaluate", "--against", known, pruned]) == 2
    assert "(write the graph with discover --all-edges)" in capsys.readouterr().err
    other = str(known_circuit_path("known-induction"))
    assert main(["evaluate", "--against", other, full]) == 2
    assert capsys.readouterr().err.strip() == (
        f"circuitd: error: {full}: a graph of zoo:known-xor, but {other} is a circuit of zoo:known-induction"
    )
    scores_file = tmp_path / "scores.json"
    names = EdgeGraph(load_model("zoo:known-xor").shape).edge_names
    scores_file.write_text(json.dumps({"scores": dict.fromkeys(names, 0.0)}))
    assert "edge AUROC: 0.5000" in evaluate_against(known, str(scores_file), capsys)  # all tied: chance


def test_cli_evaluate_against_ranks_position_aware_scores_by_their_strongest_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = discover_graph("known-copy", "patching", tmp_path / "full.json", "--positions", "--no-curve",
                          "--all-edges")
    out = evaluate_against(str(known_circuit_path("known-copy")), full, capsys)
    assert "each at its strongest position" in out
    assert "edge AUROC: 1.0000 (3 known, 26 other edges)" in out
    assert "node AUROC: 1.0000 (4 known, 2 other nodes)" in out
