"""zoo:synth's shipped transcoders and attribution graphs on it: the card's figures recomputed from
the shipped files, and an IOI graph whose top logit is the right name, written in the Neuronpedia
layout and checked by the schema, then validated by interventions through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from circuitd.models.registry import load_model
from circuitd.transcoders.sources import default_transcoders, load_transcoders
from circuitd.transcoders.train import TrainSettings, agreement, collect, layer_figures, sequences
from graphs import read_json
from graphs.neuronpedia import validate_neuronpedia

pytestmark = pytest.mark.slow  # zoo-scale attribution graphs and CLI runs

CLI = [sys.executable, "-m", "circuitd.cli"]
IOI = "When Mary and John went to the store, John gave a drink to"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def shipped():
    path = default_transcoders("zoo:synth")
    assert path is not None, "zoo:synth ships no transcoders"
    adapter = load_model("zoo:synth")
    card = json.loads((path / "card.json").read_text())
    return adapter, load_transcoders(None, adapter), card, path


def test_shipped_set_is_small_and_complete(shipped):
    _, tset, card, path = shipped
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 20 * 2**20, f"{size} bytes"
    assert tset.n_layers == 4 and tset.d_model == 128 and tset.kind == "transcoder"
    assert (tset.activation, tset.d_tc, tset.has_skip) == (
        card["settings"]["activation"], card["settings"]["d_tc"], card["settings"]["skip"]
    )
    assert (path / "CARD.md").is_file()


def test_card_figures_recomputed_from_the_shipped_files(shipped, capsys):
    """Variance explained >= 0.8 per layer at mean L0 <= 64, replacement top-1 agreement >= 0.8,
    recomputed on the card's held-out draw and equal to the card's figures."""
    adapter, tset, card, _ = shipped
    s = TrainSettings(**card["settings"])
    held = sequences(adapter, s.corpus, s.n_heldout, s.seed + 1_000_003)
    x, y = collect(adapter, held)
    figures = layer_figures(tset, x, y)
    agree = agreement(adapter, tset, held)
    with capsys.disabled():  # the figures belong in the test log
        print(f"\nzoo:synth transcoders: {x.shape[1]} held-out positions")
        for i, f in enumerate(figures):
            print(f"  layer {i}: variance explained {f['fve']:.4f}, mean L0 {f['mean_l0']:.2f}, "
                  f"dead {f['dead_fraction']:.2%}")
        print(f"  replacement top-1 agreement {agree:.4f}")
    for f, c in zip(figures, card["layers"], strict=True):
        assert f["fve"] >= 0.8 and f["mean_l0"] <= 64
        assert f["fve"] == pytest.approx(c["fve"], abs=2e-3)
        assert f["mean_l0"] == pytest.approx(c["mean_l0"], abs=0.05)
    assert agree >= 0.8
    assert agree == pytest.approx(card["replacement_top1_agreement"], abs=2e-3)


def test_ioi_graph_top_logit_neuronpedia_and_validation(tmp_path, capsys):
    out = tmp_path / "ioi.json"
    run = _cli("discover", "--model", "zoo:synth", "--method", "attribution-graph", "--prompt", IOI,
               "--out", str(out))
    graph = read_json(out)
    m = graph.graph["metrics"]
    with capsys.disabled():
        print("\n" + run.stdout.strip().splitlines()[-1])
        print(f"replacement score {m['replacement_score']:.4f}, completeness {m['completeness_score']:.4f}")
    logits = [d for _, d in graph.nodes(data=True) if d["kind"] == "logit"]
    assert max(logits, key=lambda d: d["prob"])["token"].strip() == "Mary"
    assert m["top_logit"]["token"].strip() == "Mary"
    assert 0 < m["replacement_score"] <= 1 and 0 < m["completeness_score"] <= 1
    kinds = {d["kind"] for _, d in graph.nodes(data=True)}
    assert {"feature", "token", "logit"} <= kinds

    npath = tmp_path / "ioi-np.json"
    _cli("discover", "--model", "zoo:synth", "--method", "attribution-graph", "--prompt", IOI,
         "--out", str(npath), "--format", "neuronpedia")
    doc = json.loads(npath.read_text())
    assert validate_neuronpedia(doc) == []
    assert {n["node_id"] for n in doc["nodes"]} == set(graph.nodes)
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids))
    target = [n for n in doc["nodes"] if n["is_target_logit"]]
    assert len(target) == 1 and target[0]["clerp"].startswith('Output "Mary"')

    feats = sorted((k for k, d in graph.nodes(data=True) if d["kind"] == "feature"),
                   key=lambda k: -graph.nodes[k]["influence"])[:2]
    check = _cli("validate-graph", "--graph", str(out), "--node", feats[0], "--node", feats[1],
                 "--scale", "0")
    with capsys.disabled():
        print(check.stdout)
    assert "Mary" in check.stdout and "max |predicted - actual|" in check.stdout


def test_reprune_cli_equals_a_fresh_graph_at_those_thresholds(tmp_path):
    base = ["discover", "--model", "zoo:synth", "--method", "attribution-graph", "--task", "ioi"]
    full, fresh, again = tmp_path / "full.json", tmp_path / "fresh.json", tmp_path / "again.json"
    _cli(*base, "--all-edges", "--out", str(full))
    _cli(*base, "--node-threshold", "0.6", "--edge-threshold", "0.9", "--out", str(fresh))
    run = _cli("reprune", str(full), "--node-threshold", "0.6", "--edge-threshold", "0.9",
               "--out", str(again))
    a, b = read_json(fresh), read_json(again)
    assert set(a.nodes) == set(b.nodes) and set(a.edges) == set(b.edges)
    assert f"{b.number_of_nodes()} nodes, {b.number_of_edges()} edges" in run.stdout
    bad = subprocess.run([*CLI, "reprune", str(fresh), "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "holds only its pruned part" in bad.stderr


def test_validate_graph_uses_the_graphs_convention(tmp_path):
    """A circuit-tracer-convention graph is validated with its own token vectors (token
    embedding only): each token node's predicted direct effect on the logits equals the
    measured one, as it does for circuitd's convention."""
    worst = {}
    for convention in ("circuitd", "circuit-tracer"):
        out = tmp_path / f"{convention}.json"
        _cli("discover", "--model", "zoo:synth", "--method", "attribution-graph", "--task", "ioi",
             "--all-edges", "--convention", convention, "--out", str(out))
        graph = read_json(out)
        assert graph.graph["params"]["convention"] == convention
        token = [k for k, d in graph.nodes(data=True) if d["kind"] == "token"][3]
        run = _cli("validate-graph", "--graph", str(out), "--node", token, "--scale", "0")
        rows = [line.split() for line in run.stdout.splitlines()[2:-1]]
        worst[convention] = max(abs(float(r[-2]) - float(r[-1])) for r in rows)
    assert worst["circuit-tracer"] < 1e-4 and worst["circuitd"] < 1e-4, worst
