"""The API over real HTTP, with a real Celery worker on the real Redis: submit, poll, download, query."""

from __future__ import annotations

import io
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import pytest

from tests.support.service import CLI, ROOT, TINY, Api, Service, long_spec

pytestmark = pytest.mark.service  # real Redis, a Celery worker and uvicorn over HTTP


def _n_jobs(service: Service) -> int:
    return sum(service.store().count_by_status().values())


def test_round_trip_submit_poll_download_query(service: Service, alice: Api, tmp_path) -> None:
    r = alice.submit(TINY)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue"] == f"{service.prefix}cpu"
    done = alice.wait(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0 and done["attempts"] == 1 and done["error"] is None
    m = done["metrics"]
    assert m["n_edges_total"] == 110 and 0 < m["n_edges"] <= 20

    circuit = alice.http.get(f"/v1/jobs/{job['id']}/graph").json()
    assert set(circuit) == {"directed", "multigraph", "graph", "nodes", "links"}
    assert len(circuit["links"]) == m["n_edges"] and all(link["in_circuit"] for link in circuit["links"])
    assert circuit["graph"]["model"] == "random:tiny"
    assert circuit["graph"]["format"] == "circuitd.edge-circuit/1"
    assert circuit["graph"]["metrics"]["n_edges"] == m["n_edges"]
    full = alice.http.get(f"/v1/jobs/{job['id']}/graph", params={"all_edges": "true"}).json()
    assert len(full["links"]) == 110
    graphml = alice.http.get(f"/v1/jobs/{job['id']}/graph", params={"format": "graphml"})
    assert graphml.headers["content-type"].startswith("application/graphml+xml")
    g = nx.read_graphml(io.BytesIO(graphml.content))
    assert g.number_of_edges() == m["n_edges"]

    # The queries agree with the downloaded graph.
    by_score = sorted(circuit["links"], key=lambda link: -abs(link["score"]))
    top = alice.http.get(f"/v1/jobs/{job['id']}/graph/top", params={"n": 3}).json()["edges"]
    assert [e["name"] for e in top] == [link["name"] for link in by_score[:3]]
    node = by_score[0]["target"]
    hood = alice.http.get(f"/v1/jobs/{job['id']}/graph/nodes/{node}").json()
    assert {e["name"] for e in hood["in"]} == {x["name"] for x in circuit["links"] if x["target"] == node}
    assert alice.http.get(f"/v1/jobs/{job['id']}/graph/nodes/nope").status_code == 404
    paths = alice.http.get(f"/v1/jobs/{job['id']}/graph/paths", params={"through": "logits"}).json()
    assert paths["paths"]
    assert all(p["nodes"][0] == "input" and p["nodes"][-1] == "logits" for p in paths["paths"])
    threshold = abs(by_score[4]["score"])
    sub = alice.http.get(f"/v1/jobs/{job['id']}/graph/subgraph", params={"min_score": threshold}).json()
    assert sub["links"] and all(abs(x["score"]) >= threshold for x in sub["links"])
    assert {x["name"] for x in by_score[:5]} <= {x["name"] for x in sub["links"]}
    same = alice.http.get(f"/v1/jobs/{job['id']}/graph/compare/{job['id']}").json()
    assert same["edges"]["jaccard"] == 1.0 and not same["edges"]["only_a"]

    # The CLI client: status and download over HTTP.
    env = service.env() | {"CIRCUITD_API_KEY": service.keys["alice"]}
    out = subprocess.run([*CLI, "status", job["id"], "--url", service.url], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "succeeded" in out.stdout, out.stderr
    dest = tmp_path / "circuit.json"
    out = subprocess.run([*CLI, "download", job["id"], "-o", str(dest), "--url", service.url], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(dest.read_text()) == circuit


def test_submit_with_cli_and_compare_two_jobs(service: Service, alice: Api, tmp_path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(TINY | {"seed": 1}))
    env = service.env() | {"CIRCUITD_API_KEY": service.keys["alice"]}
    args = [*CLI, "submit", str(spec_file), "--wait", "--url", service.url, "--interval", "0.2"]
    out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    second = out.stdout.splitlines()[0]
    assert "succeeded" in out.stdout.splitlines()[-1]
    first = alice.submit(TINY).json()["id"]
    alice.wait(first)
    cmp = alice.http.get(f"/v1/jobs/{first}/graph/compare/{second}").json()
    a = {x["name"] for x in alice.http.get(f"/v1/jobs/{first}/graph").json()["links"]}
    b = {x["name"] for x in alice.http.get(f"/v1/jobs/{second}/graph").json()["links"]}
    assert set(cmp["edges"]["shared"]) == a & b and set(cmp["edges"]["only_a"]) == a - b
    assert cmp["edges"]["jaccard"] == pytest.approx(len(a & b) / len(a | b))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (TINY | {"model": "random:nope"}, "model"),
        (TINY | {"model": ""}, "model"),
        (TINY | {"task": "no_such_task"}, "task"),
        (TINY | {"metric": "accuracy"}, "metric"),
        (TINY | {"method": "magic"}, "method"),
        (TINY | {"n_prompts": 0}, "n_prompts"),
        (TINY | {"n_prompts": 10**6}, "n_prompts"),
        (TINY | {"ig_steps": 10**4}, "ig_steps"),
        (TINY | {"top_n": 5, "threshold": 0.1}, "top_n"),
        (TINY | {"batch_size": "many"}, "batch_size"),
        (TINY | {"colour": "red"}, "colour"),
        ({k: v for k, v in TINY.items() if k != "model"}, "model"),
        (TINY | {"task": {"clean": ["a"], "corrupted": ["b", "c"], "correct": ["x"], "incorrect": ["y"]}},
         "corrupted"),
    ],
)
def test_malformed_spec_is_422_naming_the_field_and_creates_no_job(
    service: Service, alice: Api, body: dict, field: str
) -> None:
    before = _n_jobs(service)
    r = alice.submit(body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert field in problem["detail"], problem
    assert any(field in e["field"] or field in e["message"] for e in problem["errors"])
    assert _n_jobs(service) == before


def test_body_that_is_not_json_is_422(service: Service, alice: Api) -> None:
    before = _n_jobs(service)
    r = alice.http.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert _n_jobs(service) == before


def test_idempotency_key_returns_the_same_job(service: Service, alice: Api, bob: Api) -> None:
    key = f"idem-{time.time_ns()}"
    first = alice.submit(TINY, **{"Idempotency-Key": key})
    again = alice.submit(TINY, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert alice.submit(TINY | {"seed": 7}, **{"Idempotency-Key": key}).status_code == 409
    other = bob.submit(TINY, **{"Idempotency-Key": key})  # keys are per owner
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]

    key2 = f"idem-race-{time.time_ns()}"
    before = _n_jobs(service)
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: alice.submit(TINY, **{"Idempotency-Key": key2}).json()["id"], range(8)))
    assert len(ids) == 1 and _n_jobs(service) == before + 1
    for job_id in (first.json()["id"], other.json()["id"], *ids):
        (alice if job_id != other.json()["id"] else bob).wait(job_id)
    assert alice.job(first.json()["id"])["attempts"] == 1


