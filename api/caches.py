"""What the API keeps between requests: decompressed graphs of finished jobs and re-pruned views
of attribution graphs. A finished job's graph never changes, so neither do its views; a
deleted job is forgotten (``forget``). Cached graphs are shared between requests: read only.
"""

from __future__ import annotations

import json
from typing import TypeAlias

import networkx as nx
from fastapi import HTTPException, status

from circuitd.lru import LRU
from circuitd.settings import get_settings
from circuitd.store import Job, JobStatus, Store
from graphs import attribution_queries as aq
from graphs import from_node_link

Graph: TypeAlias = "nx.MultiDiGraph[str] | nx.DiGraph[str]"
ViewKey = tuple[str, float, float]  # job id, node threshold, edge threshold


class GraphCache:
    """Decompressed graphs of succeeded jobs with their stored bytes, most recently used kept."""

    def __init__(self, size: int = 32):
        self._lru: LRU[str, tuple[bytes, Graph]] = LRU(size)

    def get(self, st: Store, job: Job) -> tuple[bytes, Graph]:
        if job.status != JobStatus.succeeded:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"job {job.id} is {job.status}: a graph exists once it succeeded"
            )

        def load() -> tuple[bytes, Graph]:
            raw = st.load_graph_bytes(job.id)
            if raw is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} has no stored graph")
            return raw, from_node_link(json.loads(raw))

        return self._lru.get_or_make(job.id, load)

    def forget(self, job_id: str) -> None:
        self._lru.forget(lambda k: k == job_id)


class PrunedViews:
    """Attribution graphs re-pruned at given thresholds (a dense solve each), per job and
    thresholds; also their Neuronpedia documents, which prune the same way."""

    def __init__(self, size: int):
        self.graphs: LRU[ViewKey, nx.DiGraph[str]] = LRU(size)
        self.neuronpedia: LRU[ViewKey, bytes] = LRU(size)

    @staticmethod
    def key(job_id: str, full: nx.DiGraph[str], node_threshold: float | None,
            edge_threshold: float | None) -> ViewKey:
        """Thresholds left out are the stored ones, so both spellings share an entry."""
        nt = full.graph["node_threshold"] if node_threshold is None else node_threshold
        et = full.graph["edge_threshold"] if edge_threshold is None else edge_threshold
        return job_id, float(nt), float(et)

    def pruned(self, job_id: str, full: nx.DiGraph[str], node_threshold: float | None = None,
               edge_threshold: float | None = None) -> nx.DiGraph[str]:
        _, nt, et = k = self.key(job_id, full, node_threshold, edge_threshold)
        return self.graphs.get_or_make(k, lambda: aq.reprune(full, nt, et))

    def forget(self, job_id: str) -> None:
        for lru in (self.graphs, self.neuronpedia):
            lru.forget(lambda k: k[0] == job_id)


graphs = GraphCache()
views = PrunedViews(get_settings().reprune_cache_size)
