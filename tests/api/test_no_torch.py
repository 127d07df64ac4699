"""The API process must start fast and hold no model: importing it and serving requests,
including a submission, never imports torch, transformer_lens or the worker code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.service import ROOT, Service, ensure_redis

pytestmark = pytest.mark.service  # the API process against a real Redis

PROBE = r"""
import json, sys
from fastapi.testclient import TestClient
import api.app
client = TestClient(api.app.app)
assert client.get("/healthz").status_code == 200
assert client.get("/v1/models").status_code == 200
assert client.get("/v1/tasks").status_code == 200
bad = client.post("/v1/jobs", json={"model": "random:nope", "task": "random"})
assert bad.status_code == 422, bad.text
ok = client.post("/v1/jobs", json={"model": "zoo:synth", "task": "ioi", "method": "eap-ig", "top_n": 150})
assert ok.status_code == 202, ok.text
job = client.get(ok.headers["location"]).json()
assert job["status"] == "queued", job
assert client.get("/v1/jobs").json()["total"] == 1
assert client.get("/readyz").status_code == 200
assert client.get("/metrics").status_code == 200
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformer_lens", "workers"))
print(json.dumps({"heavy": heavy, "queue": job["queue"]}))
"""


def test_api_imports_no_torch_while_serving(tmp_path) -> None:
    ensure_redis()
    svc = Service(tmp_path, extra_env={"CIRCUITD_AUTH_DISABLED": "1"})
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=svc.env(), capture_output=True,
                             text=True, timeout=120)
    finally:
        svc.forget_queues()  # nobody consumes this test's queue
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["queue"] == f"{svc.prefix}cpu"
