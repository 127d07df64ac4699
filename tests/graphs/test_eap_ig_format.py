"""EAP-IG / MIB graph JSON: round trips on a discovered circuit, hand-written files, bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from graphs import build_edge_circuit, read_eap_ig, to_eap_ig, write_eap_ig
from graphs.eap_ig_format import EapIgConfig, config_of, edge_names, from_eap_ig, is_eap_ig, node_names

TINY = EapIgConfig(n_layers=2, n_heads=4, parallel_attn_mlp=False, d_model=64)


def _edges(g: nx.MultiDiGraph[str]) -> dict[str, tuple[float, bool]]:
    return {d["name"]: (d["score"], d["in_circuit"]) for *_, d in g.edges(data=True)}


@pytest.fixture(scope="module")
def discovered() -> nx.MultiDiGraph[str]:
    """A real circuit: eap on random:tiny@1, task random, every edge kept in or out."""
    from circuitd.discover import discover
    from circuitd.spec import JobSpec

    spec = JobSpec.model_validate(
        {"model": "random:tiny@1", "task": "random", "n_prompts": 6, "method": "eap", "params": {"top_n": 20}}
    )
    graph = discover(spec).full_graph
    assert isinstance(graph, nx.MultiDiGraph)
    return graph


def test_round_trip_discovered(discovered: nx.MultiDiGraph[str], tmp_path: Path) -> None:
    assert config_of(discovered, 64) == TINY
    path = tmp_path / "c.json"
    write_eap_ig(discovered, path, TINY)
    data = json.loads(path.read_text())
    assert set(data) == {"cfg", "nodes", "edges"} and is_eap_ig(data)
    assert data["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 64}
    assert list(data["nodes"]) == node_names(TINY) and list(data["edges"]) == edge_names(TINY)
    assert all(set(e) == {"score", "in_graph"} for e in data["edges"].values())
    back = read_eap_ig(path, TINY)
    want, got = _edges(discovered), _edges(back)
    assert set(got) == set(want) and len(got) == 110
    for name, (score, kept) in want.items():
        assert got[name][1] == kept
        assert got[name][0] == pytest.approx(score, abs=1e-7)
    assert sum(k for _, k in got.values()) == sum(k for _, k in want.values()) > 0
    kept_nodes = {n for name, (_, k) in want.items() if k for n in name.split("<")[0].split("->")}
    assert {n for n, v in data["nodes"].items() if v["in_graph"]} == kept_nodes


def _hand_written() -> dict[str, Any]:
    """A 1-layer, 1-head model in EAP-IG's layout, written from its documentation."""
    edges = {
        "input->a0.h0<q>": {"score": 0.5, "in_graph": True},
        "input->a0.h0<k>": {"score": -0.1, "in_graph": False},
        "input->a0.h0<v>": {"score": None, "in_graph": False},
        "input->m0": {"score": 0.25, "in_graph": True},
        "a0.h0->m0": {"score": 1.5, "in_graph": True},
        "input->logits": {"score": 0.0, "in_graph": False},
        "a0.h0->logits": {"score": -2.0, "in_graph": True},
        "m0->logits": {"score": 3.0, "in_graph": True},
    }
    nodes = {"input": True, "a0.h0": True, "m0": True, "logits": True}  # older EAP-IG: bare bools
    return {"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": False}, "nodes": nodes, "edges": edges}


def test_hand_written_file_reads(tmp_path: Path) -> None:
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(_hand_written()))
    g = read_eap_ig(path, EapIgConfig(1, 1, False, 32))
    assert _edges(g) == {
        "input->a0.h0<q>": (0.5, True), "input->a0.h0<k>": (-0.1, False), "input->a0.h0<v>": (0.0, False),
        "input->m0": (0.25, True), "a0.h0->m0": (1.5, True), "input->logits": (0.0, False),
        "a0.h0->logits": (-2.0, True), "m0->logits": (3.0, True),
    }
    assert g.has_edge("input", "a0.h0", key="q") and g.has_edge("m0", "logits", key=0)
    assert g.graph["source_format"] == "eap-ig"
    nodes = dict(_hand_written()["nodes"])
    assert set(nodes) == set(node_names(EapIgConfig(1, 1)))
    assert set(_hand_written()["edges"]) == set(edge_names(EapIgConfig(1, 1)))


def test_edge_sets_follow_eap_ig() -> None:
    # EAP-IG: an MLP reads its own layer's heads unless parallel_attn_mlp
    assert "a0.h0->m0" in edge_names(EapIgConfig(1, 1))
    assert "a0.h0->m0" not in edge_names(EapIgConfig(1, 1, parallel_attn_mlp=True))
    assert len(edge_names(TINY)) == 110


def test_unsplit_qkv_written_as_three_edges() -> None:
    g = build_edge_circuit(["input->a0.h0", "a0.h0->logits", "input->logits"], [0.5, 1.0, 0.1],
                           [True, True, False], {}, all_edges=True)
    doc = to_eap_ig(g, EapIgConfig(1, 1, attn_only=True))
    assert doc["cfg"]["attn_only"] is True and "m0" not in doc["nodes"]
    assert {k: v["score"] for k, v in doc["edges"].items() if k.startswith("input->a0")} == {
        "input->a0.h0<q>": 0.5, "input->a0.h0<k>": 0.5, "input->a0.h0<v>": 0.5}


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda d: d["edges"].update({"a0.h0->a0.h0<q>": {"score": 1.0, "in_graph": True}}),
         "edges.a0.h0->a0.h0<q>: not an edge"),
        (lambda d: d["nodes"].update({"a5.h0": True}), "nodes.a5.h0: not a node"),
        (lambda d: d["cfg"].update({"n_heads": "two"}), "cfg.n_heads: expected a positive integer"),
        (lambda d: d["edges"]["m0->logits"].update({"score": "big"}), "edges.m0->logits.score"),
        (lambda d: d["edges"]["m0->logits"].pop("in_graph"), "edges.m0->logits: expected in_graph"),
        (lambda d: d.pop("cfg"), "cfg: missing"),
    ],
)
def test_bad_files_are_one_line(tmp_path: Path, change: Any, needle: str) -> None:
    doc = _hand_written()
    change(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=None) as err:
        read_eap_ig(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)) and needle in msg, msg


@pytest.mark.parametrize(
    "model,field",
    [(EapIgConfig(2, 1), "cfg.n_layers: 1 does not match the model (2)"),
     (EapIgConfig(1, 1, True), "cfg.parallel_attn_mlp: false does not match the model (true)")],
)
def test_cfg_must_match_the_model(model: EapIgConfig, field: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        from_eap_ig(_hand_written(), "hand.json", model)
    assert str(err.value) == f"hand.json: {field}"
