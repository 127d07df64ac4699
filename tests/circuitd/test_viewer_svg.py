"""``circuitd view --svg``: the static picture draws what the graph file holds, no more, inert and
parseable whatever text the file carries, and the same bytes every time.

The circuits come from the CLI on the shipped zoo model, as a user would make them; the counts the
picture must show are read from those files, not from the renderer."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from circuitd.cli import main
from circuitd.edges import EdgeGraph
from circuitd.models.registry import model_shape
from circuitd.viewer.svg import NEGATIVE, NEUTRAL, POSITIVE, SVG_NS, render_svg
from graphs import build_edge_circuit, to_node_link, write_json
from graphs.attribution_graph import AttributionGraph, Node
from graphs.attribution_networkx import to_networkx

NS = {"svg": SVG_NS}
HOSTILE = "</svg><script>alert(\"&\")</script><!-- 'quoted' & <b>"
TRANSLATE = re.compile(r"translate\(([-\d.]+),([-\d.]+)\)")


# ---- reading a picture back -------------------------------------------------------------------


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg.encode("utf-8"))
    assert root.tag == f"{{{SVG_NS}}}svg"
    return root


def edge_paths(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iterfind(".//svg:path", NS) if p.get("class") == "edge"]


def offset_of(root: ET.Element, group_class: str) -> tuple[float, float]:
    group = next(g for g in root.iterfind("svg:g", NS) if g.get("class") == group_class)
    found = TRANSLATE.fullmatch(group.get("transform", ""))
    assert found, group.get("transform")
    return float(found.group(1)), float(found.group(2))


def node_boxes(root: ET.Element) -> dict[str, tuple[float, float, float, float]]:
    """Each drawn node's rectangle (left, top, right, bottom) in picture coordinates."""
    dx, dy = offset_of(root, "nodes")
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for node in root.iterfind(".//svg:g", NS):
        if node.get("class") != "node":
            continue
        rect = node.find("svg:rect", NS)
        assert rect is not None
        left, top = float(rect.get("x", "nan")) + dx, float(rect.get("y", "nan")) + dy
        boxes[node.get("data-id", "")] = (
            left,
            top,
            left + float(rect.get("width", "nan")),
            top + float(rect.get("height", "nan")),
        )
    return boxes


def centre_y(box: tuple[float, float, float, float]) -> float:
    return (box[1] + box[3]) / 2


