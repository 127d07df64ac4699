import json
import re

import pytest

from graphs import build_edge_circuit, from_node_link, read_json, summarize, to_node_link, write_json
from graphs.formats import EDGE_CIRCUIT_FORMAT

NAMES = ["input->a0.h0<q>", "input->a0.h0<k>", "a0.h0->m1", "m1->logits", "a0.h1->logits"]
SCORES = [0.5, -0.25, 1.0, 2.0, 0.01]
KEEP = [True, True, True, True, False]
META = {"model": "random:tiny", "task": "t", "method": "eap", "params": {"metric": "logit_diff"},
        "versions": {"circuitd": "0"}, "metrics": {"faithfulness": 0.9, "n_edges": 4, "n_edges_total": 5}}


def test_node_link_layout(tmp_path) -> None:
    g = build_edge_circuit(NAMES, SCORES, KEEP, META)
    data = to_node_link(g)
    assert set(data) == {"directed", "multigraph", "graph", "nodes", "links"}
    assert data["directed"] and data["multigraph"]
    assert {n["id"] for n in data["nodes"]} == {"input", "a0.h0", "m1", "logits"}
    heads = [n for n in data["nodes"] if n["id"] == "a0.h0"]
    assert heads[0]["kind"] == "attn_head" and heads[0]["layer"] == 0 and heads[0]["head"] == 0
    links = {link["name"]: link for link in data["links"]}
    assert set(links) == set(NAMES[:4])
    assert links["input->a0.h0<q>"]["key"] == "q" and links["input->a0.h0<k>"]["key"] == "k"
    for link in data["links"]:
        assert {"source", "target", "key", "name", "score", "in_circuit"} <= set(link)
    assert data["graph"]["metrics"]["faithfulness"] == 0.9
    path = tmp_path / "c.json"
    write_json(g, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(data))
    back = read_json(path)
    assert sorted(back.edges(keys=True)) == sorted(g.edges(keys=True))
    assert back.graph == g.graph


def test_all_edges_marks_the_circuit() -> None:
    g = build_edge_circuit(NAMES, SCORES, KEEP, META, all_edges=True)
    flags = {d["name"]: d["in_circuit"] for *_, d in g.edges(data=True)}
    assert flags == dict(zip(NAMES, KEEP, strict=True))
    assert from_node_link(to_node_link(g)).number_of_edges() == 5


def test_summary_mentions_the_figures() -> None:
    text = summarize(build_edge_circuit(NAMES, SCORES, KEEP, META))
    assert "edges: 4 of 5" in text and "faithfulness: 0.9" in text and "m1->logits" in text


def test_every_graph_names_its_format_and_newer_majors_are_refused(tmp_path) -> None:
    g = build_edge_circuit(NAMES, SCORES, KEEP, META)
    data = to_node_link(g)
    assert data["graph"]["format"] == EDGE_CIRCUIT_FORMAT == "circuitd.edge-circuit/1"
    for readable in ("circuitd.edge-circuit/1", "circuitd.edge-circuit/1.3", None):  # None: before versions
        doc = {**data, "graph": {**data["graph"], "format": readable}}
        assert from_node_link(doc).number_of_edges() == 4
    for bad, why in [
        ("circuitd.edge-circuit/2", "newer than this circuitd reads (circuitd.edge-circuit/1)"),
        ("circuitd.attribution-graph/7", "newer than this circuitd reads (circuitd.attribution-graph/1)"),
        ("someone.else/1", "is not a circuitd graph format"),
        ("circuitd.edge-circuit", "has no major version"),
    ]:
        path = tmp_path / "future.json"
        path.write_text(json.dumps({**data, "graph": {**data["graph"], "format": bad}}))
        with pytest.raises(ValueError, match=re.escape(why)) as info:
            read_json(path)
        assert str(info.value).startswith(f"graph.format: '{bad}'") and "\n" not in str(info.value)
