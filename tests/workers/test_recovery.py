"""Real Celery worker processes losing jobs: SIGKILL mid-job, on Redis and on the embedded
SQLite broker; and ``circuitd up`` serving a round trip on its own store and broker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.service import (
    CLI,
    ROOT,
    TINY,
    Api,
    Service,
    ensure_redis,
    free_port,
    long_spec,
    wait_until,
)

pytestmark = pytest.mark.service  # real Redis, Celery worker processes and uvicorn


def _attempt_lines(svc: Service, job_id: str) -> int:
    logs = "".join(svc.log(p.name) for p in svc.root.glob("w*.log"))
    return len(re.findall(rf"job {job_id}: attempt \d+ on ", logs))


def _running(api: Api, job_id: str) -> dict:
    """Wait until the job has made progress on a worker (generous: the machine may be loaded)."""
    return api.wait(job_id, check=lambda j: j["status"] == "running" and j["progress"] > 0.05, timeout=240)


@pytest.mark.parametrize("broker", ["redis", "sqlite"])
def test_sigkill_worker_mid_job_then_restarted_worker_finishes_it(tmp_path: Path, broker: str) -> None:
    """No job lost or run twice: each ran to the end once (attempt lines = attempts in the store)."""
    if broker == "redis":
        ensure_redis()
        svc = Service(tmp_path)
    else:  # kombu's SQLAlchemy transport loses a fetched message with its worker: the sweep repairs it
        svc = Service(tmp_path, broker=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    try:
        w1 = svc.start_worker("w1", wait=False)
        api = Api(svc.start_api(no_auth=True), None)
        svc.wait_ready(w1, "w1")
        victim = api.submit(long_spec(32)).json()["id"]
        others = [api.submit(TINY | {"seed": i}).json()["id"] for i in range(2)]
        _running(api, victim)
        Service.kill(w1)  # the worker and its pool child, without a chance to clean up
        assert api.job(victim)["status"] == "running"

        w2 = svc.start_worker("w2")
        for job_id in (victim, *others):
            assert api.wait(job_id, timeout=240)["status"] == "succeeded", svc.log("w2.log")[-3000:]
        assert api.job(victim)["attempts"] == 2 and _attempt_lines(svc, victim) == 2
        for job_id in others:
            assert api.job(job_id)["attempts"] == 1 and _attempt_lines(svc, job_id) == 1
        listed = api.http.get("/v1/jobs").json()
        assert listed["total"] == 3 and {j["status"] for j in listed["items"]} == {"succeeded"}
        graph = api.http.get(f"/v1/jobs/{victim}/graph").json()
        assert len(graph["links"]) == api.job(victim)["metrics"]["n_edges"]
        if broker == "sqlite":
            return

        # Only the pool child dies: reject_on_worker_lost requeues the message, and the same
        # worker takes the job back at once (its holder's process is gone).
        again = api.submit(long_spec(32)).json()["id"]
        _running(api, again)
        holder = svc.store().get_job(again).worker
        os.kill(int(holder.split(":")[1]), signal.SIGKILL)  # hostname:pid:namespace.random
        done = api.wait(again, timeout=240)
        assert done["status"] == "succeeded" and done["attempts"] == 2, svc.log("w2.log")[-3000:]
        assert _attempt_lines(svc, again) == 2 and w2.poll() is None
    finally:
        svc.stop()


def test_up_serves_a_round_trip_on_its_embedded_store_and_broker(tmp_path: Path) -> None:
    svc = Service(tmp_path)
    env = {k: v for k, v in svc.env().items() if k not in ("CIRCUITD_BROKER_URL", "CIRCUITD_DATABASE_URL")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - the child owns it
    up = subprocess.Popen([*CLI, "up", "--port", str(port), "--data-dir", str(tmp_path), "--grace", "5"],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, "circuitd up")
        assert (tmp_path / "api-key").stat().st_mode & 0o077 == 0
        assert (tmp_path / "broker.db").exists() and (tmp_path / "circuitd.db").exists()
        assert httpx.get(url + "/v1/jobs").status_code == 401  # auth is on unless --no-auth

        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps(TINY))
        cli = {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "timeout": 120}
        out = subprocess.run([*CLI, "submit", str(spec), "--url", url], **cli)  # key read from the data dir
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.strip()
        out = subprocess.run([*CLI, "status", job_id, "--watch", "--interval", "0.2", "--url", url], **cli)
        assert out.returncode == 0 and "succeeded" in out.stdout.splitlines()[-1], out.stdout + out.stderr
        dest = tmp_path / "graph.graphml"
        out = subprocess.run([*CLI, "download", job_id, "-o", str(dest), "--format", "graphml", "--url", url],
                             **cli)
        assert out.returncode == 0 and dest.read_text().startswith("<graphml"), out.stderr
        key = (tmp_path / "api-key").read_text().strip()
        top = httpx.get(f"{url}/v1/jobs/{job_id}/graph/top?n=2", headers={"Authorization": f"Bearer {key}"})
        assert len(top.json()["edges"]) == 2

        out = subprocess.run([*CLI, "status", "0" * 32, "--url", url], **cli)
        assert out.returncode == 2 and "404" in out.stderr
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        t0 = time.monotonic()
        up.wait(timeout=30)
        assert time.monotonic() - t0 < 20
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True).returncode == 1
