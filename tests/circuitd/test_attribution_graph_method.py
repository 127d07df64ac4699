"""The attribution-graph method end to end on a random model with random transcoders: the job
spec, discover, the stored graph (re-pruning, queries, Neuronpedia layout) and validation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from pydantic import ValidationError

from circuitd.access import full_access
from circuitd.discover import discover
from circuitd.errors import CircuitdError
from circuitd.methods import param_owners
from circuitd.spec import JobSpec
from circuitd.transcoders import random_transcoders, save
from graphs import from_node_link, to_node_link
from graphs.attribution_networkx import from_networkx, graph_parts
from graphs.attribution_queries import logit_nodes, paths_to_logit, reprune, top_features
from graphs.neuronpedia import to_neuronpedia, validate_neuronpedia

PROMPT = [1, 5, 9, 33, 2, 7]
TOP_N_ERROR = f"top_n: only for {', '.join(param_owners('top_n'))}, not attribution-graph"


@pytest.fixture(scope="module", autouse=True)
def _own_user():
    """These jobs read a transcoder directory outside any model root: the machine's own user's jobs."""
    with full_access():
        yield


@pytest.fixture(scope="module")
def tc_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tc")
    save(random_transcoders(4, 256, 48, "transcoder", "jumprelu", True, seed=3), path)
    return str(path)


@pytest.fixture(scope="module")
def result(tc_dir):
    spec = JobSpec(model="random:small@0", method="attribution-graph", prompt=PROMPT, transcoders=tc_dir)
    return spec, discover(spec)


def _stored(result):
    """The full graph as the service stores it and reads it back."""
    return from_node_link(json.loads(json.dumps(to_node_link(result.full_graph))))


def test_spec_rules():
    base = dict(model="random:small", method="attribution-graph")
    with pytest.raises(ValidationError, match="prompt: attribution-graph takes a prompt or a task"):
        JobSpec(**base)
    with pytest.raises(ValidationError, match="prompt: attribution-graph takes a prompt or a task"):
        JobSpec(**base, prompt="a b", task="ioi")
    with pytest.raises(ValidationError, match="prompt: empty"):
        JobSpec(**base, prompt=" ")
    with pytest.raises(ValidationError, match="target_tokens and logit_diff"):
        JobSpec(**base, prompt=[1, 2], target_tokens=[3], logit_diff=[1, 2])
    with pytest.raises(ValidationError, match="node_threshold"):
        JobSpec(**base, prompt=[1, 2], node_threshold=1.5)
    with pytest.raises(ValidationError, match=r"params.max_feature_nodes\n.*100000 exceeds the limit"):
        JobSpec(**base, prompt=[1, 2], max_feature_nodes=100_000)
    with pytest.raises(ValidationError, match="prompt: only for attribution-graph, not eap-ig"):
        JobSpec(model="random:small", task="random", prompt="x")
    with pytest.raises(ValidationError, match="transcoders: only for attribution-graph, not acdc"):
        JobSpec(model="random:small", task="random", method="acdc", transcoders="/tmp")
    with pytest.raises(ValidationError, match=re.escape(TOP_N_ERROR)):
        JobSpec(**base, prompt=[1, 2], top_n=5)
    with pytest.raises(ValidationError, match=r"target_tokens\[1\]: repeats an earlier entry"):
        JobSpec(**base, prompt=[1, 2], target_tokens=[5, 5])
    with pytest.raises(ValidationError, match=r"logit_diff\[1\]: repeats"):
        JobSpec(**base, prompt=[1, 2], logit_diff=["a", "a"])
    with pytest.raises(ValidationError, match=r"validate_nodes\[1\]: repeats"):
        JobSpec(**base, prompt=[1, 2], validate_nodes=["x", "x"])
    with pytest.raises(ValidationError, match=r"params.max_n_logits\n.*1000 exceeds the limit of 64"):
        JobSpec(**base, prompt=[1, 2], max_n_logits=1000)
    with pytest.raises(ValidationError, match="validate_scale"):
        JobSpec(**base, prompt=[1, 2], validate_scale=float("nan"))
    # a stored spec (every field written out) validates again, for either family
    for spec in (JobSpec(**base, prompt=[1, 2]), JobSpec(model="random:small", task="random", method="acdc")):
        assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec
    with pytest.raises(ValidationError, match="task: required"):
        JobSpec(model="random:small")


def test_metrics_and_graphs_agree(result):
    spec, r = result
    m = r.metrics
    assert r.graph.graph["format"] == r.full_graph.graph["format"] == "circuitd.attribution-graph/1"
    full = from_networkx(_stored(r))
    scores = full.scores()
    assert m["replacement_score"] == pytest.approx(scores["replacement_score"], rel=1e-12)
    assert m["completeness_score"] == pytest.approx(scores["completeness_score"], rel=1e-12)
    assert m["n_nodes"] == r.graph.number_of_nodes() and m["n_edges"] == r.graph.number_of_edges()
    assert m["n_nodes_total"] == len(full.nodes) and m["n_features"] == m["n_active_features"]
    n_targets = m["n_features"] + sum(n.kind == "logit" for n in full.nodes)
    assert m["backward_passes"] == m["backward_passes_floor"] == -(-n_targets // spec.batch_size)
    g = r.full_graph.graph
    assert g["prompt_ids"] == PROMPT and g["method"] == "attribution-graph" and g["model"] == "random:small@0"
    assert g["prompt"] == " ".join(str(i) for i in PROMPT)
    top = max((n for n in full.nodes if n.kind == "logit"), key=lambda n: n.prob)
    assert m["top_logit"]["token_id"] == top.index


def test_reprune_from_storage_needs_no_recomputation(result, tc_dir):
    spec, r = result
    stored = _stored(r)
    again = reprune(stored)  # the stored thresholds: read off the stored form, nothing recomputed
    assert json.dumps(to_node_link(again)) == json.dumps(to_node_link(r.graph))
    assert "adjacency" not in again.graph and not again.graph["full"]
    recomputed = reprune(stored, stored.graph["node_threshold"] + 1e-12)  # through the matrix
    assert set(recomputed.nodes) == set(r.graph.nodes) and set(recomputed.edges) == set(r.graph.edges)
    looser = reprune(stored, 0.9, 0.99)
    assert looser.number_of_nodes() >= again.number_of_nodes() and "adjacency" not in looser.graph
    spec2 = spec.replace(node_threshold=0.9, edge_threshold=0.99)
    fresh = discover(spec2)
    assert set(fresh.graph.nodes) == set(looser.nodes) and set(fresh.graph.edges) == set(looser.edges)


def test_queries(result):
    _, r = result
    stored = _stored(r)
    feats = top_features(stored, 5)
    infl = [d["influence"] for _, d in stored.nodes(data=True) if d["kind"] == "feature"]
    infl.sort(reverse=True)
    assert [f["influence"] for f in feats] == infl[:5]
    pruned = reprune(stored)
    logit = max(logit_nodes(pruned), key=lambda k: pruned.nodes[k]["prob"])
    out = paths_to_logit(pruned, logit, limit=50)
    shares = [p["share"] for p in out["paths"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    for p in out["paths"]:
        assert p["nodes"][-1] == logit and pruned.in_degree(p["nodes"][0]) == 0
        assert all(pruned.has_edge(a, b) for a, b in zip(p["nodes"], p["nodes"][1:], strict=False))
    with pytest.raises(KeyError):
        paths_to_logit(pruned, feats[0]["id"])


def test_neuronpedia_from_storage(result):
    _, r = result
    stored = _stored(r)
    g = stored.graph
    doc = to_neuronpedia(stored, "s", g["prompt"], g["prompt_tokens"])
    assert validate_neuronpedia(doc) == []
    assert {n["node_id"] for n in doc["nodes"]} == set(r.graph.nodes)


def test_validation_in_the_job(result, tc_dir):
    spec, r = result
    feats = top_features(_stored(r), 2)
    chosen = [f["id"] for f in feats]
    out = discover(spec.replace(validate_nodes=chosen, validate_scale=1.001))
    v = out.metrics["validation"]
    assert v["nodes"] == chosen and v["scale"] == 1.001
    assert len(v["targets"]) == sum(1 for _, d in r.full_graph.nodes(data=True) if d["kind"] == "logit")
    for t in v["targets"]:
        assert t["actual_direct"] == pytest.approx(t["predicted_direct"], abs=1e-4)
        assert t["actual"] == pytest.approx(t["predicted"], abs=2e-5, rel=1e-2)
    with pytest.raises(CircuitdError, match=r"validate_nodes\[0\]: no node 'nope'"):
        discover(spec.replace(validate_nodes=["nope"]))


def test_graph_parts_of_a_pruned_graph(result):
    _, r = result
    nodes, a = graph_parts(r.graph)
    assert len(nodes) == r.graph.number_of_nodes() and np.count_nonzero(a) == r.graph.number_of_edges()
    with pytest.raises(ValueError, match="pruned part"):
        from_networkx(r.graph)


def test_max_feature_nodes_in_the_spec(result, tc_dir):
    spec, r = result
    capped = discover(spec.replace(max_feature_nodes=20, batch_size=8))
    m = capped.metrics
    assert m["n_features"] == 20 < m["n_active_features"] == r.metrics["n_active_features"]
    n_logits = sum(1 for _, d in capped.full_graph.nodes(data=True) if d["kind"] == "logit")
    assert m["backward_passes"] == -(-n_logits // 8) + -(-20 // 8)


def test_targets_that_tokenize_alike_are_refused():
    from circuitd.attribution.explain import target_kwargs
    from circuitd.errors import TaskError
    from circuitd.models.registry import load_model

    model = load_model("zoo:synth")
    base = dict(model="zoo:synth", method="attribution-graph", prompt="a b")
    spec = JobSpec(**base, target_tokens=["Mary", " Mary"])
    with pytest.raises(TaskError, match=r"target_tokens\[1\]: the same token as target_tokens\[0\]"):
        target_kwargs(spec.params, model)
    spec = JobSpec(**base, logit_diff=[" Mary", "John"])
    correct, incorrect = target_kwargs(spec.params, model)["logit_diff"]
    assert correct != incorrect


def test_stored_form_is_compact_and_exact(result):
    """The stored full graph carries the matrix in a few bytes per entry, exactly."""
    from graphs.attribution_networkx import decode_matrix, encode_matrix, to_networkx

    _, r = result
    full = from_networkx(_stored(r))
    doc = encode_matrix(full.adjacency)
    assert np.array_equal(decode_matrix(json.loads(json.dumps(doc))), full.adjacency)
    stored_bytes = len(json.dumps(to_node_link(r.full_graph)))
    links_bytes = len(json.dumps(to_node_link(to_networkx(full, all_edges=True))))
    assert r.full_graph.number_of_edges() == r.metrics["n_edges"]  # links: the pruned edges only
    assert stored_bytes < links_bytes / 3
    with pytest.raises(ValueError, match="unknown encoding"):
        decode_matrix({**doc, "encoding": "x"})
    with pytest.raises(ValueError, match="do not fit the shape"):
        decode_matrix({**doc, "shape": [2, 2]})
