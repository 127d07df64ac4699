"""`circuitd view` and the offline page: the graph embedded intact and inert, no network anywhere.

The browser side (drawing, the top-n slider, the side panel) is driven in headless Chromium by the
browser-marked tests; these check the page as text and the command's errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from circuitd.cli import main
from circuitd.viewer import graph_kind, render_html
from circuitd.viewer.html import CSP, SCRIPTS, STYLES
from graphs import build_edge_circuit, to_node_link, write_json
from graphs.attribution_graph import AttributionGraph, Node
from graphs.attribution_networkx import to_networkx

VENDOR = Path(__file__).parents[2] / "circuitd" / "viewer" / "static" / "vendor"
VENDORED = [name for name in (*SCRIPTS, *STYLES) if name.startswith("vendor/")]
HOSTILE = '</script><script>alert("x")</script><!--'
NAMES = ["input->a0.h0<q>", "input->a0.h0<k>", "a0.h0->m1", "m1->logits", "a0.h1->logits", "input->m0"]
SCORES = [0.5, -0.25, 1.0, 2.0, 0.01, -3.5]
KEEP = [True, True, True, True, False, False]
META = {"model": "random:tiny", "task": HOSTILE, "method": "eap", "metrics": {"faithfulness": 0.9}}
GRAPH_TAG = re.compile(r'<script type="application/json" id="circuitd-graph">(.*?)</script>', re.S)


def edge_doc(all_edges: bool = True) -> dict:
    return to_node_link(build_edge_circuit(NAMES, SCORES, KEEP, META, all_edges=all_edges))


def attribution_doc() -> dict:
    """A two-layer graph whose first prompt token is hostile HTML, stored with its full matrix."""
    nodes = (
        Node("feature", pos=1, layer=0, index=5, activation=1.0),
        Node("feature", pos=1, layer=1, index=3, activation=0.5),
        Node("error", pos=1, layer=0),
        Node("token", pos=0, index=10, token=HOSTILE),
        Node("token", pos=1, index=20, token=" cat"),
        Node("logit", pos=1, index=30, prob=0.5, token=" sat"),
    )
    a = np.zeros((6, 6))
    for (t, s), v in {(0, 3): 2.0, (0, 4): -1.0, (1, 0): 3.0, (1, 2): 0.5, (5, 1): 2.0, (5, 4): 0.25}.items():
        a[t, s] = v
    graph = AttributionGraph(a, nodes, n_layers=2, prompt=HOSTILE + " cat")
    return to_node_link(to_networkx(graph, stored=True))


def embedded(page: str) -> dict:
    found = GRAPH_TAG.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


def own_text(page: str) -> str:
    """The page without the vendored libraries, whose licence comments name their homepages."""
    for name in VENDORED:
        page = page.replace((VENDOR.parent / name).read_text(encoding="utf-8"), "")
    return page


@pytest.mark.parametrize("make,kind", [(edge_doc, "edge-circuit"), (attribution_doc, "attribution")])
def test_page_embeds_the_graph_intact(make, kind: str) -> None:
    doc = make()
    page = render_html(doc, "a circuit")
    back = embedded(page)
    assert back["viewer"]["kind"] == kind == graph_kind(doc)
    assert len(back["nodes"]) == len(doc["nodes"]) and len(back["links"]) == len(doc["links"])
    assert [n["id"] for n in back["nodes"]] == [n["id"] for n in doc["nodes"]]
    field = "weight" if kind == "attribution" else "score"
    got = [link[field] for link in back["links"]]
    assert got == pytest.approx([link[field] for link in doc["links"]], rel=0, abs=1e-15)
    assert "adjacency" not in back["graph"]  # the stored matrix is not drawn: not embedded
    assert len(back["graph"]) == len(doc["graph"]) - ("adjacency" in doc["graph"])


def test_edge_file_counts_match_the_scores() -> None:
    back = embedded(render_html(edge_doc(), "t"))
    assert len(back["links"]) == len(NAMES)
    assert sum(link["in_circuit"] for link in back["links"]) == sum(KEEP)
    total = sum(abs(link["score"]) for link in back["links"])
    assert total == pytest.approx(sum(map(abs, SCORES)), abs=1e-12)
    circuit_only = embedded(render_html(edge_doc(all_edges=False), "t"))
    assert len(circuit_only["links"]) == sum(KEEP)


@pytest.mark.parametrize("make", [edge_doc, attribution_doc])
def test_hostile_text_cannot_leave_its_tag(make) -> None:
    page = render_html(make(), HOSTILE)
    # every </script> closes one of the page's own tags: 1 graph + the vendored libraries + ours
    assert page.count("<script") == page.count("</script>") == 1 + len(SCRIPTS)
    assert "<!--" not in own_text(page)
    assert f"<title>{HOSTILE}" not in page and "&lt;/script&gt;" in page
    back = embedded(page)
    assert back["graph"]["task" if make is edge_doc else "prompt"].startswith(HOSTILE)
    if make is attribution_doc:
        assert HOSTILE in [n["token"] for n in back["nodes"]]


@pytest.mark.parametrize("make", [edge_doc, attribution_doc])
def test_no_network_anywhere(make) -> None:
    page = render_html(make(), "t")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    assert CSP == "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
    assert not re.search(r"""\b(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"https?://|@import|url\(", own_text(page), re.I)
    for name in VENDORED:  # the libraries really are inlined, whole
        assert (VENDOR.parent / name).read_text(encoding="utf-8") in page


