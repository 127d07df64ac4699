"""``/v1/jobs/{id}/graph``: the graph of a succeeded job and questions asked of it.

``all_edges=true`` works on every scored edge; the default is the circuit's edges only. An
attribution graph (method ``attribution-graph``) is stored whole, so it can also be re-pruned
with other thresholds, exported in the Neuronpedia layout, asked for its top features and the
strongest paths into a logit, and validated by a follow-up job that scales chosen nodes.

Every route here is a sync ``def``: the work (decompressing, re-pruning, enumerating paths)
runs in the threadpool, never on the event loop. Path enumeration is bounded by
``CIRCUITD_MAX_PATHS`` candidates; re-pruned views are cached per job and thresholds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import networkx as nx
from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.caches import graphs, views
from api.deps import JobDep, OwnerDep, StoreDep
from api.routes.jobs import enqueue
from api.schemas import JobOut
from circuitd.limits import MAX_NODE_ID_CHARS, MAX_SCALE, MAX_VALIDATE_NODES
from circuitd.settings import get_settings
from circuitd.spec import JobSpec, spec_error_line
from circuitd.store import Job, Store
from graphs import attribution_queries as aq
from graphs import queries, to_node_link
from graphs.eap_ig_format import to_eap_ig

router = APIRouter(prefix="/jobs/{job_id}/graph", tags=["graphs"])

GRAPH_FILES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}, "application/graphml+xml": {"schema": {"type": "string"}}},
          "description": "the graph as node-link JSON, GraphML, EAP-IG graph JSON or the Neuronpedia layout"},
}

AllEdges = Annotated[bool, Query(description="every scored edge, not only the circuit's")]
Format = Annotated[
    Literal["json", "graphml", "neuronpedia", "eap-ig"],
    Query(description="node-link JSON, GraphML, the Neuronpedia layout (attribution graphs), or "
          "EAP-IG / MIB graph JSON (edge circuits: every edge, its score and in_graph)"),
]
Threshold = Annotated[float | None, Query(ge=0, le=1, description="attribution graphs: re-prune with this")]


def _graph(st: Store, job: Job, all_edges: bool) -> nx.DiGraph[str]:
    _, full = graphs.get(st, job)
    if all_edges:
        return full
    return views.pruned(job.id, full) if aq.is_attribution(full) else queries.circuit_only(full)


def _attribution(st: Store, job: Job) -> nx.DiGraph[str]:
    _, full = graphs.get(st, job)
    if not aq.is_attribution(full):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job.id} holds an edge circuit, not an attribution graph"
        )
    return full


def _json(body: Any) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def _render(graph: nx.DiGraph[str], fmt: str, job_id: str, suffix: str = "") -> Response:
    if fmt in ("neuronpedia", "eap-ig"):
        whole = "attribution graph" if fmt == "neuronpedia" else "edge circuit"
        detail = f"format: {fmt} is the layout of a whole {whole}, at GET /graph only"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
    if fmt == "graphml":
        return Response(
            queries.to_graphml(graph), media_type="application/graphml+xml",
            headers={"Content-Disposition": f'attachment; filename="{job_id}{suffix}.graphml"'},
        )
    return _json(to_node_link(graph))


@router.get("", responses=GRAPH_FILES)
def get_graph(
    job: JobDep,
    st: StoreDep,
    all_edges: AllEdges = False,
    format: Format = "json",
    node_threshold: Threshold = None,
    edge_threshold: Threshold = None,
) -> Response:
    """Node-link JSON (``nodes``, ``links``, metadata in ``graph``), GraphML, for edge circuits
    EAP-IG / MIB graph JSON, or, for attribution graphs, the Neuronpedia layout; attribution
    graphs re-pruned when thresholds are given."""
    raw, full = graphs.get(st, job)
    attribution = aq.is_attribution(full)
    thresholds = node_threshold is not None or edge_threshold is not None
    if thresholds and all_edges:
        detail = "node_threshold, edge_threshold: they prune the graph; all_edges=true asks for all of it"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
    if not attribution and (format == "neuronpedia" or thresholds):
        detail = "format: neuronpedia and node/edge thresholds are for attribution graphs, not edge circuits"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
    if format == "eap-ig":
        if attribution:
            detail = "format: eap-ig is for edge circuits, not attribution graphs"
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
        try:  # every edge with its score and in_graph, whatever all_edges says
            return _json(to_eap_ig(full))
        except ValueError as exc:  # k/v edges per key/value head have no EAP-IG names
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from exc
    if format == "neuronpedia":
        key = views.key(job.id, full, node_threshold, edge_threshold)
        body = views.neuronpedia.get_or_make(key, lambda: _neuronpedia(full, *key))
        return Response(body, media_type="application/json")
    if all_edges and format == "json":
        return Response(raw, media_type="application/json")  # stored as is: no re-encoding
    if attribution and not all_edges:
        return _render(views.pruned(job.id, full, node_threshold, edge_threshold), format, job.id)
    return _render(_graph(st, job, all_edges), format, job.id)


def _neuronpedia(full: nx.DiGraph[str], job_id: str, node_threshold: float, edge_threshold: float) -> bytes:
    from graphs.neuronpedia import to_neuronpedia

    g = full.graph
    doc = to_neuronpedia(
        full, slug=job_id, prompt=g.get("prompt", ""), prompt_tokens=g.get("prompt_tokens", []),
        node_threshold=node_threshold, edge_threshold=edge_threshold, scan=str(g.get("model", "")),
    )
    return json.dumps(doc, separators=(",", ":")).encode()


@router.get("/top")
def top(
    job: JobDep, st: StoreDep, n: Annotated[int, Query(ge=1, le=100_000)] = 20, all_edges: AllEdges = False
) -> Response:
    """The ``n`` edges of largest |score| (``edges``); for a node- or neuron-level circuit the ``n``
    nodes or neurons of largest |score| (``nodes``), with the graph's ``level``."""
    return _json({"job": job.id, **queries.top(_graph(st, job, all_edges), n)})


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
    """The strongest paths from ``input`` to ``logits`` through a node (edge circuits; attribution
    graphs have ``/logit-paths``): at most ``limit``, ranked among at most ``CIRCUITD_MAX_PATHS``
    candidates; ``truncated`` says more exist, ``reachable`` false that none can."""
    if aq.is_attribution(graphs.get(st, job)[1]):
        detail = f"job {job.id} holds an attribution graph: ask /graph/logit-paths for its paths"
        raise HTTPException(status.HTTP_409_CONFLICT, detail)
    try:
        budget = get_settings().max_paths
        found = queries.paths_through(_graph(st, job, all_edges), through, limit=limit, max_candidates=budget)
        return _json(found)
    except KeyError as exc:
        detail = f"through: node '{through}' is not in the graph"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail) from exc


