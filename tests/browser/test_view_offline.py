"""``circuitd view`` pages in headless Chromium, opened from file:// with every network request
blocked: they render, draw what the graph file holds, and react to the top-N control and to a
node selection, with no console or page error (the ``page`` fixture fails the test on one).

The graph files come from the CLI on the small zoo model, as a user would make them; the counts
the page must show are read from those files, not from the viewer's code."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

pytestmark = pytest.mark.browser

READY_MS = 60_000  # first render of a few hundred elements on a loaded 2-core machine
TOP_N = 10


@dataclass(frozen=True)
class Viewed:
    """A graph file as the CLI wrote it, and the page ``circuitd view`` made of it."""

    doc: dict[str, Any]
    html: Path


def circuitd(*args: str) -> None:
    """Run the CLI in a child process; its stderr becomes the failure message."""
    done = subprocess.run(
        [sys.executable, "-m", "circuitd.cli", *args], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        pytest.fail(f"circuitd {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")


def discover_and_view(directory: Path, method: str, *extra: str) -> Viewed:
    graph, html = directory / f"{method}.json", directory / f"{method}.html"
    circuitd(
        "discover", "--model", "zoo:synth", "--task", "ioi", "--method", method, *extra, "--out", str(graph)
    )
    circuitd("view", str(graph), "-o", str(html))
    return Viewed(json.loads(graph.read_text(encoding="utf-8")), html)


@pytest.fixture(scope="module")
def edge_view(tmp_path_factory: pytest.TempPathFactory) -> Viewed:
    return discover_and_view(tmp_path_factory.mktemp("edge-view"), "eap", "--all-edges", "--top-n", "40")


@pytest.fixture(scope="module")
def attribution_view(tmp_path_factory: pytest.TempPathFactory) -> Viewed:
    return discover_and_view(tmp_path_factory.mktemp("attribution-view"), "attribution-graph")


def open_viewer(page: Page, viewed: Viewed) -> None:
    page.goto(viewed.html.as_uri())
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=READY_MS)


def viewer(page: Page, call: str) -> Any:
    return page.evaluate(f"window.circuitdViewer.{call}")


def circuit_links(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The edges of the circuit: an ``--all-edges`` file also holds every scored edge outside it."""
    return [link for link in doc["links"] if link["in_circuit"]]


def test_edge_view_draws_the_circuit_and_follows_top_n(page: Page, edge_view: Viewed) -> None:
    n_edges = edge_view.doc["graph"]["metrics"]["n_edges"]
    assert len(circuit_links(edge_view.doc)) == n_edges  # how the file counts its circuit
    assert len(edge_view.doc["links"]) == edge_view.doc["graph"]["metrics"]["n_edges_total"]
    assert TOP_N < n_edges < len(edge_view.doc["links"])  # so both numbers below are informative
    open_viewer(page, edge_view)
    assert viewer(page, "kind") == "edge-circuit"
    assert viewer(page, "drawnEdges()") == n_edges
    viewer(page, f"setTopN({TOP_N})")
    assert viewer(page, "drawnEdges()") == TOP_N
    viewer(page, f"setTopN({n_edges})")
    assert viewer(page, "drawnEdges()") == n_edges


def test_edge_view_selection_lists_the_node_edges(page: Page, edge_view: Viewed) -> None:
    links = circuit_links(edge_view.doc)
    degree: dict[str, int] = {}
    for link in links:
        for end in (link["source"], link["target"]):
            degree[end] = degree.get(end, 0) + 1
    node = max(sorted(degree), key=lambda n: degree[n])  # the busiest node: several edges to list
    incident = {link["name"] for link in links if node in (link["source"], link["target"])}
    assert len(incident) == degree[node] >= 2
    open_viewer(page, edge_view)
    viewer(page, f"select({json.dumps(node)})")
    panel = page.locator(".cv-panel").inner_text()
    words = set(panel.split())
    listed = {link["name"] for link in links if link["name"] in words}
    assert node in words
    assert listed == incident, (
        f"side panel for {node}: missing {sorted(incident - listed)}, foreign {sorted(listed - incident)}"
    )


