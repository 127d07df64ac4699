"""Exact patching, EAP-IG over activations, edge pruning, position-aware edges and pruned
circuits (``prune_to``) as jobs over real HTTP, on a real Celery worker: each runs to its graph
with progress, and running patching and edge-pruning jobs are cancelled between trials and
steps."""

from __future__ import annotations

import time

import pytest

from tests.support.service import TINY, Api, Service

pytestmark = pytest.mark.service  # real Redis, a Celery worker and uvicorn over HTTP


def test_patching_job_runs_and_a_long_one_cancels(service: Service, alice: Api) -> None:
    long = {"model": "random:small", "task": "random", "method": "patching", "n_prompts": 256,
            "batch_size": 2, "curve": False}  # 1519 edges x 256 prompts: minutes of trials
    running = alice.submit(long).json()["id"]
    alice.wait(running, check=lambda j: j["status"] == "running" and j["progress"] > 0)
    assert alice.http.post(f"/v1/jobs/{running}/cancel").status_code == 202
    t0 = time.monotonic()
    assert alice.wait(running, timeout=60)["status"] == "cancelled" and time.monotonic() - t0 < 30

    r = alice.submit(TINY | {"method": "patching"})
    assert r.status_code == 202, r.text
    done = alice.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0, done
    assert done["metrics"]["n_edges_total"] == 110
    graph = alice.http.get(f"/v1/jobs/{done['id']}/graph", params={"all_edges": "true"}).json()
    assert graph["graph"]["method"] == "patching" and len(graph["links"]) == 110
    assert graph["graph"]["metrics"]["incremental"] is True


def test_eap_ig_act_job(service: Service, alice: Api) -> None:
    r = alice.submit(TINY | {"method": "eap-ig-act", "ig_steps": 3})
    assert r.status_code == 202, r.text
    done = alice.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0, done
    assert 0 < done["metrics"]["n_edges"] <= 20
    graph = alice.http.get(f"/v1/jobs/{done['id']}/graph").json()
    assert graph["graph"]["method"] == "eap-ig-act" and graph["graph"]["params"]["ig_steps"] == 3
    assert alice.submit(TINY | {"method": "eap-ig-act", "ig_steps": 0}).status_code == 422


def test_edge_pruning_job_runs_and_a_long_one_cancels(service: Service, alice: Api) -> None:
    long = TINY | {"method": "edge-pruning", "steps": 10_000, "n_prompts": 64, "batch_size": 64}
    running = alice.submit(long).json()["id"]
    alice.wait(running, check=lambda j: j["status"] == "running" and j["progress"] > 0.05)
    assert alice.http.post(f"/v1/jobs/{running}/cancel").status_code == 202
    t0 = time.monotonic()
    assert alice.wait(running, timeout=60)["status"] == "cancelled" and time.monotonic() - t0 < 30

    r = alice.submit(TINY | {"method": "edge-pruning", "steps": 40, "target_edges": 12, "top_n": None})
    assert r.status_code == 202, r.text
    done = alice.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0, done
    stored = alice.http.get(f"/v1/jobs/{done['id']}/graph").json()["graph"]["metrics"]
    assert done["metrics"]["n_edges"] == stored["n_edges"] == stored["target_edges"] == 12


def test_position_aware_job_names_its_positions(service: Service, alice: Api) -> None:
    r = alice.submit(TINY | {"method": "eap", "positions": True})
    assert r.status_code == 202, r.text
    done = alice.wait(r.json()["id"])
    assert done["status"] == "succeeded", done
    graph = alice.http.get(f"/v1/jobs/{done['id']}/graph").json()
    names = graph["graph"]["edge_layout"]["positions"]
    assert done["metrics"]["n_edges_total"] == 110 * len(names)
    assert graph["links"] and all(
        link["name"].endswith(f"@{link['position']}") and link["position_name"] == names[link["position"]]
        for link in graph["links"]
    )
    refused = alice.submit(TINY | {"method": "acdc", "positions": True})
    assert refused.status_code == 422 and "this method does not split edges by position" in refused.text


def test_pruned_circuit_job(service: Service, alice: Api) -> None:
    r = alice.submit(TINY | {"prune_to": 8, "refine_rounds": 2})
    assert r.status_code == 202, r.text
    done = alice.wait(r.json()["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0, done
    stored = alice.http.get(f"/v1/jobs/{done['id']}/graph").json()
    m = stored["graph"]["metrics"]
    assert done["metrics"]["n_edges"] == m["n_edges"] == len(stored["links"]) == 8
    assert m["prune_sizes"][-1] == 8 and m["prune_sizes"][0] <= 20
    assert m["refine_faithfulness"][0] == pytest.approx(m["prune_faithfulness"][-1])
    refused = alice.submit(TINY | {"prune_to": 20})
    assert refused.status_code == 422 and "prune_to: 20 is not below top_n (20)" in refused.text
    empty = alice.wait(alice.submit(TINY | {"top_n": None, "threshold": 1e9, "prune_to": 3}).json()["id"])
    assert empty["status"] == "failed"
    assert "prune_to: 3 is not below the selected circuit's 0 edges" in empty["error"]