def test_non_finite_scores_embed_as_null() -> None:
    doc = edge_doc()
    doc["links"][0]["score"] = math.nan
    doc["links"][1]["score"] = -math.inf
    back = embedded(render_html(doc, "t"))
    assert back["links"][0]["score"] is None and back["links"][1]["score"] is None
    assert back["links"][2]["score"] == pytest.approx(doc["links"][2]["score"], abs=1e-15)


def test_vendored_libraries_are_pinned_and_licensed() -> None:
    lines = (VENDOR / "VERSIONS").read_text().splitlines()
    rows = [line.split() for line in lines if not line.startswith("#")]
    names = {row[0] for row in rows}
    assert {"cytoscape", "cytoscape-dagre", "uplot"} <= names
    assert all(len(row) == 3 and re.fullmatch(r"\d+\.\d+\.\d+", row[1]) for row in rows)
    for row in rows:
        licence = VENDOR / f"LICENSE.{row[0].lstrip('@').replace('/', '-')}"
        assert row[2] in licence.read_text() or "Permission is hereby granted" in licence.read_text()
    total = sum(f.stat().st_size for f in VENDOR.iterdir())
    assert total < 700_000, f"vendored files grew to {total} bytes"


def test_view_command_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "c.json", tmp_path / "c.html"
    write_json(build_edge_circuit(NAMES, SCORES, KEEP, META, all_edges=True), src)
    assert main(["view", str(src), "-o", str(out), "--title", "IOI"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "<title>IOI</title>" in page
    assert len(embedded(page)["links"]) == len(json.loads(src.read_text())["links"]) == len(NAMES)
    assert capsys.readouterr().out.strip() == f"{src} -> {out}"


@pytest.mark.parametrize(
    "content,reason",
    [
        (None, "no such file"),
        ("{not json", "not JSON (Expecting property name enclosed in double quotes at line 1)"),
        ("[1, 2]", "not a circuitd graph: the JSON is not an object"),
        ('{"nodes": []}', "not a circuitd graph: node-link JSON lacks 'graph', 'links'"),
        ('{"graph": {}, "nodes": [{"id": "x9"}], "links": []}', "not a node name: 'x9'"),
        ('{"graph": {"format": "circuitd.edge-circuit/9"}, "nodes": [], "links": []}',
         "newer than this circuitd reads"),
        ('{"graph": {}, "nodes": [{"id": "input"}, {"id": "logits"}], '
         '"links": [{"source": "input", "target": "logits"}]}', "an edge-circuit link lacks its 'score'"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, reason: str
) -> None:
    src = tmp_path / "graph.json"
    if content is not None:
        src.write_text(content)
    assert main(["view", str(src), "-o", str(tmp_path / "out.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"circuitd: error: {src}: ") and reason in err
    assert not (tmp_path / "out.html").exists() and not (tmp_path / "out.html.tmp").exists()
