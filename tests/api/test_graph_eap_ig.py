"""GET /v1/jobs/{id}/graph?format=eap-ig in process, on a real SQLite store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from circuitd.settings import get_settings
from circuitd.store import get_store
from graphs import build_edge_circuit, from_eap_ig, to_node_link
from graphs.eap_ig_format import EapIgConfig, edge_names


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    """A fresh app on its own SQLite store holding one succeeded edge-circuit job."""
    for name in [k for k in os.environ if k.startswith("CIRCUITD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CIRCUITD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CIRCUITD_DATABASE_URL", f"sqlite:///{tmp_path / 'circuitd.db'}")
    get_settings.cache_clear()
    store = get_store()
    key = store.create_key("alice")
    names = edge_names(EapIgConfig(2, 2))
    keep = [i % 3 == 0 for i in range(len(names))]
    scores = [0.01 * i for i in range(len(names))]
    full = build_edge_circuit(names, scores, keep, {"model": "m"}, all_edges=True)
    job, _ = store.create_job("alice", {"model": "random:tiny", "task": "random", "method": "eap"}, "cpu")
    store.claim(job.id, "w")
    assert store.finish(job.id, "w", {"n_edges": sum(keep)}, to_node_link(full))
    with TestClient(create_app(), headers={"Authorization": f"Bearer {key}"}) as c:
        yield c, job.id
    get_settings.cache_clear()


def test_eap_ig_format(client: tuple[TestClient, str]) -> None:
    c, job_id = client
    r = c.get(f"/v1/jobs/{job_id}/graph", params={"format": "eap-ig"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["cfg"] == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False}
    assert list(doc["edges"]) == edge_names(EapIgConfig(2, 2))
    back = from_eap_ig(doc, "response", EapIgConfig(2, 2))
    kept = {d["name"] for *_, d in back.edges(data=True) if d["in_circuit"]}
    assert kept == {n for i, n in enumerate(edge_names(EapIgConfig(2, 2))) if i % 3 == 0}
    assert doc["edges"][edge_names(EapIgConfig(2, 2))[3]] == {"score": 0.03, "in_graph": True}
    sub = c.get(f"/v1/jobs/{job_id}/graph/subgraph", params={"min_score": 0.1, "format": "eap-ig"})
    assert sub.status_code == 422 and "eap-ig" in sub.text
