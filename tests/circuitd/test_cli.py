"""The command line as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def circuitd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circuitd.cli", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("flag,count", [([], 32491), (["--no-split-qkv"], 11611)])
def test_edges_gpt2_small(flag: list[str], count: int) -> None:
    out = circuitd("edges", "--model", "random:gpt2-small", *flag)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"edges: {count}"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["edges", "--model", "zoo:nope"], "unknown zoo model 'nope'"),
        (["edges", "--model", "random:huge"], "unknown random preset 'huge'"),
        (["edges", "--model", "local:/nonexistent"], "needs a directory with config.json"),
        (["discover", "--model", "random:tiny", "--task", "nope", "--out", "x.json"], "--task"),
        (["discover", "--model", "random:tiny", "--task", "random", "--ig-steps", "0", "--out", "x.json"],
         "ig_steps"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_line(args: list[str], needle: str) -> None:
    out = circuitd(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


@pytest.mark.slow
def test_discover_writes_node_link(tmp_path: Path) -> None:
    out_file = tmp_path / "c.json"
    run = circuitd("discover", "--model", "random:tiny@1", "--task", "random", "--method", "eap",
                   "--top-n", "20", "--n-prompts", "6", "--out", str(out_file))
    assert run.returncode == 0, run.stderr
    assert "faithfulness" in run.stdout.strip().splitlines()[-1]
    data = json.loads(out_file.read_text())
    g = data["graph"]
    assert {"format", "model", "task", "method", "params", "versions", "metrics"} <= set(g)
    assert g["format"] == "circuitd.edge-circuit/1"
    m = g["metrics"]
    for key in ("faithfulness", "n_edges", "n_edges_total", "metric_full", "metric_empty", "metric_circuit"):
        assert key in m
    assert m["n_edges_total"] == 110 and 0 < m["n_edges"] <= 20 == g["params"]["top_n"]
    assert len(data["links"]) == m["n_edges"] and all(link["in_circuit"] for link in data["links"])

    all_file = tmp_path / "all.json"
    run = circuitd("discover", "--model", "random:tiny@1", "--task", "random", "--method", "eap",
                   "--top-n", "20", "--n-prompts", "6", "--all-edges", "--no-curve", "--out", str(all_file))
    assert run.returncode == 0, run.stderr
    links = json.loads(all_file.read_text())["links"]
    assert len(links) == 110 and sum(link["in_circuit"] for link in links) == m["n_edges"]

    ev = circuitd("evaluate", "--model", "random:tiny@1", "--task", "random", "--n-prompts", "6",
                  "--circuit", str(out_file))
    assert ev.returncode == 0, ev.stderr
    last = ev.stdout.strip().splitlines()[-1]
    assert last.startswith("faithfulness:")
    assert abs(float(last.split()[-1]) - m["faithfulness"]) < 1e-4
    assert "CPR:" in ev.stdout

    future = tmp_path / "future.json"
    future.write_text(json.dumps({**data, "graph": {**g, "format": "circuitd.edge-circuit/2"}}))
    for cmd in (["summary", str(future)], ["evaluate", "--model", "random:tiny@1", "--task", "random",
                                           "--circuit", str(future)]):
        refused = circuitd(*cmd)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr
        assert "graph.format: 'circuitd.edge-circuit/2' is newer than this circuitd reads" in lines[0]