def test_attribution_view_draws_every_node(page: Page, attribution_view: Viewed) -> None:
    meta = attribution_view.doc["graph"]
    assert len(attribution_view.doc["nodes"]) == meta["n_nodes"]
    open_viewer(page, attribution_view)
    assert viewer(page, "kind") == "attribution"
    assert viewer(page, "drawnNodes()") == meta["n_nodes"]


@pytest.fixture(scope="module")
def node_view(tmp_path_factory: pytest.TempPathFactory) -> Viewed:
    return discover_and_view(
        tmp_path_factory.mktemp("node-view"), "eap", "--level", "node", "--all-edges", "--top-n", "6"
    )


@pytest.fixture(scope="module")
def neuron_view(tmp_path_factory: pytest.TempPathFactory) -> Viewed:
    return discover_and_view(
        tmp_path_factory.mktemp("neuron-view"), "eap", "--level", "neuron", "--all-edges", "--top-n", "40"
    )


def ranked_units(doc: dict[str, Any]) -> list[str]:
    """Heads and MLPs (or neurons) by |score|, file order breaking ties: what the slider ranks."""
    units = [n for n in doc["nodes"] if n["kind"] not in ("input", "logits")]
    return [n["id"] for n in sorted(units, key=lambda n: -abs(n["score"]))]


def node_circuit_edges(doc: dict[str, Any], kept: set[str]) -> int:
    """Edges of a node circuit: out of a kept node or the input, into a kept node or the logits."""
    return sum(
        1 for link in doc["links"]
        if (link["source"] in kept or link["source"] == "input")
        and (link["target"] in kept or link["target"] == "logits")
    )


def test_node_level_view_draws_the_node_circuit_and_ranks_nodes(page: Page, node_view: Viewed) -> None:
    meta = node_view.doc["graph"]
    assert meta["level"] == "node" and meta["metrics"]["n_nodes"] == 6
    doc = node_view.doc
    kept = {n["id"] for n in doc["nodes"] if n["kind"] not in ("input", "logits") and n["in_circuit"]}
    assert node_circuit_edges(doc, kept) == meta["metrics"]["n_edges"] == len(circuit_links(doc))
    open_viewer(page, node_view)
    assert viewer(page, "drawnEdges()") == meta["metrics"]["n_edges"]
    assert viewer(page, "drawnNodes()") == 6 + 2  # with input and logits
    top3 = set(ranked_units(node_view.doc)[:3])
    assert viewer(page, "setTopN(3)") == node_circuit_edges(node_view.doc, top3)
    assert page.locator(".cv-controls").inner_text().startswith("top nodes by |score|")


def test_neuron_level_view_draws_the_chosen_neurons(page: Page, neuron_view: Viewed) -> None:
    meta = neuron_view.doc["graph"]
    assert meta["level"] == "neuron" and meta["metrics"]["n_neurons"] == 40 and not neuron_view.doc["links"]
    open_viewer(page, neuron_view)
    assert viewer(page, "drawnNodes()") == 40
    viewer(page, "setTopN(100)")
    assert viewer(page, "drawnNodes()") == 100
    best = ranked_units(neuron_view.doc)[0]
    viewer(page, f"select({json.dumps(best)})")
    assert best in page.locator(".cv-panel").inner_text()


@pytest.fixture(scope="module")
def position_view(tmp_path_factory: pytest.TempPathFactory) -> Viewed:
    directory = tmp_path_factory.mktemp("position-view")
    graph, html = directory / "positions.json", directory / "positions.html"
    circuitd(
        "discover", "--model", "zoo:synth", "--task", "induction", "--method", "eap", "--positions",
        "--top-n", "30", "--n-prompts", "8", "--out", str(graph),
    )
    circuitd("view", str(graph), "-o", str(html))
    return Viewed(json.loads(graph.read_text(encoding="utf-8")), html)


def test_position_aware_view_lists_each_edge_with_its_position(page: Page, position_view: Viewed) -> None:
    links = circuit_links(position_view.doc)
    open_viewer(page, position_view)
    assert viewer(page, "drawnEdges()") == position_view.doc["graph"]["metrics"]["n_edges"] == len(links)
    into = [link for link in links if link["target"] == "logits"]
    assert into, "the circuit reaches the logits"
    viewer(page, 'select("logits")')
    panel = page.locator(".cv-panel").inner_text()
    for link in into:
        assert f"{link['name']} ({link['position_name']})" in panel
