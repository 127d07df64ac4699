"""How the fast path plans a trial: the branches of taus that share a circuit, the chance
that each candidate edge is kept, which candidates each row removes, and how many rows a
trial asks for."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from circuitd.patching import IncrementalPass


@dataclass
class Branch:
    """Taus (ascending, as positions in the sorted list) that share one circuit so far."""

    taus: list[int]
    keep: torch.Tensor
    effects: torch.Tensor
    tested: torch.Tensor
    current: float  # the metric of ``keep``
    queue: list[int] = field(default_factory=list)  # this block's candidates, in test order
    pos: int = 0  # next candidate
    span: int = 1  # rows to ask for next time
    states: list[IncrementalPass] = field(default_factory=list)  # per minibatch, of ``keep``
    row: int = -1  # the last row of the current trial whose removals this branch took
    block_tests: int = 0  # tests and kept edges in the current block (for the span planner)
    block_keeps: int = 0
    run_tests: int = 0  # and in the whole run so far (the prior for a new block)
    run_keeps: int = 0

    def p_keep(self) -> float:
        """The chance that the next candidate is kept: the block's rate so far, shrunk
        towards the run's (a prefiltered start keeps most of what it tests, a full one
        little)."""
        prior = (self.run_keeps + 1) / (self.run_tests + 2)
        return (self.block_keeps + 2 * prior) / (self.block_tests + 2)

    def count(self, tests: int, keeps: int) -> None:
        self.block_tests, self.block_keeps = self.block_tests + tests, self.block_keeps + keeps
        self.run_tests, self.run_keeps = self.run_tests + tests, self.run_keeps + keeps

    def split(self, n_low: int) -> Branch:
        """A copy holding the ``n_low`` smallest taus, which leave this branch (its
        incremental states are the parent's until :meth:`_FastACDC.settle` copies them)."""
        low = Branch(self.taus[:n_low], self.keep.clone(), self.effects.clone(), self.tested.clone(),
                      self.current, self.queue, self.pos, self.span, self.states, self.row,
                      self.block_tests, self.block_keeps, self.run_tests, self.run_keeps)
        self.taus = self.taus[n_low:]
        return low


class KeepModel:
    """The chance that a candidate edge is kept. Two predictors: the branch's keep rate
    (the block's, shrunk towards the run's), and the edge's attribution score through a
    logistic fit of ``log |score|`` to the run's decisions so far (refitted once per
    block). EAP-IG scores rank the edges ACDC keeps well (on zoo:synth / ioi with KL and
    tau 2e-5, the kept edges outrank the removed ones in 93% of pairs), but one fit over
    every stage misjudges stages whose scores run larger or smaller than the rest (the
    edges out of the input, the edges into MLPs). So each stage uses the predictor with
    the smaller log-loss on its decisions so far; the rate until the scores do better."""

    def __init__(self, scores: torch.Tensor | None):
        self.x = None if scores is None else scores.detach().abs().double().cpu().clamp_min(1e-30).log()
        self.x_list = [] if self.x is None else self.x.tolist()  # read one edge at a time
        self.seen: list[tuple[int, bool]] = []
        self.coef: tuple[float, float] | None = None  # intercept, slope
        self._fitted = 0
        self.loss: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])  # stage -> rate, scores

    def _by_score(self, edge: int) -> float:
        assert self.coef is not None
        z = self.coef[0] + self.coef[1] * self.x_list[edge]
        return 1 / (1 + math.exp(-max(-60.0, min(60.0, z))))

    def observe(self, edge: int, kept: bool, rate: float, stage: int) -> None:
        """A decision, and what each predictor said of it (``rate``: the keep rate then)."""
        if self.x is None:
            return
        self.seen.append((edge, kept))
        if self.coef is not None:
            loss = self.loss[stage]
            for i, p in enumerate((rate, self._by_score(edge))):
                loss[i] -= math.log(max(1e-9, p if kept else 1 - p))

    def refit(self) -> None:
        """Newton steps of a lightly ridged logistic regression (from the last fit)."""
        if self.x is None or len(self.seen) == self._fitted:
            return
        self._fitted = len(self.seen)
        edges = torch.tensor([e for e, _ in self.seen])
        y = torch.tensor([float(k) for _, k in self.seen], dtype=torch.float64)
        if y.min() == y.max():
            return
        feats = torch.stack([torch.ones_like(y), self.x[edges]], 1)  # [n, 2]
        coef = torch.tensor(self.coef or (0.0, 0.0), dtype=torch.float64)
        ridge = 1e-3 * torch.eye(2, dtype=torch.float64)
        for _ in range(8):
            prob = torch.sigmoid(feats @ coef)
            grad = feats.T @ (prob - y) + ridge @ coef
            hess = (feats * (prob * (1 - prob))[:, None]).T @ feats + ridge
            step = torch.linalg.solve(hess, grad)
            coef = coef - step
            if float(step.abs().max()) < 1e-6:
                break
        self.coef = (float(coef[0]), float(coef[1]))

    def p_keep(self, edges: list[int], rate: float, stage: int) -> list[float]:
        loss = self.loss.get(stage)
        if self.x is None or self.coef is None or loss is None or loss[1] >= loss[0]:
            return [rate] * len(edges)
        return [self._by_score(e) for e in edges]