def assert_inside_canvas(root: ET.Element) -> None:
    width, height = float(root.get("width", "0")), float(root.get("height", "0"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    for left, top, right, bottom in node_boxes(root).values():
        assert 0 <= left < right <= width and 0 <= top < bottom <= height


def in_circuit(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for link in doc["links"] if link.get("in_circuit") is not False]


# ---- graph files --------------------------------------------------------------------------------


def discover(directory: Path, *args: str) -> Path:
    out = directory / "graph.json"
    assert main(["discover", "--model", "zoo:synth", "--seed", "0", *args, "--out", str(out)]) == 0
    return out


def view_svg(source: Path, out: Path, *extra: str) -> str:
    assert main(["view", str(source), "--svg", "-o", str(out), *extra]) == 0
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=[False, True], ids=["circuit", "all-edges"])
def edge_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    flags = ["--all-edges"] if request.param else []
    return discover(
        tmp_path_factory.mktemp("edges"),
        "--task",
        "ioi",
        "--method",
        "eap",
        "--top-n",
        "30",
        "--n-prompts",
        "16",
        "--no-curve",
        *flags,
    )


@pytest.fixture(scope="module")
def attribution_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return discover(
        tmp_path_factory.mktemp("attribution"),
        "--method",
        "attribution-graph",
        "--prompt",
        "When Mary and John went to the store, John gave a drink to",
    )


NAMES = ["input->a0.h0<q>", "input->a0.h0<k>", "a0.h0->m1", "m1->logits", "a0.h1->logits", "input->m0"]
SCORES = [0.5, -0.25, 1.0, -2.0, 0.0, 3.5]
KEEP = [True, True, True, True, True, False]


def edge_doc(meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A hand-made edge circuit, written with every scored edge (the last is outside the circuit)."""
    meta = meta or {"model": "random:tiny", "task": "ioi", "method": "eap", "metrics": {"faithfulness": 0.75}}
    return to_node_link(build_edge_circuit(NAMES, SCORES, KEEP, meta, all_edges=True))


def attribution_doc(token: str) -> dict[str, Any]:
    """Two layers over three positions; position 2 holds no node, only its token in the prompt."""
    nodes = (
        Node("feature", pos=1, layer=0, index=5, activation=1.0),
        Node("feature", pos=1, layer=0, index=7, activation=2.0),
        Node("feature", pos=1, layer=1, index=3, activation=0.5),
        Node("error", pos=1, layer=0),
        Node("token", pos=0, index=10, token=token),
        Node("token", pos=1, index=20, token=" cat"),
        Node("logit", pos=1, index=30, prob=0.5, token=" sat"),
    )
    weights = np.zeros((7, 7))
    for (target, source), value in {
        (0, 4): 2.0,
        (0, 5): -1.0,
        (1, 5): 0.5,
        (2, 0): 3.0,
        (2, 1): 1.5,
        (2, 3): 0.5,
        (6, 2): 2.0,
        (6, 5): -0.25,
    }.items():
        weights[target, source] = value
    graph = AttributionGraph(weights, nodes, n_layers=2, prompt=token + " cat sat")
    doc = to_node_link(to_networkx(graph, all_edges=True))  # every node and edge, some out of the circuit
    doc["graph"]["prompt_tokens"] = [token, " cat", " sat"]
    return doc


# ---- what is drawn ------------------------------------------------------------------------------


def test_discovered_circuit_draws_its_edges_only(edge_file: Path, tmp_path: Path) -> None:
    doc = json.loads(edge_file.read_text(encoding="utf-8"))
    root = parse(view_svg(edge_file, tmp_path / "c.svg"))
    circuit = in_circuit(doc)
    n_edges = doc["graph"]["metrics"]["n_edges"]
    assert len(edge_paths(root)) == len(circuit) == n_edges > 10
    assert sorted(p.get("data-name", "") for p in edge_paths(root)) == sorted(
        link["name"] for link in circuit
    )
    touched = {link["source"] for link in circuit} | {link["target"] for link in circuit}
    assert set(node_boxes(root)) == touched
    if len(doc["links"]) > n_edges:  # the --all-edges file: its other edges and their nodes stay out
        assert len(doc["links"]) == doc["graph"]["metrics"]["n_edges_total"] == 1519
        assert len(doc["nodes"]) > len(touched)
    summary = root.find("svg:desc", NS)
    assert summary is not None and summary.text is not None
    assert f"{n_edges} edges, {len(touched)} nodes" in summary.text
    assert f"faithfulness {doc['graph']['metrics']['faithfulness']:.3f}" in summary.text
    assert_inside_canvas(root)


def test_edge_circuit_rows_run_from_input_up_to_logits(edge_file: Path) -> None:
    doc = json.loads(edge_file.read_text(encoding="utf-8"))
    boxes = node_boxes(parse(render_svg(doc, "t")))
    ys = {node: centre_y(box) for node, box in boxes.items()}
    assert ys["input"] > ys["logits"]  # SVG y grows downwards: input is drawn below logits
    assert all(ys["input"] > y > ys["logits"] for node, y in ys.items() if node not in ("input", "logits"))
    for node, y in ys.items():  # layer L's heads lie below its MLP, which lies below layer L+1's heads
        if (m := re.fullmatch(r"a(\d+)\.h\d+", node)) and f"m{m.group(1)}" in ys:
            assert y > ys[f"m{m.group(1)}"]
        if (m := re.fullmatch(r"m(\d+)", node)) and f"a{int(m.group(1)) + 1}.h0" in ys:
            assert y > ys[f"a{int(m.group(1)) + 1}.h0"]
    heads_of_a_row = [x for x in boxes if re.fullmatch(r"a0\.h\d+", x)]
    assert len({centre_y(boxes[h]) for h in heads_of_a_row}) == 1  # one row per rank


def test_discovered_attribution_graph_draws_every_node_and_link(
    attribution_file: Path, tmp_path: Path
) -> None:
    doc = json.loads(attribution_file.read_text(encoding="utf-8"))
    root = parse(view_svg(attribution_file, tmp_path / "a.svg"))
    boxes = node_boxes(root)
    assert set(boxes) == {node["id"] for node in doc["nodes"]} and len(boxes) == len(doc["nodes"]) > 20
    assert len(edge_paths(root)) == len(doc["links"]) > 50
    tokens = [
        t.findtext("svg:tspan", namespaces=NS)
        for t in root.iterfind(".//svg:text", NS)
        if t.get("class") == "token-label"
    ]
    assert tokens == doc["graph"]["prompt_tokens"]
    by_kind: dict[str, list[float]] = {}
    for node in doc["nodes"]:
        by_kind.setdefault(node["kind"], []).append(centre_y(boxes[node["id"]]))
    assert min(by_kind["token"]) > max(by_kind["feature"]) > min(by_kind["feature"]) > max(by_kind["logit"])
    assert_inside_canvas(root)


def test_attribution_cells_sit_in_their_token_column() -> None:
    doc = attribution_doc("The")
    root = parse(render_svg(doc, "t"))
    boxes = node_boxes(root)
    centre_x = {node: (box[0] + box[2]) / 2 for node, box in boxes.items()}
    ids = {(n["kind"], n["layer"], n["pos"], n["feature"]): n["id"] for n in doc["nodes"]}
    first, second = ids[("feature", 0, 1, 5)], ids[("feature", 0, 1, 7)]
    error = ids[("error", 0, 1, None)]
    assert centre_y(boxes[first]) == centre_y(boxes[second]) == centre_y(boxes[error])  # one cell, one row
    assert centre_x[first] < centre_x[second] < centre_x[error]  # side by side, features first
    token0, token1 = ids[("token", -1, 0, None)], ids[("token", -1, 1, None)]
    assert centre_x[token0] < min(centre_x[first], centre_x[second]) < centre_x[token1] < centre_x[error]
    labels = {
        t.findtext("svg:tspan", namespaces=NS): float(t.get("x", "nan"))
        for t in root.iterfind(".//svg:text", NS)
        if t.get("class") == "token-label"
    }
    dx, _ = offset_of(root, "axis")
    assert list(labels) == ["The", " cat", " sat"]  # the node-less last position still gets its token
    assert labels["The"] + dx == pytest.approx(centre_x[token0], abs=0.2)
    assert labels[" sat"] > labels[" cat"]


def test_colour_and_width_follow_each_edges_sign_and_size() -> None:
    doc = edge_doc()
    doc["links"][1]["score"] = math.nan  # a NaN score: drawn, thin and grey
    paths = {p.get("data-name"): p for p in edge_paths(parse(render_svg(doc, "t")))}
    scores = {link["name"]: link["score"] for link in in_circuit(doc)}
    assert set(paths) == set(scores) and len(paths) == sum(KEEP)
    strongest = max(abs(v) for v in scores.values() if not math.isnan(v))
    assert strongest == 2.0
    expected_colour = {
        "input->a0.h0<q>": POSITIVE,
        "input->a0.h0<k>": NEUTRAL,
        "a0.h0->m1": POSITIVE,
        "m1->logits": NEGATIVE,
        "a0.h1->logits": NEUTRAL,
    }
    assert {name: p.get("stroke") for name, p in paths.items()} == expected_colour
    assert (POSITIVE, NEGATIVE) == ("#1f5fbf", "#c23b22")
    for name, path in paths.items():
        size = 0.0 if math.isnan(scores[name]) else abs(scores[name])
        assert float(path.get("stroke-width", "nan")) == pytest.approx(1 + 5 * size / strongest, abs=0.005)
        marker = {POSITIVE: "pos", NEGATIVE: "neg", NEUTRAL: "zero"}[expected_colour[name]]
        assert path.get("marker-end") == f"url(#circuitd-arrow-{marker})"
        assert re.fullmatch(r"M[-\d.]+,[-\d.]+ Q[-\d.]+,[-\d.]+ [-\d.]+,[-\d.]+", path.get("d", ""))
    # the strongest edge lies on top: edges are drawn weakest first
    assert [p.get("data-name") for p in paths.values()][-1] == "m1->logits"


def test_grouped_key_value_edges_are_drawn_into_each_reading_head() -> None:
    meta = {"model": "m", "edge_layout": {"n_heads": 4, "n_key_value_heads": 2}}
    names = ["input->a0.kv1<k>", "input->a0.h0<q>", "a0.h3->logits"]
    doc = to_node_link(build_edge_circuit(names, [1.0, -1.0, 0.5], [True] * 3, meta))
    root = parse(render_svg(doc, "t"))
    drawn = [(p.get("data-name"), p.get("d")) for p in edge_paths(root)]
    assert len(drawn) == len(doc["links"]) == 4  # the key edge reaches a0.h2 and a0.h3
    assert [n for n, _ in drawn].count("input->a0.kv1<k>") == 2 and len({d for _, d in drawn}) == 4
    summary = root.findtext("svg:desc", namespaces=NS) or ""
    assert "3 edges, 5 nodes" in summary


# ---- inert and stable -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["edge-circuit", "attribution"])
def test_hostile_text_is_escaped_and_the_picture_stays_inert(kind: str) -> None:
    nasty = HOSTILE + "\x00\x1b\ud800"  # characters XML 1.0 cannot hold at all
    if kind == "attribution":
        doc = attribution_doc(nasty)
        old_id = doc["nodes"][0]["id"]  # a node id from the file is text like any other
        doc["nodes"][0]["id"] = nasty
        for link in doc["links"]:
            link.update({end: nasty for end in ("source", "target") if link[end] == old_id})
    else:
        doc = edge_doc({"model": nasty, "task": "ioi", "method": "eap"})
        doc["links"][0]["name"] = nasty
    svg = render_svg(doc, nasty)
    root = parse(svg)  # still one well-formed document
    tags = {element.tag for element in root.iter()}
    assert not any(tag.endswith(("script", "foreignObject", "image", "a")) for tag in tags)
    assert "<script" not in svg.lower() and "</svg>" not in svg[:-8] and "<!--" not in svg
    assert svg.rstrip().endswith("</svg>") and svg.count("<svg") == 1
    shown = HOSTILE + "\ufffd\ufffd\ufffd"
    assert root.findtext("svg:title", namespaces=NS) == shown
    if kind == "attribution":
        tokens = [
            t.findtext("svg:tspan", namespaces=NS)
            for t in root.iterfind(".//svg:text", NS)
            if t.get("class") == "token-label"
        ]
        assert tokens[0] is not None and tokens[0].startswith(HOSTILE[:5])  # clipped to its column
        assert any(shown in (t.text or "") for t in root.iterfind(".//svg:title", NS))  # full in a tooltip
        assert shown in node_boxes(root)
    else:
        assert shown in [p.get("data-name") for p in edge_paths(root)]
        assert (root.findtext("svg:desc", namespaces=NS) or "").startswith(shown)
    # nothing outside the picture: only fragment references, the namespace the one address
    refs = [v for element in root.iter() for k, v in element.attrib.items() if "url(" in v or "href" in k]
    assert refs and all(re.fullmatch(r"url\(#circuitd-arrow-(pos|neg|zero)\)", v) for v in refs)
    assert re.findall(r"https?://[^\"]*", svg) == [SVG_NS]


def test_same_input_gives_the_same_bytes(tmp_path: Path) -> None:
    source = tmp_path / "c.json"
    write_json(build_edge_circuit(NAMES, SCORES, KEEP, {"model": "m"}, all_edges=True), source)
    outputs = []
    for seed in ("1", "2"):  # fresh processes with different hash seeds: no set order leaks out
        out = tmp_path / f"c{seed}.svg"
        done = subprocess.run(
            [sys.executable, "-m", "circuitd.cli", "view", str(source), "--svg", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and len(outputs[0]) > 1000
    doc = attribution_doc("a")
    assert render_svg(doc, "t") == render_svg(json.loads(json.dumps(doc)), "t")


def test_full_gpt2_edge_graph_draws_in_seconds() -> None:
    names = EdgeGraph(model_shape("random:gpt2-small")).edge_names
    scores = [((i * 7919) % 1000 - 500) / 500 for i in range(len(names))]
    doc = to_node_link(build_edge_circuit(names, scores, [True] * len(names), {"model": "gpt2"}))
    started = time.perf_counter()
    svg = render_svg(doc, "all of GPT-2 small")
    seconds = time.perf_counter() - started
    root = parse(svg)
    assert len(edge_paths(root)) == len(names) == 32491
    assert len(node_boxes(root)) == 1 + 12 * 12 + 12 + 1
    assert seconds < 20, f"{seconds:.1f}s"  # about half a second on one core: linear, not quadratic
    assert_inside_canvas(root)


# ---- the command ----------------------------------------------------------------------------------


def test_view_svg_command_writes_the_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "c.json", tmp_path / "c.svg"
    write_json(build_edge_circuit(NAMES, SCORES, KEEP, {"model": "m"}, all_edges=True), source)
    svg = view_svg(source, out, "--title", "IOI & friends")
    root = parse(svg)
    assert root.findtext("svg:title", namespaces=NS) == "IOI & friends"
    assert len(edge_paths(root)) == sum(KEEP)
    assert capsys.readouterr().out.strip() == f"{source} -> {out}"
    assert not (tmp_path / "c.svg.tmp").exists()


@pytest.mark.parametrize(
    "content,reason",
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ('{"graph": {}, "nodes": [{"id": "x9"}], "links": []}', "not a node name: 'x9'"),
        (
            '{"graph": {}, "nodes": [{"id": "input"}], '
            '"links": [{"source": "input", "target": "logits", "score": 1.0, "name": "input->logits"}]}',
            "edge 'input->logits': 'logits' is not a node of the file",
        ),
        (
            '{"graph": {}, "nodes": [{"id": "input"}, {"id": "logits"}], '
            '"links": [{"source": "input", "target": "logits", "score": "big"}]}',
            "score is not a number",
        ),
        (
            '{"graph": {"kind": "attribution"}, "nodes": [{"id": "t", "layer": -1, "pos": "0"}], '
            '"links": []}',
            "attribution node 't': 'pos' is not an integer",
        ),
    ],
)
def test_bad_file_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, reason: str
) -> None:
    source, out = tmp_path / "graph.json", tmp_path / "out.svg"
    if content is not None:
        source.write_text(content)
    assert main(["view", str(source), "--svg", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"circuitd: error: {source}: ") and reason in err
    assert not out.exists() and not (tmp_path / "out.svg.tmp").exists()
