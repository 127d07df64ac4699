"""Node-link JSON: top-level ``directed``, ``multigraph``, ``graph``, ``nodes``, ``links``;
each link has ``source``, ``target``, ``key`` and the edge's attributes. Written by hand
so the layout stays fixed whatever networkx version is installed.

Every graph circuitd writes names its format in ``graph.format``, ``<name>/<major>``: a reader
takes the major versions it knows and refuses a newer one in one line, so a file from a later
circuitd is never misread. Files from before versioning (no ``format``) read as version 1.
A change that old readers would misread bumps the major version; an added field does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeGuard

import networkx as nx

EDGE_CIRCUIT_FORMAT = "circuitd.edge-circuit/1"
ATTRIBUTION_GRAPH_FORMAT = "circuitd.attribution-graph/1"
READABLE = {"circuitd.edge-circuit": 1, "circuitd.attribution-graph": 1}  # name -> newest major read


def check_format(value: object) -> None:
    """Refuse a graph whose ``graph.format`` this version cannot read (None: a legacy file, v1)."""
    if value is None:
        return
    name, _, major = str(value).partition("/")
    if name not in READABLE:
        raise ValueError(f"graph.format: '{value}' is not a circuitd graph format ({', '.join(READABLE)})")
    if not major.split(".")[0].isdigit():
        raise ValueError(f"graph.format: '{value}' has no major version (expected {name}/<major>)")
    if int(major.split(".")[0]) > READABLE[name]:
        raise ValueError(
            f"graph.format: '{value}' is newer than this circuitd reads ({name}/{READABLE[name]}); "
            "upgrade circuitd to read it"
        )


def _is_multi(graph: nx.DiGraph[str]) -> TypeGuard[nx.MultiDiGraph[str]]:
    return graph.is_multigraph()


def to_node_link(graph: nx.MultiDiGraph[str] | nx.DiGraph[str]) -> dict[str, Any]:
    multi = _is_multi(graph)
    nodes: list[dict[str, Any]] = [{"id": n, **attrs} for n, attrs in graph.nodes(data=True)]
    links: list[dict[str, Any]] = []
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


def from_node_link(data: dict[str, Any]) -> nx.MultiDiGraph[str] | nx.DiGraph[str]:
    for field in ("directed", "multigraph", "graph", "nodes", "links"):
        if field not in data:
            raise ValueError(f"node-link JSON lacks '{field}'")
    check_format(data["graph"].get("format"))
    graph: nx.MultiDiGraph[str] | nx.DiGraph[str] = nx.MultiDiGraph() if data["multigraph"] else nx.DiGraph()
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


def write_json(graph: nx.MultiDiGraph[str] | nx.DiGraph[str], path: str | Path) -> None:
    """Write atomically: a crash never leaves half a file behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_node_link(graph), indent=1, default=_jsonable))
    tmp.replace(path)


def read_json(path: str | Path) -> nx.MultiDiGraph[str] | nx.DiGraph[str]:
    return from_node_link(json.loads(Path(path).read_text()))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
