"""``DELETE /v1/jobs/{id}`` over real HTTP with a real worker: the job and its graph go, and a
worker running the job notices and stops."""

from __future__ import annotations

import time

import pytest

from tests.support.service import TINY, Api, Service, long_spec

pytestmark = pytest.mark.service


def test_delete_a_finished_job_removes_it_and_its_graph(service: Service, alice: Api, bob: Api) -> None:
    job_id = alice.submit(TINY).json()["id"]
    assert alice.wait(job_id)["status"] == "succeeded"
    assert alice.http.get(f"/v1/jobs/{job_id}/graph").status_code == 200  # now in the API's cache
    st = service.store()
    assert st.load_graph_bytes(job_id) is not None

    assert bob.http.delete(f"/v1/jobs/{job_id}").status_code == 404  # not bob's: left alone
    assert st.get_job(job_id) is not None

    r = alice.http.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 204 and r.content == b""
    assert st.get_job(job_id) is None and st.load_graph_bytes(job_id) is None
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/graph", f"/v1/jobs/{job_id}/graph/top"):
        gone = alice.http.get(path)
        assert gone.status_code == 404 and gone.json() == {"detail": f"job {job_id} not found",
                                                           "code": "not_found"}
    assert alice.http.delete(f"/v1/jobs/{job_id}").status_code == 404
    listed = alice.http.get("/v1/jobs", params={"limit": 500}).json()["items"]
    assert job_id not in {j["id"] for j in listed}


def test_delete_a_queued_job(service: Service, alice: Api) -> None:
    running = alice.submit(long_spec()).json()["id"]  # holds the one worker
    queued = alice.submit(TINY).json()["id"]
    assert alice.job(queued)["status"] == "queued"
    assert alice.http.delete(f"/v1/jobs/{queued}").status_code == 204
    assert alice.http.get(f"/v1/jobs/{queued}").status_code == 404
    assert alice.http.delete(f"/v1/jobs/{running}").status_code == 204
    after = alice.submit(TINY).json()["id"]  # the worker drops the deleted one and goes on
    assert alice.wait(after, timeout=120)["status"] == "succeeded"
    assert service.store().get_job(queued) is None


def test_delete_a_running_job_stops_its_worker(service: Service, alice: Api) -> None:
    running = alice.submit(long_spec()).json()["id"]
    alice.wait(running, check=lambda j: j["status"] == "running" and j["progress"] > 0)
    lost_before = service.log("w1.log").count("'lost'")  # Celery logs each task's return value
    t0 = time.monotonic()
    assert alice.http.delete(f"/v1/jobs/{running}").status_code == 204
    assert alice.http.get(f"/v1/jobs/{running}").status_code == 404
    after = alice.submit(TINY).json()["id"]  # one worker: it runs once the deleted job has stopped
    assert alice.wait(after, timeout=60)["status"] == "succeeded"
    assert time.monotonic() - t0 < 30  # the deleted job, left running, would take minutes
    st = service.store()
    assert st.get_job(running) is None and st.load_graph_bytes(running) is None  # nothing written back
    assert service.log("w1.log").count("'lost'") == lost_before + 1  # its heartbeat found the job gone
