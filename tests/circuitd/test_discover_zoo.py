"""End to end on the shipped model: EAP-IG finds a small, faithful IOI circuit."""

from __future__ import annotations

import json
import math

from circuitd.discover import discover
from circuitd.spec import JobSpec
from graphs import to_node_link


def test_eap_ig_ioi_circuit_is_small_and_faithful() -> None:
    spec = JobSpec(model="zoo:synth", task="ioi", method="eap-ig", top_n=150, seed=0)
    result = discover(spec)
    m = result.metrics
    assert m["n_edges_total"] == 1519
    assert m["n_edges"] <= math.floor(0.10 * m["n_edges_total"])
    assert m["faithfulness"] >= 0.8, m
    assert m["metric_full"] > 2.0  # the model does prefer the indirect object
    data = json.loads(json.dumps(to_node_link(result.graph)))
    assert data["graph"]["metrics"]["faithfulness"] == m["faithfulness"]
    assert len(data["links"]) == m["n_edges"]


def test_task_json_file_through_discover(tmp_path) -> None:
    task = {
        "clean": ["When Mary and John went to the store , John gave a drink to"] * 2,
        "corrupted": ["When Alice and Paul went to the store , Kate gave a drink to"] * 2,
        "correct": ["Mary", ["Mary"]],
        "incorrect": ["John", "John"],
        "metric": "logit_diff",
    }
    from circuitd.tasks import load_task_data

    path = tmp_path / "t.json"
    path.write_text(json.dumps(task))
    data = load_task_data(str(path), None, 0)
    result = discover(JobSpec(model="zoo:synth", task=data, method="eap", top_n=100, curve=False))
    assert result.metrics["n_prompts"] == 2
    assert result.metrics["metric_full"] > 0