def removals(kept_pred: Sequence[bool]) -> torch.Tensor:
    """Which candidates each row of a trial removes ``[rows, candidates]``: row j tests
    candidate j with each earlier candidate removed unless it is predicted kept."""
    n = len(kept_pred)
    removed_before = ~torch.tensor(list(kept_pred), dtype=torch.bool)[None, :]
    return (removed_before & torch.ones(n, n, dtype=torch.bool).tril(-1)) | torch.eye(n, dtype=torch.bool)


class SpanPlanner:
    """Rows per incremental trial. Row j of a trial assumes every earlier candidate's
    predicted outcome, so a trial decides the candidates up to the first wrong prediction:
    with ``q_i`` the chance that prediction i holds, ``sum_j prod_{i<j} q_i`` edges on
    average. Its cost at a stage is fitted as ``a + b n`` seconds from the last trials
    there. The span maximises edges decided per second: wide where a trial's fixed cost
    dominates (late stages, few nodes to recompute) or predictions hold, one where each
    row costs much (early stages, whose changes reach most of the circuit)."""

    WINDOW = 12
    # a trial ends at the first candidate whose prediction holds with less than this chance:
    # the fit's cost per row misses what wide trials cost in memory, every row thrown away is
    # an evaluation spent, and a cut at a fixed odds keeps the count of evaluations from
    # swinging with the measured timings
    MIN_HOLD = 0.75

    def __init__(self) -> None:
        self.samples: dict[int, deque[tuple[int, float]]] = defaultdict(lambda: deque(maxlen=self.WINDOW))

    def record(self, stage: int, rows: int, seconds: float) -> None:
        self.samples[stage].append((rows, seconds))

    def fit(self, stage: int) -> tuple[float, float] | None:
        """``(a, b)`` from the stage's recent trials; None until their sizes differ."""
        pts = self.samples.get(stage)
        if not pts or len({n for n, _ in pts}) < 2:
            return None
        mean_n = sum(n for n, _ in pts) / len(pts)
        mean_t = sum(t for _, t in pts) / len(pts)
        var = sum((n - mean_n) ** 2 for n, _ in pts)
        b = sum((n - mean_n) * (t - mean_t) for n, t in pts) / var
        a = mean_t - b * mean_n
        if b <= 0:  # no measurable cost per row
            return mean_t, mean_t * 1e-3
        if a < 0:  # no measurable fixed cost
            return 0.0, b
        return a, b

    def span(self, stage: int, hold: list[float], limit: int, fallback: int) -> int:
        """The span for the next trial at ``stage``, given the chances ``hold`` that the
        next candidates' predictions hold; before a fit, ``fallback`` (at most the expected
        run of right predictions), and then a second size so that a fit exists."""
        limit = max(1, min(limit, len(hold)))
        unsure = next((i for i, q in enumerate(hold[:limit]) if q < self.MIN_HOLD), None)
        if unsure is not None:  # rows past a near coin flip are as likely thrown away as used
            limit = unsure + 1
        fit = self.fit(stage)
        if fit is None:
            sizes = {n for n, _ in self.samples.get(stage, ())}
            if len(sizes) == 1:
                (n0,) = sizes
                return 1 if n0 > 1 else min(limit, 2)
            return max(1, min(limit, fallback, math.ceil(1 / max(1e-9, 1 - hold[0]))))
        a, b = fit
        best, best_rate, decided, reach = 1, -1.0, 0.0, 1.0
        for n in range(1, limit + 1):
            decided += reach  # candidate n-1 is decided if every earlier prediction held
            reach *= hold[n - 1]
            rate = decided / (a + b * n)
            if rate > best_rate:
                best, best_rate = n, rate
        return best
