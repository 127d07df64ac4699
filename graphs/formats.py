"""Node-link JSON: top-level ``directed``, ``multigraph``, ``graph``, ``nodes``, ``links``;
each link has ``source``, ``target``, ``key`` and the edge's attributes. Written by hand
so the layout stays fixed whatever networkx version is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx


def to_node_link(graph: nx.MultiDiGraph | nx.DiGraph) -> dict[str, Any]:
    multi = graph.is_multigraph()
    nodes = [{"id": n, **attrs} for n, attrs in graph.nodes(data=True)]
    links = []
    if multi:
        for u, v, k, attrs in graph.edges(keys=True, data=True):
            links.append({"source": u, "target": v, "key": k, **attrs})
    else:
        for u, v, attrs in graph.edges(data=True):
            links.append({"source": u, "target": v, **attrs})
    return {
        "directed": graph.is_directed(),
        "multigraph": multi,
        "graph": dict(graph.graph),
        "nodes": nodes,
        "links": links,
    }


def from_node_link(data: dict[str, Any]) -> nx.MultiDiGraph | nx.DiGraph:
    for field in ("directed", "multigraph", "graph", "nodes", "links"):
        if field not in data:
            raise ValueError(f"node-link JSON lacks '{field}'")
    graph: nx.MultiDiGraph | nx.DiGraph = nx.MultiDiGraph() if data["multigraph"] else nx.DiGraph()
    graph.graph.update(data["graph"])
    for node in data["nodes"]:
        attrs = {k: v for k, v in node.items() if k != "id"}
        graph.add_node(node["id"], **attrs)
    for link in data["links"]:
        attrs = {k: v for k, v in link.items() if k not in ("source", "target", "key")}
        if data["multigraph"]:
            graph.add_edge(link["source"], link["target"], key=link.get("key", 0), **attrs)
        else:
            graph.add_edge(link["source"], link["target"], **attrs)
    return graph


def write_json(graph: nx.MultiDiGraph | nx.DiGraph, path: str | Path) -> None:
    """Write atomically: a crash never leaves half a file behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_node_link(graph), indent=1, default=_jsonable))
    tmp.replace(path)


def read_json(path: str | Path) -> nx.MultiDiGraph | nx.DiGraph:
    return from_node_link(json.loads(Path(path).read_text()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
