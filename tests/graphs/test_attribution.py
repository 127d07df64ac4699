"""Attribution-graph maths checked against hand computation on an 8-node graph, plus invariants."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from graphs import from_node_link, to_node_link
from graphs.attribution_graph import (
    AttributionGraph,
    Node,
    completeness_score,
    influence,
    logit_weights,
    node_id,
    normalized_abs,
    prune,
    replacement_score,
)
from graphs.attribution_networkx import from_networkx, to_networkx

TOL = 1e-12

# Two layers. F0 and F1 in layer 0, F2 in layer 1, the layer-0 error E, tokens T0 "The" and T1 " cat",
# logits K0 " sat" (p = 0.5) and K1 " ran" (p = 0.3), all read at position 1.
NAMES = ["F0", "F1", "F2", "E", "T0", "T1", "K0", "K1"]
IX = {name: i for i, name in enumerate(NAMES)}
NODES = (
    Node("feature", pos=1, layer=0, index=5, activation=1.0),
    Node("feature", pos=1, layer=0, index=7, activation=2.0),
    Node("feature", pos=1, layer=1, index=3, activation=0.5),
    Node("error", pos=1, layer=0),
    Node("token", pos=0, index=10, token="The"),
    Node("token", pos=1, index=20, token=" cat"),
    Node("logit", pos=1, index=30, prob=0.5, token=" sat"),
    Node("logit", pos=1, index=40, prob=0.3, token=" ran"),
)
# (target, source): A[target, source]
EDGES = {
    ("F0", "T0"): 3.9, ("F0", "T1"): 0.1,
    ("F1", "T0"): 3.0, ("F1", "T1"): -1.0,
    ("F2", "F0"): 5.0, ("F2", "F1"): -1.0, ("F2", "E"): 2.0,
    ("K0", "F2"): 2.0, ("K0", "E"): -1.0, ("K0", "T1"): 1.0,
    ("K1", "F1"): 1.0, ("K1", "T0"): 4.0,
}


def hand_adjacency() -> np.ndarray:
    a = np.zeros((8, 8))
    for (t, s), v in EDGES.items():
        a[IX[t], IX[s]] = v
    return a


def hand_graph() -> AttributionGraph:
    return AttributionGraph(hand_adjacency(), NODES, n_layers=2, prompt="The cat")


def by_name(values: dict[str, float]) -> np.ndarray:
    out = np.zeros(8)
    for name, v in values.items():
        out[IX[name]] = v
    return out


def matrix_by_name(values: dict[tuple[str, str], float]) -> np.ndarray:
    out = np.zeros((8, 8))
    for (t, s), v in values.items():
        out[IX[t], IX[s]] = v
    return out


def edge_names(mask: np.ndarray) -> set[tuple[str, str]]:
    """Kept edges as (source, target) names."""
    return {(NAMES[s], NAMES[t]) for t, s in zip(*np.nonzero(mask), strict=True)}


def power_series(a_hat: np.ndarray, w: np.ndarray, terms: int) -> np.ndarray:
    """w·(Â + Â² + … + Â^terms), one power at a time."""
    total = np.zeros_like(w)
    current = w.copy()
    for _ in range(terms):
        current = current @ a_hat
        total += current
    return total


# Â by hand: each row's |weights| over their sum.
A_HAT = matrix_by_name({
    ("F0", "T0"): 3.9 / 4.0, ("F0", "T1"): 0.1 / 4.0,
    ("F1", "T0"): 0.75, ("F1", "T1"): 0.25,
    ("F2", "F0"): 5 / 8, ("F2", "F1"): 1 / 8, ("F2", "E"): 2 / 8,
    ("K0", "F2"): 0.5, ("K0", "E"): 0.25, ("K0", "T1"): 0.25,
    ("K1", "F1"): 0.2, ("K1", "T0"): 0.8,
})
# Influence by hand, path by path (w = 0.5 at K0, 0.3 at K1):
#   one step:   F2 = .5·.5 = .25, E ← .5·.25 = .125, T1 ← .5·.25 = .125, F1 ← .3·.2 = .06, T0 ← .3·.8 = .24
#   via F2:     F0 = .25·5/8 = .15625, F1 += .25/8 = .03125 (F1 = .09125), E += .25·2/8 = .0625 (E = .1875)
#   via F0:     T0 += .15625·.975, T1 += .15625·.025;  via F1: T0 += .09125·.75, T1 += .09125·.25
INFLUENCE = by_name({
    "F0": 0.15625, "F1": 0.09125, "F2": 0.25, "E": 0.1875,
    "T0": 0.24 + 0.15625 * 0.975 + 0.09125 * 0.75,  # 0.46078125
    "T1": 0.125 + 0.15625 * 0.025 + 0.09125 * 0.25,  # 0.15171875
})
TOTAL = 1.2975  # the sum of INFLUENCE


def test_normalized_abs_by_hand() -> None:
    a_hat = normalized_abs(hand_adjacency())
    np.testing.assert_allclose(a_hat, A_HAT, rtol=0, atol=TOL)
    assert not a_hat[[IX["E"], IX["T0"], IX["T1"]]].any()  # rows without inputs stay 0


def test_influence_by_hand_and_by_powers() -> None:
    w = logit_weights(NODES)
    np.testing.assert_array_equal(w, by_name({"K0": 0.5, "K1": 0.3}))
    got = influence(hand_adjacency(), w)
    np.testing.assert_allclose(got, INFLUENCE, rtol=0, atol=TOL)
    # Â is nilpotent (longest path T0→F0→F2→K0 has 3 edges), so 8 powers are the whole series.
    np.testing.assert_allclose(got, power_series(A_HAT, w, 8), rtol=0, atol=TOL)
    assert got[IX["K0"]] == 0.0 and got[IX["K1"]] == 0.0  # a logit's own weight is not its influence
    assert abs(got.sum() - TOTAL) < TOL
    # every path ends at a token or an error, so together they hold all of w
    assert abs(got[[IX["E"], IX["T0"], IX["T1"]]].sum() - 0.8) < TOL


def test_prune_by_hand() -> None:
    result = prune(hand_adjacency(), NODES)  # 0.8 and 0.98
    # Ranked: T0 .46078, F2 .25, E .1875, F0 .15625, T1 .15172, F1 .09125. Running share:
    # .3551, .5478, .6923, .8127 ≥ .8 -> stop after F0: F1 is dropped (T1 is kept anyway).
    np.testing.assert_allclose(result.influence, INFLUENCE, rtol=0, atol=TOL)
    running = np.cumsum([0.46078125, 0.25, 0.1875, 0.15625, 0.15171875, 0.09125]) / TOTAL
    order = ["T0", "F2", "E", "F0", "T1", "F1"]
    np.testing.assert_allclose(result.cumulative[[IX[n] for n in order]], running, rtol=0, atol=TOL)
    assert [NAMES[i] for i in np.flatnonzero(result.node_mask)] == ["F0", "F2", "E", "T0", "T1", "K0", "K1"]

    # Without F1, F2's inputs are F0 (5/7) and E (2/7), and K1's only input is T0.
    # Influence on that graph: F2 .25, F0 .25·5/7, E .125 + .25·2/7, T0 .3 + F0·.975, T1 .125 + F0·.025.
    f0 = 0.25 * 5 / 7
    pruned_influence = by_name({
        "F0": f0, "F2": 0.25, "E": 0.125 + 0.25 * 2 / 7, "T0": 0.3 + f0 * 0.975, "T1": 0.125 + f0 * 0.025,
    })
    np.testing.assert_allclose(result.pruned_influence, pruned_influence, rtol=0, atol=TOL)
    # Edge score Â'[t, s]·(influence'_t + w_t).
    scores = matrix_by_name({
        ("K1", "T0"): 1.0 * 0.3,
        ("K0", "F2"): 0.5 * 0.5, ("K0", "E"): 0.25 * 0.5, ("K0", "T1"): 0.25 * 0.5,
        ("F2", "F0"): 5 / 7 * 0.25, ("F2", "E"): 2 / 7 * 0.25,
        ("F0", "T0"): 0.975 * f0, ("F0", "T1"): 0.025 * f0,
    })
    np.testing.assert_allclose(result.edge_scores, scores, rtol=0, atol=TOL)
    # Ranked .3, .25, .17857, .17411, .125, .125, .07143, .00446 of 1.22857: the running share is
    # .9564 before E→F2 and .9964 after it, so only T1→F0 falls below 98%.
    assert edge_names(result.edge_mask) == {
        ("T0", "K1"), ("F2", "K0"), ("E", "K0"), ("T1", "K0"), ("F0", "F2"), ("E", "F2"), ("T0", "F0"),
    }
    assert result.n_nodes == 7 and result.n_edges == 7


def test_prune_drops_a_feature_left_without_outgoing_edges() -> None:
    result = prune(hand_adjacency(), NODES, node_threshold=1.0, edge_threshold=0.9)
    # Every node stays at 1.0, so the edge scores use the full graph: F1's outgoing edges score
    # F1→K1 .2·.3 = .06 and F1→F2 .25/8 = .03125, its incoming T0→F1 .75·.09125 = .0684. Of the total
    # 1.2975 the first 8 edges (down to E→F2 .0625, running share .9091) reach 90%: T0→F1 is kept,
    # both outgoing edges are not, so F1 is dropped and T0→F1 with it.
    np.testing.assert_allclose(result.pruned_influence, INFLUENCE, rtol=0, atol=TOL)
    assert abs(result.edge_scores[IX["F1"], IX["T0"]] - 0.75 * 0.09125) < TOL
    assert not result.node_mask[IX["F1"]]
    assert edge_names(result.edge_mask) == {
        ("T0", "K1"), ("F2", "K0"), ("E", "K0"), ("T1", "K0"), ("F0", "F2"), ("E", "F2"), ("T0", "F0"),
    }


def test_replacement_and_completeness_by_hand() -> None:
    a = hand_adjacency()
    # tokens .46078125 + .15171875 = .6125, errors .1875
    assert abs(replacement_score(a, NODES) - 0.6125 / 0.8) < TOL
    # Nodes with inputs and their weight influence + w: F0 .15625, F1 .09125, F2 .25, K0 .5, K1 .3.
    # A quarter of F2's and of K0's input comes from E.
    weights = [0.15625, 0.09125, 0.25, 0.5, 0.3]
    complete = 0.15625 + 0.09125 + 0.25 * 0.75 + 0.5 * 0.75 + 0.3
    assert abs(completeness_score(a, NODES) - complete / sum(weights)) < TOL
    # circuit-tracer's variant also counts E, T0, T1 (no inputs) as complete: + .8 above and below.
    inputless = completeness_score(a, NODES, count_inputless=True)
    assert abs(inputless - (complete + 0.8) / (sum(weights) + 0.8)) < TOL
    assert hand_graph().scores() == {
        "replacement_score": replacement_score(a, NODES),
        "completeness_score": completeness_score(a, NODES),
    }


def test_closed_form_equals_power_series() -> None:
    rng = np.random.default_rng(0)
    n = 40
    a = np.tril(rng.normal(size=(n, n)), k=-1) * (rng.random((n, n)) < 0.4)
    w = np.zeros(n)
    w[-4:] = rng.dirichlet(np.ones(4)) * 0.9
    a_hat = normalized_abs(a)
    series = power_series(a_hat, w, n)  # strictly lower triangular: Â^n = 0
    assert not (w @ np.linalg.matrix_power(a_hat, n)).any()
    np.testing.assert_allclose(influence(a, w), series, rtol=0, atol=TOL)
    # No node order is assumed: shuffling the nodes shuffles the influence.
    perm = rng.permutation(n)
    np.testing.assert_allclose(influence(a[np.ix_(perm, perm)], w[perm]), series[perm], rtol=0, atol=TOL)
    # A cycle that leaks credit converges to the same closed form; one that keeps it all cannot.
    cyc = a.copy()
    cyc[5, 30] = 0.5
    assert (w @ np.linalg.matrix_power(normalized_abs(cyc), n)).any()  # no longer nilpotent
    long_series = power_series(normalized_abs(cyc), w, 4000)
    np.testing.assert_allclose(influence(cyc, w), long_series, rtol=0, atol=1e-10)
    trap = np.zeros((3, 3))
    trap[0, 1] = trap[1, 0] = trap[2, 0] = 1.0
    with pytest.raises(ValueError, match="diverges"):
        influence(trap, np.array([0.0, 0.0, 1.0]))


def random_graph(seed: int, n_layers: int = 3, n_pos: int = 4, per_layer: int = 3) -> AttributionGraph:
    """A random attribution graph in the usual layout; every feature reads some token."""
    rng = np.random.default_rng(seed)
    nodes = [Node("feature", pos=int(rng.integers(n_pos)), layer=layer, index=k, activation=1.0)
             for layer in range(n_layers) for k in range(per_layer)]
    nodes += [Node("error", pos=p, layer=layer) for layer in range(n_layers) for p in range(n_pos)]
    nodes += [Node("token", pos=p, index=100 + p) for p in range(n_pos)]
    probs = [0.6, 0.25, 0.1]
    nodes += [Node("logit", pos=n_pos - 1, index=200 + k, prob=p) for k, p in enumerate(probs)]
    n = len(nodes)
    a = np.zeros((n, n))
    depth = {i: (nd.layer if nd.kind in ("feature", "error") else -1 if nd.kind == "token" else n_layers)
             for i, nd in enumerate(nodes)}
    for t, target in enumerate(nodes):
        if target.kind not in ("feature", "logit"):
            continue
        for s, source in enumerate(nodes):
            if source.kind == "logit" or depth[s] >= depth[t] + (target.kind == "feature"):
                continue
            if source.kind == "token" or rng.random() < 0.35:
                a[t, s] = rng.normal()
    dead = next(i for i, nd in enumerate(nodes) if nd.kind == "feature" and nd.layer == 1)
    a[:, dead] = 0.0  # a feature with inputs but no output: zero influence
    return AttributionGraph(a, tuple(nodes), n_layers)


def test_threshold_one_keeps_every_node_with_influence() -> None:
    graph = random_graph(1)
    result = graph.prune(1.0, 1.0)
    prunable = np.array([n.kind in ("feature", "error") for n in graph.nodes])
    np.testing.assert_array_equal(result.node_mask[prunable], result.influence[prunable] > 0)
    assert result.node_mask[~prunable].all()
    assert (result.influence[prunable] == 0).any() and (result.influence[prunable] > 0).any()
    # every edge of non-zero score survives too
    np.testing.assert_array_equal(result.edge_mask, result.edge_scores > 0)


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.node_mask, b.node_mask)
    np.testing.assert_array_equal(a.edge_mask, b.edge_mask)
    np.testing.assert_array_equal(a.edge_scores, b.edge_scores)
    np.testing.assert_array_equal(a.influence, b.influence)


def test_repruning_a_stored_graph_matches_a_fresh_one() -> None:
    graph = random_graph(2)
    before = graph.adjacency.copy()
    first = graph.prune()
    other = graph.prune(0.5, 0.9)
    assert other.n_nodes < first.n_nodes
    assert_same(graph.prune(), first)
    np.testing.assert_array_equal(graph.adjacency, before)
    with pytest.raises(ValueError):
        graph.adjacency[0, 0] = 1.0  # the stored matrix is read-only
    fresh = AttributionGraph(before.copy(), graph.nodes, graph.n_layers)
    assert_same(fresh.prune(0.5, 0.9), other)
    # Stored as node-link JSON with all edges, read back, rebuilt and pruned again.
    stored = json.loads(json.dumps(to_node_link(to_networkx(graph, first, all_edges=True))))
    back = from_networkx(from_node_link(stored))
    assert back.nodes == graph.nodes
    np.testing.assert_array_equal(back.adjacency, before)
    assert_same(back.prune(0.5, 0.9), other)
    with pytest.raises(ValueError, match="pruned part"):
        from_networkx(to_networkx(graph, first))


def test_networkx_ids_and_attributes() -> None:
    graph = hand_graph()
    g = to_networkx(graph)
    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == {"0_5_1", "1_3_1", "0_E_1", "E_10_0", "E_20_1", "3_30_1", "3_40_1"}
    f2 = g.nodes["1_3_1"]
    assert f2["kind"] == "feature" and f2["layer"] == 1 and f2["pos"] == 1 and f2["feature"] == 3
    assert f2["activation"] == 0.5 and f2["node_id"] == "1_3_1" and abs(f2["influence"] - 0.25) < TOL
    assert g.nodes["E_10_0"]["layer"] == -1 and g.nodes["3_30_1"]["layer"] == 2
    assert g.nodes["3_30_1"]["prob"] == 0.5 and g.nodes["0_E_1"]["kind"] == "error"
    assert g["0_5_1"]["1_3_1"]["weight"] == 5.0 and g["0_E_1"]["3_30_1"]["weight"] == -1.0
    assert g.number_of_edges() == 7 and not g.has_edge("E_20_1", "0_5_1")
    assert abs(g.graph["replacement_score"] - 0.765625) < TOL and g.graph["n_edges_total"] == 12
    full = to_networkx(graph, all_edges=True)
    assert full.number_of_nodes() == 8 and full.number_of_edges() == 12
    assert not full.nodes["0_7_1"]["in_circuit"] and not full["E_20_1"]["0_5_1"]["in_circuit"]


def test_error_ids_cannot_collide() -> None:
    # A layer-0 feature whose index equals the error's layer: circuit-tracer's `0_{layer}_{pos}` for the
    # error would be "0_1_2", this feature's id.
    feature = Node("feature", pos=2, layer=0, index=1)
    error = Node("error", pos=2, layer=1)
    assert node_id(feature, 2) == "0_1_2" and node_id(error, 2) == "1_E_2"
    assert node_id(Node("token", pos=2, index=1), 2) == "E_1_2"
    assert node_id(Node("logit", pos=2, index=1, prob=1.0), 2) == "3_1_2"
    with pytest.raises(ValueError, match="share an id"):
        AttributionGraph(np.zeros((2, 2)), (feature, feature), 2)


def test_bad_inputs_are_refused() -> None:
    a = hand_adjacency()
    with pytest.raises(ValueError, match="ordered"):
        prune(a, NODES[::-1])
    with pytest.raises(ValueError, match="node_threshold"):
        prune(a, NODES, node_threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        prune(a[:7, :7], NODES)
    with pytest.raises(ValueError, match="probability"):
        Node("logit", pos=0, index=1)
    with pytest.raises(ValueError, match="layer"):
        Node("error", pos=0)
