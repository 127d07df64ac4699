"""The Neuronpedia layout of the hand-built attribution graph, and the schema check."""

from __future__ import annotations

import copy
import json

from graphs import from_node_link, to_node_link
from graphs.attribution_networkx import to_networkx
from graphs.neuronpedia import to_neuronpedia, validate_neuronpedia
from tests.graphs.test_attribution import TOL, TOTAL, hand_adjacency, hand_graph

NODE_KEYS = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit",
             "jsNodeId", "clerp", "influence", "activation"}


def hand_document() -> dict:
    return to_neuronpedia(hand_graph(), "hand-graph", "The cat", ["The", " cat"], node_threshold=0.8)


def test_hand_graph_layout() -> None:
    doc = hand_document()
    assert validate_neuronpedia(doc) == []
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    assert doc["metadata"] == {"slug": "hand-graph", "scan": "", "prompt_tokens": ["The", " cat"],
                               "prompt": "The cat", "node_threshold": 0.8, "schema_version": 1}
    assert doc["qParams"] == {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                              "sg_pos": ""}
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert all(set(n) == NODE_KEYS for n in doc["nodes"])
    # F1 (0_7_1) is pruned at 0.8, as in test_prune_by_hand.
    assert list(nodes) == ["0_5_1", "1_3_1", "0_E_1", "E_10_0", "E_20_1", "3_30_1", "3_40_1"]
    assert {n: d["layer"] for n, d in nodes.items()} == {
        "0_5_1": "0", "1_3_1": "1", "0_E_1": "0", "E_10_0": "E", "E_20_1": "E", "3_30_1": "3", "3_40_1": "3"}
    assert {n: d["feature_type"] for n, d in nodes.items()} == {
        "0_5_1": "cross layer transcoder", "1_3_1": "cross layer transcoder",
        "0_E_1": "mlp reconstruction error", "E_10_0": "embedding", "E_20_1": "embedding",
        "3_30_1": "logit", "3_40_1": "logit"}
    assert [nodes[n]["feature"] for n in nodes] == [5, 3, -1, 0, 1, 30, 40]
    assert [nodes[n]["jsNodeId"] for n in nodes] == ["0_5-0", "1_3-0", "0_E_1", "E_10-0", "E_20-1", "L_30-1",
                                                     "L_40-1"]
    assert nodes["3_30_1"]["is_target_logit"] and not nodes["3_40_1"]["is_target_logit"]
    assert nodes["3_30_1"]["token_prob"] == 0.5 and nodes["3_30_1"]["clerp"] == 'Output " sat" (p=0.500)'
    assert nodes["0_5_1"]["activation"] == 1.0 and nodes["0_E_1"]["activation"] is None
    # influence = running share at the node's rank: T0 first, then F2, E, F0, T1.
    assert abs(nodes["E_10_0"]["influence"] - 0.46078125 / TOTAL) < TOL
    assert abs(nodes["0_5_1"]["influence"] - (0.46078125 + 0.25 + 0.1875 + 0.15625) / TOTAL) < TOL
    assert nodes["3_30_1"]["influence"] is None
    a = hand_adjacency()
    links = {(link["source"], link["target"]): link["weight"] for link in doc["links"]}
    assert links == {
        ("E_10_0", "0_5_1"): 3.9, ("0_5_1", "1_3_1"): 5.0, ("0_E_1", "1_3_1"): 2.0, ("1_3_1", "3_30_1"): 2.0,
        ("0_E_1", "3_30_1"): -1.0, ("E_20_1", "3_30_1"): 1.0, ("E_10_0", "3_40_1"): 4.0,
    }
    assert a[0, 4] == 3.9  # weights are the signed adjacency, A[target, source]
    json.dumps(doc, allow_nan=False)  # plain JSON


def test_other_inputs_give_the_same_document() -> None:
    graph = hand_graph()
    doc = hand_document()
    stored = from_node_link(json.loads(json.dumps(to_node_link(to_networkx(graph, all_edges=True)))))
    assert to_neuronpedia(stored, "hand-graph", "The cat", ["The", " cat"]) == doc
    parts = (hand_adjacency(), graph.nodes, 2)
    assert to_neuronpedia(parts, "hand-graph", "The cat", ["The", " cat"]) == doc
    loose = to_neuronpedia(graph, "s", "The cat", ["The", " cat"], node_threshold=1.0, edge_threshold=1.0,
                           clerps={"0_7_1": "cat feature"})
    assert validate_neuronpedia(loose) == []
    assert {n["node_id"]: n["clerp"] for n in loose["nodes"]}["0_7_1"] == "cat feature"
    assert len(loose["links"]) == 12 and loose["metadata"]["node_threshold"] == 1.0


def test_broken_document_reports_each_problem() -> None:
    doc = copy.deepcopy(hand_document())
    doc["nodes"][1]["node_id"] = "0_5_1"  # duplicate of nodes[0]
    doc["nodes"][2]["layer"] = 0  # an int, not a string
    doc["links"].append({"source": "0_5_1", "target": "9_9_9", "weight": 1.0})
    del doc["metadata"]["prompt"]
    assert validate_neuronpedia(doc) == [
        "metadata: missing 'prompt'",
        "nodes[1].node_id: duplicate '0_5_1'",
        "nodes[2].layer: expected str, got int",
        # '1_3_1' no longer names a node once nodes[1] was renamed
        "links[1].target: '1_3_1' is not a node id",
        "links[2].target: '1_3_1' is not a node id",
        "links[3].source: '1_3_1' is not a node id",
        "links[7].target: '9_9_9' is not a node id",
    ]


def test_schema_types() -> None:
    doc = copy.deepcopy(hand_document())
    doc["nodes"][0]["ctx_idx"] = 5
    doc["nodes"][3]["is_target_logit"] = 0
    doc["nodes"][4]["feature"] = True
    doc["links"][0]["weight"] = float("nan")
    doc["qParams"]["supernodes"] = [["name", 3]]
    doc["metadata"]["node_threshold"] = 80
    del doc["qParams"]["sg_pos"]
    doc["extra"] = {"allowed": True}
    assert validate_neuronpedia(doc) == [
        "metadata.node_threshold: 80 is not within [0, 1]",
        "qParams: missing 'sg_pos'",
        "qParams.supernodes[0][1]: expected str, got int",
        "nodes[0].ctx_idx: 5 is not a position of the 2 prompt tokens",
        "nodes[3].is_target_logit: expected bool, got int",
        "nodes[4].feature: expected int, got bool",
        "links[0].weight: not a finite number (nan)",
    ]
    assert validate_neuronpedia([]) == ["document: expected an object, got list"]
    assert validate_neuronpedia({"nodes": {}}) == [
        "document: missing 'metadata'", "document: missing 'qParams'", "document: missing 'links'",
        "nodes: expected list, got dict",
    ]
