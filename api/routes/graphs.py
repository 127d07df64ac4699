"""``/v1/jobs/{id}/graph``: the graph of a succeeded job and questions asked of it.

``all_edges=true`` works on every scored edge; the default is the circuit's edges only.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import networkx as nx
from fastapi import APIRouter, HTTPException, Query, Response, status

from api.deps import JobDep, OwnerDep, StoreDep, graphs
from circuitd.store import Job, Store
from graphs import queries, to_node_link

router = APIRouter(prefix="/jobs/{job_id}/graph", tags=["graphs"])

AllEdges = Annotated[bool, Query(description="every scored edge, not only the circuit's")]
Format = Annotated[Literal["json", "graphml"], Query(description="node-link JSON or GraphML")]


def _graph(st: Store, job: Job, all_edges: bool) -> nx.MultiDiGraph:
    _, full = graphs.get(st, job)
    return full if all_edges else queries.circuit_only(full)


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def _render(graph: nx.MultiDiGraph, fmt: str, job_id: str, suffix: str = "") -> Response:
    if fmt == "graphml":
        return Response(
            queries.to_graphml(graph), media_type="application/graphml+xml",
            headers={"Content-Disposition": f'attachment; filename="{job_id}{suffix}.graphml"'},
        )
    return _json(to_node_link(graph))


@router.get("")
def get_graph(job: JobDep, st: StoreDep, all_edges: AllEdges = False, format: Format = "json") -> Response:
    """Node-link JSON (``nodes``, ``links``, metadata in ``graph``) or GraphML."""
    raw, full = graphs.get(st, job)
    if all_edges and format == "json":
        return Response(raw, media_type="application/json")  # stored as is: no re-encoding
    return _render(full if all_edges else queries.circuit_only(full), format, job.id)


@router.get("/top")
def top(
    job: JobDep, st: StoreDep, n: Annotated[int, Query(ge=1, le=100_000)] = 20, all_edges: AllEdges = False
) -> Response:
    """The ``n`` edges of largest |score|."""
    return _json({"job": job.id, "edges": queries.top_edges(_graph(st, job, all_edges), n)})


@router.get("/nodes/{node}")
def node(job: JobDep, st: StoreDep, node: str, all_edges: AllEdges = False) -> Response:
    """A node and its incoming and outgoing edges."""
    try:
        return _json(queries.neighbourhood(_graph(st, job, all_edges), node))
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"node '{node}' is not in the graph") from exc


@router.get("/paths")
def paths(
    job: JobDep,
    st: StoreDep,
    through: Annotated[str, Query(description="a node name such as a1.h2 or m0")],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    all_edges: AllEdges = False,
) -> Response:
    """Paths from ``input`` to ``logits`` through a node."""
    try:
        return _json(queries.paths_through(_graph(st, job, all_edges), through, limit=limit))
    except KeyError as exc:
        detail = f"through: node '{through}' is not in the graph"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail) from exc


@router.get("/subgraph")
def subgraph(
    job: JobDep,
    st: StoreDep,
    min_score: Annotated[float, Query(ge=0, description="keep edges with |score| >= this")],
    format: Format = "json",
) -> Response:
    """Every scored edge with |score| at least ``min_score``, whether in the circuit or not."""
    _, full = graphs.get(st, job)
    return _render(queries.subgraph_above(full, min_score), format, job.id, "-subgraph")


@router.get("/compare/{other_id}")
def compare(
    job: JobDep, other_id: str, owner: OwnerDep, st: StoreDep, all_edges: AllEdges = False
) -> Response:
    """Edges and nodes shared by this job's circuit and another's, only in each, and Jaccard."""
    other = st.get_job(other_id, owner)
    if other is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {other_id} not found")
    result = queries.compare(_graph(st, job, all_edges), _graph(st, other, all_edges))
    return _json({"a": job.id, "b": other.id, **result})
