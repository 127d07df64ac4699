"""Graph queries stay cheap over real HTTP: ``/paths`` through a dangling node of a top-n circuit
and through a node with exponentially many paths both answer within a second, ``/validate``
takes a bounded node list."""

from __future__ import annotations

import time

import pytest

from graphs import build_edge_circuit, to_node_link
from tests.support.service import TINY, Api, Service

pytestmark = pytest.mark.service

LAYERS, HEADS = 8, 8
DANGLING = f"a{LAYERS - 1}.h0"


def _layer_nodes(layer: int) -> list[str]:
    return [f"a{layer}.h{h}" for h in range(HEADS)] + [f"m{layer}"]


def _model_graph() -> tuple[list[str], list[float]]:
    """Every edge of a GPT-2-like model with 8 layers of 8 heads (a head reads the input and every
    earlier layer; an MLP also its own layer's heads; the logits read everything), scored."""
    names: list[str] = []
    for layer in range(LAYERS):
        earlier = ["input"] + [n for lower in range(layer) for n in _layer_nodes(lower)]
        names += [f"{src}->a{layer}.h{h}" for h in range(HEADS) for src in earlier]
        names += [f"{src}->m{layer}" for src in earlier + _layer_nodes(layer)[:HEADS]]
    names += [f"{src}->logits" for layer in range(LAYERS) for src in _layer_nodes(layer)] + ["input->logits"]
    scores = [((i * 7919) % 1000 + 1) / 1000 for i in range(len(names))]
    return names, scores


@pytest.fixture(scope="module")
def circuit_job(service: Service) -> str:
    """Alice's succeeded job whose circuit is the top-n edges by score with the outputs of
    ``DANGLING`` left out: that node is reached from the input by ~10**8 paths and reaches nothing."""
    names, scores = _model_graph()
    ranked = sorted(range(len(names)), key=lambda i: -scores[i])[: len(names) * 9 // 10]
    keep = set(ranked) - {i for i, n in enumerate(names) if n.startswith(f"{DANGLING}->")}
    keep |= {i for i, n in enumerate(names) if n.startswith(f"{DANGLING.split('.')[0]}.h1->")}
    graph = build_edge_circuit(names, scores, [i in keep for i in range(len(names))],
                               {"model": "synthetic", "metrics": {}}, all_edges=True)
    st = service.store()
    job, _ = st.create_job("alice", TINY, f"{service.prefix}unserved")
    assert st.claim(job.id, "tests:0").action == "run"
    assert st.finish(job.id, "tests:0", {"n_edges": len(keep)}, to_node_link(graph))
    return job.id


def _timed_paths(alice: Api, job_id: str, through: str, **params: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    r = alice.http.get(f"/v1/jobs/{job_id}/graph/paths", params={"through": through, **params}, timeout=10)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return r.json(), elapsed


def test_paths_through_a_dangling_node_answer_at_once(alice: Api, circuit_job: str) -> None:
    assert alice.http.get(f"/v1/jobs/{circuit_job}/graph/top").status_code == 200  # graph loaded
    hood = alice.http.get(f"/v1/jobs/{circuit_job}/graph/nodes/{DANGLING}").json()
    assert hood["in"] and not hood["out"]  # in the circuit, with no way on to the logits
    body, elapsed = _timed_paths(alice, circuit_job, DANGLING)
    assert body == {"node": DANGLING, "paths": [], "truncated": False, "reachable": False, "candidates": 0}
    assert elapsed < 1.0


def test_paths_through_a_node_with_exponentially_many_are_budgeted(alice: Api, circuit_job: str) -> None:
    body, elapsed = _timed_paths(alice, circuit_job, "a4.h1", limit="50")
    assert elapsed < 1.0
    assert body["truncated"] is True and body["reachable"] is True and body["candidates"] == 10_000
    assert len(body["paths"]) == 50
    weakest = [p["min_abs_score"] for p in body["paths"]]
    assert weakest == sorted(weakest, reverse=True)
    assert all(p["nodes"][0] == "input" and p["nodes"][-1] == "logits" and "a4.h1" in p["nodes"]
               for p in body["paths"])


def test_validate_takes_at_most_256_nodes(alice: Api, circuit_job: str) -> None:
    nodes = [f"n{i}" for i in range(257)]
    r = alice.http.post(f"/v1/jobs/{circuit_job}/graph/validate", json={"nodes": nodes})
    assert r.status_code == 422 and r.json()["code"] == "invalid"
    assert r.json()["errors"][0]["field"] == "nodes" and "256" in r.json()["detail"]


@pytest.mark.parametrize("body,field", [
    ({"nodes": ["a0.h0"], "scale": 1e6}, "scale"),  # was a 500: the spec's own bound refused it too late
    ({"nodes": ["x" * 65]}, "nodes[0]"),
])
def test_validate_bounds_its_body(alice: Api, circuit_job: str, body: dict, field: str) -> None:
    r = alice.http.post(f"/v1/jobs/{circuit_job}/graph/validate", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
