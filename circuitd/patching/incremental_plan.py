"""The bookkeeping of an incremental trial (:mod:`circuitd.patching.incremental`): which
nodes and ports are full, the changes a trial recomputes, how a stage reads them, and the
row gathers and products they go through."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class _Modes:
    """Which nodes and ports are full (every position) rather than answer-only."""

    node_full: torch.Tensor  # [n_sources] bool
    port_full: list[torch.Tensor]  # per stage [ports] bool


@dataclass
class _Change:
    """Nodes of one stage recomputed in a trial: their change, at the live positions for
    full nodes (``delta [k, R, T, D]``), and at the answer positions (``ans [k, R, B, D]``)."""

    nodes: torch.Tensor
    last: int  # the largest node index
    delta: torch.Tensor | None
    ans: torch.Tensor
    key: tuple[tuple[int, ...], bool] = field(init=False)  # which nodes, full or not

    def __post_init__(self) -> None:
        self.key = (tuple(self.nodes.tolist()), self.delta is not None)


@dataclass
class _ReadPlan:
    """How one stage reads a set of changes (fixed while trials run at one stage): the
    full and answer ports that take changes, and the kept edges from the changed nodes
    to them as weights ``[ports, changed nodes]`` (full changes only for full ports)."""

    pfull: torch.Tensor
    pans: torch.Tensor
    w_full: torch.Tensor | None
    w_ans: torch.Tensor | None


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` for sorted indices, as a view where they are a contiguous run."""
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) == n - 1:
        lo = int(idx[0])
        return t[lo : lo + n]
    return t.index_select(0, idx)


def _mix(weights: torch.Tensor, values: list[torch.Tensor]) -> torch.Tensor:
    """``weights [p, k] @ values`` for the values ``[k_i, R, ...]`` stacked along k:
    ``[p, R, ...]``."""
    v = values[0] if len(values) == 1 else torch.cat(values)
    return (weights @ v.reshape(v.shape[0], -1)).view(weights.shape[0], *v.shape[1:])


def _port_inputs(
    base: torch.Tensor, ports: torch.Tensor, coef: torch.Tensor, diff: torch.Tensor
) -> torch.Tensor:
    """New inputs ``[p, R, ...]`` of ``ports`` (their kept inputs ``base[ports]``) when
    circuit r swaps sources for their ablated values with ``coef [R, p, s]`` (0/1) and
    ``diff [s, ...]`` (ablated - kept)."""
    r, p, s = coef.shape
    add = (coef.transpose(0, 1).reshape(p * r, s) @ diff.reshape(s, -1)).view(p, r, *diff.shape[1:])
    return add.add_(_rows(base, ports).unsqueeze(1))


def _match(want: torch.Tensor, ports: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in ``want`` of the ports that are in ``ports`` (sorted), and their rows
    in ``ports``."""
    if not ports.numel():
        return want[:0], want[:0]
    rows = torch.searchsorted(ports, want).clamp(max=ports.numel() - 1)
    hit = (ports.index_select(0, rows) == want).nonzero().squeeze(1)
    return hit, rows.index_select(0, hit)