def test_one_key_cannot_see_anothers_jobs(service: Service, alice: Api, bob: Api) -> None:
    job_id = alice.submit(TINY).json()["id"]
    alice.wait(job_id)
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/graph", f"/v1/jobs/{job_id}/graph/top"):
        assert bob.http.get(path).status_code == 404
    assert bob.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert job_id not in {j["id"] for j in bob.http.get("/v1/jobs", params={"limit": 500}).json()["items"]}
    bob_job = bob.submit(TINY).json()["id"]
    assert alice.http.get(f"/v1/jobs/{job_id}/graph/compare/{bob_job}").status_code == 404
    anonymous = Api(service.url, None)
    assert anonymous.http.get(f"/v1/jobs/{job_id}").status_code == 401
    assert anonymous.submit(TINY).status_code == 401
    assert Api(service.url, "cdk_not-a-key").http.get("/v1/jobs").status_code == 401
    bob.wait(bob_job)


def test_cancel_a_queued_job_and_a_running_job(service: Service, alice: Api) -> None:
    running = alice.submit(long_spec()).json()["id"]
    alice.wait(running, check=lambda j: j["status"] == "running" and j["progress"] > 0)
    queued = alice.submit(TINY).json()["id"]  # one worker, busy: this one waits in the queue
    assert alice.job(queued)["status"] == "queued"
    r = alice.http.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"

    r = alice.http.post(f"/v1/jobs/{running}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    t0 = time.monotonic()
    job = alice.wait(running, timeout=60)
    assert job["status"] == "cancelled" and time.monotonic() - t0 < 30  # uncancelled it would run minutes
    assert alice.http.post(f"/v1/jobs/{running}/cancel").status_code == 409
    assert alice.http.get(f"/v1/jobs/{running}/graph").status_code == 409

    after = alice.submit(TINY).json()["id"]  # the worker lives on, and the cancelled job never ran
    assert alice.wait(after)["status"] == "succeeded"
    never = alice.job(queued)
    assert never["status"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None


def test_soft_time_limit_fails_the_job_with_a_clear_message(service: Service, alice: Api) -> None:
    from celery import Celery

    from circuitd.store import TASK_NAME

    job, _ = service.store().create_job("alice", long_spec(), f"{service.prefix}cpu")
    sender = Celery("test", broker=service.broker, set_as_current=False)
    sender.send_task(TASK_NAME, args=[job.id], queue=job.queue, soft_time_limit=2, time_limit=30)
    done = alice.wait(job.id, timeout=60)
    assert done["status"] == "failed" and done["error"].startswith("time limit: the job ran longer than 2 s")
    assert alice.wait(alice.submit(TINY).json()["id"])["status"] == "succeeded"


def test_list_jobs_paginated_and_filtered(service: Service, bob: Api) -> None:
    for _ in range(3):
        bob.submit(TINY)
    page = bob.http.get("/v1/jobs", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["total"] >= 3 and page["next"]
    rest = bob.http.get(page["next"]).json()
    assert rest["offset"] == 2 and not {j["id"] for j in rest["items"]} & {j["id"] for j in page["items"]}
    created = [j["created_at"] for j in page["items"] + rest["items"]]
    assert created == sorted(created, reverse=True)
    for j in bob.http.get("/v1/jobs", params={"limit": 500}).json()["items"]:
        bob.wait(j["id"])
    ok = bob.http.get("/v1/jobs", params={"status": "succeeded", "limit": 500}).json()
    assert ok["total"] >= 3 and all(j["status"] == "succeeded" for j in ok["items"])
    assert bob.http.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 0
    bad = bob.http.get("/v1/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422 and "status" in bad.json()["detail"]


def test_health_ready_metrics_and_catalog(service: Service, alice: Api) -> None:
    assert alice.http.get("/healthz").json() == {"status": "ok"}
    ready = alice.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    text = alice.http.get("/metrics").text
    assert 'circuitd_jobs{status="succeeded"}' in text
    assert "circuitd_http_requests_total" in text and "circuitd_jobs_submitted_total" in text
    models = {m["id"] for m in alice.http.get("/v1/models").json()["models"]}
    assert {"zoo:synth", "random:tiny", "random:gpt2-small"} <= models
    tasks = alice.http.get("/v1/tasks").json()
    assert "ioi" in tasks["generators"] and "kl" in tasks["metrics"]
    assert alice.http.get("/v1/jobs/0123456789abcdef/graph").status_code == 404


IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_attribution_graph_job_queries_and_validation(service: Service, alice: Api) -> None:
    """An attribution-graph job over HTTP with zoo:synth's shipped transcoders: the stored graph is
    re-pruned, exported in the Neuronpedia layout and queried without recomputation; validation
    is a follow-up job whose metrics hold predicted and actual logit changes."""
    from graphs.neuronpedia import validate_neuronpedia

    r = alice.submit({"model": "zoo:synth", "method": "attribution-graph", "prompt": IOI_PROMPT})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    done = alice.wait(job_id)
    assert done["status"] == "succeeded", done
    m = done["metrics"]
    assert m["top_logit"]["token"].strip() == "Mary" and 0 < m["replacement_score"] <= 1
    base = f"/v1/jobs/{job_id}/graph"

    pruned = alice.http.get(base).json()
    assert len(pruned["nodes"]) == m["n_nodes"] and len(pruned["links"]) == m["n_edges"]
    assert pruned["graph"]["kind"] == "attribution"
    assert pruned["graph"]["format"] == "circuitd.attribution-graph/1"
    full = alice.http.get(base, params={"all_edges": "true"}).json()
    assert len(full["nodes"]) == m["n_nodes_total"] > len(pruned["nodes"])
    tighter = alice.http.get(base, params={"node_threshold": 0.5, "edge_threshold": 0.9}).json()
    assert len(tighter["nodes"]) < len(pruned["nodes"])
    assert tighter["graph"]["node_threshold"] == 0.5
    doc = alice.http.get(base, params={"format": "neuronpedia"}).json()
    assert validate_neuronpedia(doc) == []
    assert {n["node_id"] for n in doc["nodes"]} == {n["id"] for n in pruned["nodes"]}

    feats = alice.http.get(f"{base}/features", params={"n": 5}).json()["features"]
    influence = [f["influence"] for f in feats]
    assert len(feats) == 5 and influence == sorted(influence, reverse=True)
    paths = alice.http.get(f"{base}/logit-paths", params={"limit": 10}).json()
    assert paths["paths"] and all(p["nodes"][-1] == paths["logit"] for p in paths["paths"])
    assert alice.http.get(f"{base}/logit-paths", params={"logit": "nope"}).status_code == 404

    # the edge-level queries work on attribution graphs too; paths through a node do not apply
    assert full["graph"]["adjacency"]["shape"] == [m["n_nodes_total"]] * 2
    assert len(full["links"]) == m["n_edges"]  # links: the pruned edges; the matrix holds the rest
    top = alice.http.get(f"{base}/top", params={"n": 3}).json()["edges"]
    assert len(top) == 3 and abs(top[0]["score"]) >= abs(top[2]["score"])
    assert alice.http.get(f"{base}/nodes/{feats[0]['id']}").json()["node"]["kind"] == "feature"
    assert alice.http.get(f"{base}/subgraph", params={"min_score": 0}).status_code == 200
    assert alice.http.get(base, params={"format": "graphml"}).status_code == 200
    assert alice.http.get(f"{base}/compare/{job_id}").json()["edges"]["jaccard"] == 1.0
    assert alice.http.get(f"{base}/paths", params={"through": feats[0]["id"]}).status_code == 409
    both = alice.http.get(base, params={"all_edges": "true", "node_threshold": 0.5})
    assert both.status_code == 422
    np_sub = alice.http.get(f"{base}/subgraph", params={"min_score": 0, "format": "neuronpedia"})
    assert np_sub.status_code == 422
    twice = alice.http.post(f"{base}/validate", json={"nodes": [feats[0]["id"], feats[0]["id"]]})
    assert twice.status_code == 422 and "given twice" in twice.json()["detail"]

    bad = alice.http.post(f"{base}/validate", json={"nodes": ["nope"]})
    assert bad.status_code == 422 and "nodes: 'nope'" in bad.json()["detail"]
    r = alice.http.post(f"{base}/validate", json={"nodes": [feats[0]["id"], feats[1]["id"]], "scale": 0.0})
    assert r.status_code == 202, r.text
    check = alice.wait(r.json()["id"])
    assert check["status"] == "succeeded", check
    v = check["metrics"]["validation"]
    assert v["nodes"] == [feats[0]["id"], feats[1]["id"]] and v["targets"]
    for t in v["targets"]:
        assert t["actual_direct"] == pytest.approx(t["predicted_direct"], abs=1e-3)
        assert {"predicted", "predicted_pruned", "actual"} <= set(t)

    edge_job = alice.wait(alice.submit(TINY).json()["id"])
    other = f"/v1/jobs/{edge_job['id']}/graph"
    assert alice.http.get(other, params={"format": "neuronpedia"}).status_code == 422
    assert alice.http.get(f"{other}/features").status_code == 409


def test_listings_show_an_inline_task_by_name_and_size(service: Service, bob: Api) -> None:
    """A page of 500 jobs stays small however large their inline tasks: the job itself has it all."""
    n = 64
    task = {"name": "big", "clean": [[1] * 200] * n, "corrupted": [[2] * 200] * n,
            "correct": [3] * n, "incorrect": [4] * n, "prepend_bos": False}
    r = bob.submit({"model": "random:tiny", "method": "eap", "task": task, "top_n": 5, "curve": False})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    page = bob.http.get("/v1/jobs", params={"limit": 500}).json()["items"]
    listed = next(j for j in page if j["id"] == job_id)
    assert listed["spec"]["task"] == {"name": "big", "n_prompts": n}
    assert listed["spec"]["model"] == "random:tiny" and listed["spec"]["method"] == "eap"
    assert bob.job(job_id)["spec"]["task"]["clean"] == task["clean"]
    bob.wait(job_id)