@router.get("/subgraph", responses=GRAPH_FILES)
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


@router.get("/features")
def features(job: JobDep, st: StoreDep, n: Annotated[int, Query(ge=1, le=100_000)] = 20) -> Response:
    """Attribution graphs: the ``n`` features of largest influence on the logits."""
    return _json({"job": job.id, "features": aq.top_features(_attribution(st, job), n)})


@router.get("/logit-paths")
def logit_paths(
    job: JobDep,
    st: StoreDep,
    logit: Annotated[str | None, Query(description="a logit node id (default: the most probable)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    node_threshold: Threshold = None,
    edge_threshold: Threshold = None,
) -> Response:
    """Attribution graphs: the paths into a logit of the pruned graph that carry the largest share
    of its credit (products of normalised edge weights); the search extends at most
    ``CIRCUITD_MAX_PATHS`` partial paths (``truncated`` says it stopped there)."""
    pruned = views.pruned(job.id, _attribution(st, job), node_threshold, edge_threshold)
    if logit is None:
        logit = max(aq.logit_nodes(pruned), key=lambda k: pruned.nodes[k].get("prob") or 0.0)
    try:
        found = aq.paths_to_logit(pruned, logit, limit, max_expansions=get_settings().max_paths)
        return _json({"job": job.id, **found})
    except KeyError as exc:
        detail = f"logit: '{logit}' is not a logit node of the graph ({', '.join(aq.logit_nodes(pruned))})"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail) from exc


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[Annotated[str, Field(max_length=MAX_NODE_ID_CHARS)]] = Field(
        min_length=1, max_length=MAX_VALIDATE_NODES, description="node ids of the graph to scale, each once"
    )
    scale: float = Field(
        default=0.0, ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False,
        description="their outputs' factor (0: ablate)",
    )


@router.post("/validate", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def validate(
    body: ValidateRequest,
    job: JobDep,
    owner: OwnerDep,
    st: StoreDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Queue a job that recomputes this attribution graph (deterministically) and scales the given
    nodes under frozen attention; its ``metrics.validation`` holds predicted against actual
    changes of every target logit."""
    full = _attribution(st, job)
    seen: set[str] = set()
    for n in body.nodes:
        if n in seen:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"nodes: '{n}' is given twice")
        seen.add(n)
    missing = [n for n in body.nodes if n not in full]
    if missing:
        detail = f"nodes: '{missing[0]}' is not in the graph"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
    logits = [n for n in body.nodes if full.nodes[n].get("kind") == "logit"]
    if logits:
        detail = f"nodes: '{logits[0]}' is a logit, not a source"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail)
    try:  # the stored spec was valid when it was submitted; the settings may have changed since
        spec = JobSpec.model_validate(job.spec).replace(validate_nodes=body.nodes, validate_scale=body.scale)
    except ValidationError as exc:
        detail = f"job {job.id}: its spec no longer passes this service's rules ({spec_error_line(exc)})"
        raise HTTPException(status.HTTP_409_CONFLICT, detail) from exc
    return enqueue(spec, owner, st, response, idempotency_key)
