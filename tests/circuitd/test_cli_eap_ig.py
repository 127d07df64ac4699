"""EAP-IG / MIB files on the command line: discover --format eap-ig, evaluate, mib-export, mib-validate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.circuitd.test_cli import circuitd

TASK = ["--model", "random:tiny@1", "--task", "random", "--n-prompts", "6"]


def _faithfulness(stdout: str) -> str:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("faithfulness:"), stdout
    return last


@pytest.mark.slow
def test_evaluate_reads_eap_ig_like_its_own_file(tmp_path: Path) -> None:
    own, eap = tmp_path / "own.json", tmp_path / "eap.json"
    for out, extra in ((own, ["--all-edges"]), (eap, ["--format", "eap-ig"])):
        run = circuitd("discover", *TASK, "--method", "eap", "--top-n", "20", *extra, "--out", str(out))
        assert run.returncode == 0, run.stderr
    data = json.loads(eap.read_text())
    assert set(data) == {"cfg", "nodes", "edges"} and len(data["edges"]) == 110
    assert sum(e["in_graph"] for e in data["edges"].values()) > 0

    runs = [circuitd("evaluate", *TASK, "--circuit", str(p)) for p in (own, eap)]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert _faithfulness(runs[0].stdout) == _faithfulness(runs[1].stdout)
    curve = [[ln for ln in r.stdout.splitlines() if "edges  f=" in ln or ln.startswith("CPR")] for r in runs]
    assert curve[0] == curve[1] and curve[0]

    wrong = circuitd("evaluate", "--model", "zoo:synth", "--task", "random", "--n-prompts", "6",
                     "--circuit", str(eap))
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "cfg.n_layers: 2 does not match the model (4)" in wrong.stderr


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["importances", "circuits"])
def test_mib_export_then_validate(tmp_path: Path, layout: str) -> None:
    out = tmp_path / "sub"
    run = circuitd("mib-export", *TASK, "--method", "eap", "--layout", layout, "-o", str(out))
    assert run.returncode == 0, run.stderr
    folder = out / "random_random-tiny-1"
    files = sorted(p.name for p in folder.iterdir())
    if layout == "importances":
        assert files == ["importances.json"]
    else:
        assert len(files) == 9 and "circuit_0.1.json" in files and "circuit_50.json" in files
        half = json.loads((folder / "circuit_50.json").read_text())
        assert sum(e["in_graph"] for e in half["edges"].values()) == 55
    ok = circuitd("mib-validate", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "valid MIB circuit-track layout" in ok.stdout.splitlines()[-1]

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    bad_folder = broken / "random_random-tiny-1"
    victim = sorted(bad_folder.iterdir())[-1]
    if layout == "importances":
        doc = json.loads(victim.read_text())
        doc["edges"]["bogus->logits"] = {"score": 1.0, "in_graph": True}
        victim.write_text(json.dumps(doc))
        needle = "edges.bogus->logits: not an edge"
    else:
        victim.unlink()
        needle = "8 files; expected 1 (importances) or 9 circuits"
    bad = circuitd("mib-validate", str(broken))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and needle in bad.stderr, bad.stderr

    renamed = tmp_path / "renamed"
    shutil.copytree(out, renamed)
    (renamed / "random_random-tiny-1").rename(renamed / "nounderscore")
    bad = circuitd("mib-validate", str(renamed))
    assert bad.returncode == 2 and "folder name: expected <task>_<model>" in bad.stderr


@pytest.mark.slow
def test_mib_validate_refuses_an_oversized_circuit(tmp_path: Path) -> None:
    out = tmp_path / "sub"
    run = circuitd("mib-export", *TASK, "--method", "eap", "--layout", "circuits", "-o", str(out))
    assert run.returncode == 0, run.stderr
    small = out / "random_random-tiny-1" / "circuit_1.json"
    doc = json.loads(small.read_text())
    for e in doc["edges"].values():
        e["in_graph"] = True
    small.write_text(json.dumps(doc))
    bad = circuitd("mib-validate", str(out))
    needle = "no circuit with at most 1% of the 110 edges (the next smallest has 2)"
    assert bad.returncode == 2 and needle in bad.stderr, bad.stderr
