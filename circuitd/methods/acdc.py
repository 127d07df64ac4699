"""ACDC (Conmy et al. 2023; REFERENCE §5): greedy edge pruning, exact and fast, with an
attribution-patching prefilter and a sweep over tau in one run.

Order. Destination nodes are visited from the output backwards: ``logits``; then for
l = L-1 .. 0: ``m{l}``, then the heads ``a{l}.h{H-1}`` .. ``a{l}.h0``. A head's incoming
edges are tested q first, then k, then v; within one destination input the sources go
latest first (reverse source order). A node that has no kept outgoing edge when it is
visited has no path left to the logits: its incoming edges are dropped untested.

Test. ``m`` is the metric to minimise, averaged over every prompt of the task: KL(clean ||
circuit) for ``kl``, ``nll``, and the negation of ``logit_diff`` or ``prob_diff``. Edge e
is removed from the current circuit H for good when ``m(H - e) - m(H) < tau`` (``|.| <
tau`` with ``abs``); else it is restored. Its score is that difference (0 when untested).

Evaluations. One evaluation is one circuit's metric over every prompt of the task, by a
full pass, a pass from a block, or an incremental pass. The reference spends one per
tested edge plus one for the starting circuit; the fast path counts every circuit it
evaluates, those it throws away after a wrong prediction included. The gradient passes
of the prediction scores are not evaluations of a circuit's metric: their time is
reported as ``prediction_seconds``.

:func:`acdc_reference` is the algorithm as written above, one full pass per test: the
oracle. :func:`acdc_fast` makes the same decisions with less work:

- incremental passes (:mod:`circuitd.incremental`): the current circuit's node values are
  kept, and a test recomputes only the tested destination and the nodes its change
  reaches through kept edges (a few, once the later layers are pruned), at the answer
  positions alone where nothing downstream needs more;
- the edges into one destination group (the logits; an MLP; the heads of a layer) are
  tested together, all rows of one batched computation: candidate j of a trial is tested
  with each earlier candidate removed, unless that one is predicted kept. At the first
  candidate whose outcome differs from its prediction the later rows are dropped and the
  next trial starts after it, so every decision is the one the reference makes. A
  candidate is predicted kept when the block's keep rate says so or, in the stages where
  they have predicted better so far, its EAP-IG score on a few prompts (a logistic fit
  of log |score| to the run's decisions). The number of candidates per trial maximises
  edges decided per second, from each stage's measured cost per trial and per row and
  the chance that the predictions hold;
- positions: a test recomputes full nodes only where a change can be (from where a
  prompt's corrupted version first differs, under resample ablation, to its answer);
- a list of taus runs as branches that share a circuit while their decisions agree: one
  row serves every tau of its branch, and a test whose difference falls between two taus
  splits the branch there.

Architectures the adapter cannot compute node by node run the same scheme on passes
from the cached prefix instead (the pass up to the tested block is the starting
circuit's; blocks nobody reads are not run).

Rows per trial: ``acdc_batch``, or as many as ``acdc_memory`` bytes hold (default half
the free GPU memory; on a CPU at most ``CPU_TRIAL_BYTES``, or ``CPU_PASS_BYTES`` for
passes from the prefix, because a CPU runs a larger pass no faster per circuit).
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch, iter_batches
from circuitd.edges import EdgeGraph, head_name, mlp_name
from circuitd.incremental import IncrementalPass, Trial
from circuitd.methods.base import MethodContext, MethodResult
from circuitd.patching import CachedPass, PatchingEngine, clean_prefix
from circuitd.selection import above_threshold, top_n

# +1: the task metric is minimised as is; -1: its negation is (higher is better)
METRIC_SIGN = {"kl": 1.0, "nll": 1.0, "logit_diff": -1.0, "prob_diff": -1.0}
DEFAULT_TAU = 0.01
MAX_ROWS = 256
# the scores that predict each test's outcome: EAP-IG with this many steps on this many prompts
PREDICTION_IG_STEPS = 2
PREDICTION_PROMPTS = 8
CPU_PASS_BYTES = 2**26  # larger passes run slower per circuit on a CPU (caches), not faster
CPU_TRIAL_BYTES = 2**28  # incremental trials are small: more rows share each operation's overhead


# --- the visiting order ---------------------------------------------------------------------


@dataclass(frozen=True)
class DestNode:
    """A destination node and its incoming edges in test order."""

    name: str
    node: int  # node index (the source index; n_sources for the logits)
    start: int  # the block a pass for its tests starts at (n_layers: the logits alone)
    edges: tuple[int, ...]


def visit_order(graph: EdgeGraph) -> list[list[DestNode]]:
    """Destination nodes in visiting order, grouped in blocks whose nodes do not feed one
    another (the logits; an MLP; the heads of one layer), so each block's liveness is
    known when the block starts."""
    n_layers = graph.shape.n_layers
    by_kind = {(g.kind, g.layer): g for g in graph.groups}

    def block(offset: int, n_src: int) -> tuple[int, ...]:
        return tuple(offset + s for s in reversed(range(n_src)))

    logits = by_kind[("logits", -1)]
    out = [[DestNode("logits", graph.n_sources, n_layers, block(logits.offset, logits.n_src))]]
    for layer in reversed(range(n_layers)):
        mlp = by_kind.get(("mlp", layer))
        if mlp is not None:
            edges = block(mlp.offset, mlp.n_src)
            out.append([DestNode(mlp_name(layer), graph.mlp_source(layer), layer, edges)])
        g = by_kind[("attn", layer)]
        heads = []
        for h in reversed(range(g.n_heads)):
            edges = ()
            for x in range(g.n_qkv):
                edges += block(g.offset + (x * g.n_heads + h) * g.n_src, g.n_src)
            heads.append(DestNode(head_name(layer, h), graph.head_source(layer, h), layer, edges))
        out.append(heads)
    return out


class _Liveness:
    """Whether a node still has a kept outgoing edge (the logits always count as live)."""

    def __init__(self, graph: EdgeGraph):
        src = torch.tensor(graph.edge_table[1])
        order = torch.argsort(src, stable=True)
        counts = torch.bincount(src, minlength=len(graph.nodes)).tolist()
        self.out = list(torch.split(order, counts))
        self.logits = graph.n_sources

    def __call__(self, keep: torch.Tensor, node: int) -> bool:
        return node == self.logits or bool(keep[self.out[node]].any())


# --- shared set-up --------------------------------------------------------------------------


@dataclass
class _Batch:
    batch: TaskBatch
    ablated: torch.Tensor
    clean_lp: torch.Tensor | None
    start: CachedPass | None = None
    inputs: torch.Tensor | None = None  # the clean input source (incremental passes)


def _sign(metric: str) -> float:
    if metric not in METRIC_SIGN:
        raise ValueError(f"metric: '{metric}' is not one of {', '.join(METRIC_SIGN)}")
    return METRIC_SIGN[metric]


def _prepare(
    ctx: MethodContext, engine: PatchingEngine, start: torch.Tensor | None, cached: bool,
    incremental: bool = False,
) -> list[_Batch]:
    """Per minibatch: ablated values, clean log-probabilities (kl), and for the fast path
    the cached pass of the starting circuit ``start`` (bool keep mask; None = all kept), or
    for incremental passes the clean input."""
    mean = ctx.source_means(engine)
    alpha = None if start is None else (~start).to(ctx.model.device, ctx.model.dtype)
    out = []
    with torch.no_grad():
        for b in iter_batches(ctx.task, ctx.batch_size, ctx.model.device):
            ctx.check_stop()
            ablated = engine.ablated_sources(ctx.ablation, b.corrupted, mean)
            lp = None
            if ctx.metric == "kl":
                lp = metrics.clean_logprobs_of(ctx.model.run(b.clean), b)
            cp = engine.cached_pass(b.clean, ablated, alpha) if cached and not incremental else None
            inputs = ctx.model.input_source(b.clean) if incremental else None
            out.append(_Batch(b, ablated, lp, cp, inputs))
    return out


def _task_metric(
    ctx: MethodContext,
    batches: list[_Batch],
    logits_of: Callable[[int, _Batch], torch.Tensor],
    at_answers: bool = False,
) -> torch.Tensor:
    """The metric to minimise ``[C]`` (float64), averaged over every prompt of the task;
    ``logits_of(i, batch)`` gives minibatch i's logits ``[C, B, P, V]``, or ``[C, B, V]`` at
    the answer positions with ``at_answers``."""
    per_prompt = metrics.per_prompt_at_answers if at_answers else metrics.per_prompt
    total: torch.Tensor | None = None
    for i, item in enumerate(batches):
        vals = per_prompt(ctx.metric, logits_of(i, item), item.batch, item.clean_lp)
        s = vals.double().sum(-1)
        total = s if total is None else total + s
    assert total is not None
    return _sign(ctx.metric) * total / len(ctx.task)


def _removes(effect: float, tau: float, abs_value: bool) -> bool:
    return (abs(effect) if abs_value else effect) < tau


@dataclass
class ACDCRun:
    """Per tau (in the order given): the circuit, each edge's effect when tested, which
    edges were tested; and the work done."""

    taus: list[float]
    keep: torch.Tensor  # [T, n_edges] bool
    effects: torch.Tensor  # [T, n_edges] float64, 0 where untested
    tested: torch.Tensor  # [T, n_edges] bool
    evaluations: int  # circuit passes over the whole task
    skipped: int = 0  # tests the starting circuit made unnecessary (prefiltered edges)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# --- the reference ------------------------------------------------------------------------


def acdc_reference(
    ctx: MethodContext, tau: float, abs_value: bool = False, start: torch.Tensor | None = None
) -> ACDCRun:
    """ACDC exactly as the module docstring states, one full pass per test (the oracle).
    ``start``: the starting circuit (bool keep mask; default every edge)."""
    t0 = time.perf_counter()
    graph = ctx.graph
    engine = PatchingEngine(ctx.model, graph)
    batches = _prepare(ctx, engine, None, cached=False)
    alive = _Liveness(graph)
    keep = torch.ones(graph.n_edges, dtype=torch.bool) if start is None else start.cpu().clone()
    effects = torch.zeros(graph.n_edges, dtype=torch.float64)
    tested = torch.zeros(graph.n_edges, dtype=torch.bool)

    def metric_of(k: torch.Tensor) -> float:
        alpha = (~k).to(ctx.model.device, ctx.model.dtype)
        with torch.no_grad():
            val = _task_metric(ctx, batches, lambda _, b: engine.run(b.batch.clean, b.ablated, alpha[None]))
        return float(val[0])

    current = metric_of(keep)
    evaluations, skipped = 1, 0
    for block in visit_order(graph):
        for node in block:
            edges = list(node.edges)
            if not alive(keep, node.node):
                keep[edges] = False
                continue
            for e in edges:
                ctx.check_stop()
                if not keep[e]:
                    skipped += 1
                    continue
                keep[e] = False
                value = metric_of(keep)
                evaluations += 1
                tested[e] = True
                effects[e] = value - current
                if _removes(value - current, tau, abs_value):
                    current = value
                else:
                    keep[e] = True
    return ACDCRun([tau], keep[None], effects[None], tested[None], evaluations, skipped,
                   time.perf_counter() - t0)


# --- the fast path --------------------------------------------------------------------------


@dataclass
class _Branch:
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

    def split(self, n_low: int) -> _Branch:
        """A copy holding the ``n_low`` smallest taus, which leave this branch (its
        incremental states are the parent's until :meth:`_FastACDC.settle` copies them)."""
        low = _Branch(self.taus[:n_low], self.keep.clone(), self.effects.clone(), self.tested.clone(),
                      self.current, self.queue, self.pos, self.span, self.states, self.row,
                      self.block_tests, self.block_keeps, self.run_tests, self.run_keeps)
        self.taus = self.taus[n_low:]
        return low


def available_bytes(device: torch.device, incremental: bool = False) -> int:
    """Memory one batch of circuits may use: half the free GPU memory, or on a CPU a
    quarter of the free memory up to ``CPU_PASS_BYTES`` (``CPU_TRIAL_BYTES`` for
    incremental trials)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 4 * CPU_PASS_BYTES
    return min(free // 4, CPU_TRIAL_BYTES if incremental else CPU_PASS_BYTES)


def rows_per_pass(model_dtype: torch.dtype, graph: EdgeGraph, n_tokens: int, budget: int) -> int:
    """Circuits per patched pass so that a pass over ``n_tokens`` (batch x positions)
    stays within ``budget`` bytes: per circuit the stacked sources, the per-head q/k/v
    inputs with their LayerNorm and attention intermediates, the MLP and the logits."""
    s = graph.shape
    item = torch.finfo(model_dtype).bits // 8
    per_token = s.d_model * (graph.n_sources + 16 * s.n_heads + 8) + 2 * s.d_vocab
    return max(1, min(MAX_ROWS, budget // max(1, n_tokens * item * per_token)))


def rows_per_trial(model_dtype: torch.dtype, graph: EdgeGraph, n_tokens: int, budget: int) -> int:
    """Circuits per incremental trial within ``budget`` bytes: per circuit and token, the
    new inputs of one attention stage's ports and their per-head copies, the recomputed
    heads' outputs and changes, and the final logits."""
    s = graph.shape
    item = torch.finfo(model_dtype).bits // 8
    per_token = s.d_model * (12 * s.n_heads + 8) + 2 * s.d_vocab
    return max(1, min(MAX_ROWS, budget // max(1, n_tokens * item * per_token)))


class _KeepModel:
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


class _SpanPlanner:
    """Rows per incremental trial. Row j of a trial assumes every earlier candidate's
    predicted outcome, so a trial decides the candidates up to the first wrong prediction:
    with ``q_i`` the chance that prediction i holds, ``sum_j prod_{i<j} q_i`` edges on
    average. Its cost at a stage is fitted as ``a + b n`` seconds from the last trials
    there. The span maximises edges decided per second: wide where a trial's fixed cost
    dominates (late stages, few nodes to recompute) or predictions hold, one where each
    row costs much (early stages, whose changes reach most of the circuit)."""

    WINDOW = 12
    # a trial ends at the first candidate whose prediction holds with less than this chance:
    # the fit's cost per row misses what wide trials cost in memory, and every row thrown
    # away is an evaluation spent (zoo:synth / ioi: no slower, 5% fewer evaluations, and a
    # prefiltered run's count no longer swings with the timings)
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


class _FastACDC:
    """One fast run: the cached passes, the branches of taus, and the work counted."""

    def __init__(
        self, ctx: MethodContext, taus: Sequence[float], abs_value: bool, start: torch.Tensor | None,
        rows: int | None, memory: int | None, incremental: bool = True, predict: bool = True,
    ):
        self.ctx = ctx
        self.graph = ctx.graph
        self.abs_value = abs_value
        self.order = sorted(range(len(taus)), key=lambda i: taus[i])
        self.sorted_taus = [float(taus[i]) for i in self.order]
        self.engine = PatchingEngine(ctx.model, ctx.graph)
        self.incremental = incremental and ctx.model.node_math_supported()
        self.batches = _prepare(ctx, self.engine, start, True, self.incremental)
        self.start = start
        n_tokens = max(b.batch.clean.numel() for b in self.batches)
        budget = memory or available_bytes(ctx.model.device, self.incremental)
        per_row = rows_per_trial if self.incremental else rows_per_pass
        self.rows = rows or per_row(ctx.model.dtype, ctx.graph, n_tokens, budget)
        offsets = [g.offset for g in ctx.graph.groups]
        self.group_of = lambda edge: bisect.bisect_right(offsets, edge) - 1
        self.adaptive = rows is None and (self.incremental or ctx.model.device.type != "cuda")
        self.planner = _SpanPlanner()
        self.predict = predict and self.rows > 1
        self.keep_model = _KeepModel(None)
        self.alive = _Liveness(ctx.graph)
        self.evaluations = 0
        self.skipped = 0
        self.score_seconds = 0.0

    def metric_rows(self, layer: int, keep_rows: torch.Tensor) -> list[float]:
        """The metric of every circuit ``keep_rows [R, n_edges]``, from block ``layer``."""
        alpha = (~keep_rows).to(self.ctx.model.device, self.ctx.model.dtype)
        vals = []
        with torch.no_grad():
            for chunk in alpha.split(self.rows):
                vals.append(_task_metric(
                    self.ctx, self.batches, lambda _, b, a=chunk: self.engine.run_from(b.start, layer, a)
                ))
        self.evaluations += keep_rows.shape[0]
        return torch.cat(vals).tolist()

    def start_states(self, keep: torch.Tensor) -> tuple[list[IncrementalPass], float]:
        """Incremental passes of the circuit ``keep`` (one per minibatch) and its metric."""
        states = [IncrementalPass(self.ctx.model, self.graph, b.inputs, b.ablated, b.batch.answer_pos, keep,
                                  clean_prefix(self.ctx.ablation, b.batch.clean, b.batch.corrupted))
                  for b in self.batches]
        value = float(_task_metric(self.ctx, self.batches, lambda i, _: states[i].logits()[None], True)[0])
        self.evaluations += 1
        return states, value

    def scores(self) -> torch.Tensor:
        """EAP-IG scores of every edge on the run's metric, for predictions: a few steps
        (KL's gradient vanishes at the clean model, not between it and the ablated one) on
        the first few prompts (on zoo:synth / ioi, 8 prompts and 2 steps rank the kept
        edges as well as 32 prompts and 3 steps, in a fifth of the time)."""
        t0 = time.perf_counter()
        from circuitd.methods.eap import edge_scores

        n = min(len(self.ctx.task), PREDICTION_PROMPTS)
        ctx = replace(self.ctx, task=self.ctx.task.head(n), batch_size=n, progress=None)
        scores = edge_scores(ctx, PREDICTION_IG_STEPS)
        self.score_seconds = time.perf_counter() - t0
        return scores

    def trial_rows(
        self, br: _Branch, cand: list[int], kept_pred: list[bool]
    ) -> tuple[list[Trial], list[float]]:
        """Circuit j = ``br.keep`` minus candidate j and the earlier candidates not
        predicted kept, on the branch's incremental passes."""
        g_index = self.group_of(cand[0])
        g = self.graph.groups[g_index]
        removed = torch.zeros(len(cand), g.n_dest, g.n_src, dtype=torch.bool)
        ports, srcs = zip(*(divmod(e - g.offset, g.n_src) for e in cand), strict=True)
        removed[:, list(ports), list(srcs)] = removals(kept_pred)
        removed = removed.to(self.ctx.model.device)
        trials = [state.trial(g_index, removed) for state in br.states]
        self.evaluations += len(cand)
        return trials, _task_metric(self.ctx, self.batches, lambda i, _: trials[i].logits, True).tolist()

    @staticmethod
    def settle(branches: list[_Branch], trials: list[Trial]) -> None:
        """After :meth:`decide` on one branch (``branches[0]``; the rest split off it): each
        takes the rows it accepted into its own incremental passes."""
        parent = branches[0]
        for low in branches[1:]:
            low.states = [st.clone(low.keep) for st in parent.states]
        for br in branches:
            if br.row >= 0:
                for st, tr in zip(br.states, trials, strict=True):
                    st.commit(tr, br.row)

    def queue(self, br: _Branch, block: list[DestNode]) -> list[int]:
        """The block's candidates for this branch; drops the edges of nodes without a kept
        outgoing edge, and counts the tests that edges removed from the start save."""
        out = []
        for node in block:
            edges = list(node.edges)
            if not self.alive(br.keep, node.node):
                br.keep[edges] = False
                continue
            for e in edges:
                if br.keep[e]:
                    out.append(e)
                else:
                    self.skipped += 1
        return out

    def decide(
        self, br: _Branch, cand: list[int], values: list[float], kept_pred: list[bool]
    ) -> list[_Branch]:
        """Walk the rows of one branch in order: the decision of every tau at each
        candidate, splitting the branch where the taus disagree. Rows after a candidate
        whose outcome differs from its prediction assumed the other outcome: the taus that
        took it stop there, and those that agreed with the prediction go on. Returns the
        branches, ``br`` first."""
        out = [br]
        br.row = -1
        cur, kept = br, 0
        rate = br.p_keep()  # what the predictions read (the counts change after the trial)
        for j, e in enumerate(cand):
            effect = values[j] - cur.current
            test = abs(effect) if self.abs_value else effect
            n_keep = bisect.bisect_right([self.sorted_taus[t] for t in cur.taus], test)  # taus <= test
            cur.tested[e] = True
            cur.effects[e] = effect
            self.keep_model.observe(e, n_keep > 0, rate, self.group_of(e))
            keepers: _Branch | None = cur if n_keep == len(cur.taus) else None
            removers: _Branch | None = cur if n_keep == 0 else None
            if keepers is None and removers is None:  # the taus disagree: split
                low = cur.split(n_keep)
                out.append(low)
                keepers, removers = low, cur
            if removers is not None:
                removers.keep[e] = False
                removers.current = values[j]
                removers.row = j
            if kept_pred[j]:  # later rows assumed e kept
                if removers is not None:
                    removers.count(j + 1, kept)
                    removers.pos += j + 1
                    removers.span = max(1, 2 * (j + 1))
                cur, kept = keepers, kept + 1
            else:  # later rows assumed e removed
                if keepers is not None:
                    keepers.count(j + 1, kept + 1)
                    keepers.pos += j + 1
                    keepers.span = max(1, 2 * (j + 1))
                cur = removers
            if cur is None:
                return out
        cur.pos += len(cand)
        cur.span = 2 * cur.span
        cur.count(len(cand), kept)
        return out

    def run(self) -> ACDCRun:
        t0 = time.perf_counter()
        ctx, graph = self.ctx, self.graph
        keep = torch.ones(graph.n_edges, dtype=torch.bool) if self.start is None else self.start.cpu().clone()
        zeros = torch.zeros(graph.n_edges, dtype=torch.float64)
        if self.predict:
            self.keep_model = _KeepModel(self.scores())
        states: list[IncrementalPass] = []
        if self.incremental:
            states, current = self.start_states(keep)
        else:
            current = self.metric_rows(graph.shape.n_layers, keep[None])[0]
        branches = [_Branch(list(range(len(self.sorted_taus))), keep, zeros, zeros.bool(), current,
                            states=states)]
        branches[0].span = self.rows
        order = visit_order(graph)
        done = 0
        for block in order:
            for br in branches:
                br.queue, br.pos = self.queue(br, block), 0
                br.block_tests = br.block_keeps = 0
            self.keep_model.refit()
            size = sum(len(n.edges) for n in block)
            self._report(done, branches, block, size)
            while True:
                active = [br for br in branches if br.pos < len(br.queue)]
                if not active:
                    break
                ctx.check_stop()
                # one pass holds every branch's rows; incremental trials run branch by branch
                share = self.rows if self.incremental else max(1, self.rows // len(active))
                cands, preds, rows = [], [], []
                for br in active:
                    ahead = br.queue[br.pos : br.pos + share]
                    p_keep = self.keep_model.p_keep(ahead, br.p_keep(), self.group_of(ahead[0]))
                    span = share
                    if self.adaptive and self.incremental:
                        stage = self.group_of(ahead[0])
                        span = self.planner.span(stage, [max(p, 1 - p) for p in p_keep], share, br.span)
                    elif self.adaptive:
                        span = min(share, br.span)
                    cands.append(ahead[: max(1, span)])
                    preds.append([p > 0.5 for p in p_keep[: len(cands[-1])]])
                    if not self.incremental:
                        r = br.keep.repeat(len(cands[-1]), 1)
                        r[:, cands[-1]] &= ~removals(preds[-1])
                        rows.append(r)
                new = [br for br in branches if br.pos >= len(br.queue)]
                if self.incremental:
                    for br, cand, pred in zip(active, cands, preds, strict=True):
                        t_trial = time.perf_counter()
                        trials, values = self.trial_rows(br, cand, pred)
                        self.planner.record(self.group_of(cand[0]), len(cand), time.perf_counter() - t_trial)
                        out = self.decide(br, cand, values, pred)
                        self.settle(out, trials)
                        new += out
                else:
                    values = self.metric_rows(block[0].start, torch.cat(rows))
                    at = 0
                    for br, cand, pred in zip(active, cands, preds, strict=True):
                        new += self.decide(br, cand, values[at : at + len(cand)], pred)
                        at += len(cand)
                branches = sorted(new, key=lambda b: b.taus[0])
                self._report(done, branches, block, size)
            done += size
        return self._result(branches, time.perf_counter() - t0)

    def _report(self, done: int, branches: list[_Branch], block: list[DestNode], size: int) -> None:
        """Edges decided over all edges (averaged over taus), with the block and the work."""
        n = self.graph.n_edges
        pending = [len(br.queue) - br.pos for br in branches for _ in br.taus]
        decided = done + size - sum(pending) / len(pending)
        names = block[0].name if len(block) == 1 else f"{block[-1].name}..{block[0].name}"
        self.ctx.report(
            decided / n,
            f"acdc: {names} ({int(decided)}/{n} edges decided, {self.evaluations} evaluations)",
        )

    def _result(self, branches: list[_Branch], seconds: float) -> ACDCRun:
        t_n = len(self.sorted_taus)
        keep = [torch.empty(0)] * t_n
        effects = [torch.empty(0)] * t_n
        tested = [torch.empty(0)] * t_n
        for br in branches:
            for t in br.taus:
                i = self.order[t]
                keep[i], effects[i], tested[i] = br.keep, br.effects, br.tested
        taus = [self.sorted_taus[self.order.index(i)] for i in range(t_n)]
        extra = {"rows_per_pass": self.rows, "prediction_seconds": round(self.score_seconds, 3)}
        return ACDCRun(taus, torch.stack(keep), torch.stack(effects), torch.stack(tested),
                       self.evaluations, self.skipped, seconds, extra)


def acdc_fast(
    ctx: MethodContext,
    taus: float | Sequence[float],
    abs_value: bool = False,
    start: torch.Tensor | None = None,
    rows: int | None = None,
    memory: int | None = None,
    incremental: bool = True,
    predict: bool = True,
) -> ACDCRun:
    """ACDC with the reference's decisions for every tau of ``taus`` in one run (see the
    module docstring). ``start``: the starting circuit (bool keep mask; default every
    edge); ``rows``: circuits per pass, else as many as ``memory`` bytes hold (default:
    :func:`available_bytes`); ``incremental``: test edges by incremental passes where the
    architecture allows (else, and with False, by passes from the cached prefix);
    ``predict``: build a trial's rows on each candidate's predicted outcome (from EAP-IG
    scores) rather than on every earlier candidate removed."""
    taus = [taus] if isinstance(taus, int | float) else list(taus)
    return _FastACDC(ctx, taus, abs_value, start, rows, memory, incremental, predict).run()


# --- the method -----------------------------------------------------------------------------


def parse_taus(value: Any) -> list[float]:
    """``tau`` as a list (a number, or a list of numbers: a sweep)."""
    values = value if isinstance(value, list | tuple) else [value]
    try:
        taus = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tau: {value!r} is not a number or a list of numbers") from exc
    if not taus or not all(math.isfinite(t) and t >= 0 for t in taus):
        raise ValueError("tau: give one or more finite numbers >= 0")
    return taus


def prefilter(ctx: MethodContext) -> tuple[torch.Tensor | None, dict[str, Any] | None]:
    """The starting circuit from EAP or EAP-IG scores: the top ``prefilter_top_n`` edges by
    |score|, or those with |score| >= ``prefilter_threshold``; None without either.

    Scores use ``prefilter_metric``, by default the task metric, except that ``kl`` is
    scored with ``logit_diff``: KL's gradient vanishes at the clean model, so EAP on KL
    would rank edges by rounding noise. Under resample ablation the edges out of nodes
    left without incoming edges go too (:func:`drop_inputless`; exact)."""
    p = ctx.params
    n, threshold = p.get("prefilter_top_n"), p.get("prefilter_threshold")
    if n is None and threshold is None:
        return None, None
    if n is not None and threshold is not None:
        raise ValueError("prefilter_top_n and prefilter_threshold: give at most one")
    method = p.get("prefilter_method", "eap")
    if method not in ("eap", "eap-ig"):
        raise ValueError(f"prefilter_method: '{method}' is not one of eap, eap-ig")
    metric = p.get("prefilter_metric") or ("logit_diff" if ctx.metric == "kl" else ctx.metric)
    _sign(metric)
    steps = 1 if method == "eap" else int(p.get("ig_steps", 5))
    from circuitd.methods.eap import edge_scores

    t0 = time.perf_counter()
    scores = edge_scores(replace(ctx, metric=metric), steps).cpu()
    keep = top_n(scores, int(n)) if n is not None else above_threshold(scores, float(threshold))
    selected = int(keep.sum())
    if ctx.ablation == "resample":
        keep = drop_inputless(ctx.graph, keep)
    info = {
        "method": method, "metric": metric, "ig_steps": steps if method == "eap-ig" else None,
        "top_n": n, "threshold": threshold, "edges_selected": selected,
        "edges_dropped_inputless": selected - int(keep.sum()), "edges_kept": int(keep.sum()),
        "edges_removed": int((~keep).sum()), "seconds": round(time.perf_counter() - t0, 3),
    }
    return keep, info


def drop_inputless(graph: EdgeGraph, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` without the outgoing edges of nodes that have no kept incoming edge, to a
    fixpoint. Exact under resample ablation: such a node reads every source's corrupted
    output, so it computes its own corrupted output, its ablated value, and its outgoing
    edges change nothing; ACDC would test each of them only to remove it."""
    _, src, dst, _ = graph.edge_table
    src_t, dst_t = torch.tensor(src), torch.tensor(dst)
    keep = keep.cpu().clone()
    while True:
        has_in = torch.bincount(dst_t[keep], minlength=len(graph.nodes)) > 0
        has_in[0] = True  # the input has no incoming edges to lose
        new = keep & has_in[src_t]
        if torch.equal(new, keep):
            return keep
        keep = new


def run_acdc(ctx: MethodContext) -> MethodResult:
    """ACDC from ``ctx.params``: ``tau`` (a number or a list; default 0.01), ``abs``,
    ``prefilter_top_n`` or ``prefilter_threshold`` with ``prefilter_method`` (eap, eap-ig),
    ``prefilter_metric`` and ``ig_steps``; ``acdc_batch`` (circuits per pass) or
    ``acdc_memory`` (bytes a pass may use; default from the free memory).

    Scores are each edge's effect when tested for the first tau, ``keep`` that tau's
    circuit; ``info`` holds the per-tau edge counts, the evaluations run and saved, the
    prefilter's figures, and for a sweep each surviving edge's largest surviving tau."""
    p = ctx.params
    taus = parse_taus(p.get("tau", DEFAULT_TAU))
    rows = p.get("acdc_batch")
    if rows is not None and int(rows) < 1:
        raise ValueError("acdc_batch must be at least 1")
    memory = p.get("acdc_memory")
    if memory is not None and int(memory) < 1:
        raise ValueError("acdc_memory must be a positive number of bytes")
    start, pre_info = None, None
    if p.get("prefilter_top_n") is not None or p.get("prefilter_threshold") is not None:
        start, pre_info = prefilter(replace(ctx, progress=_scaled(ctx, 0.0, 0.1, "prefilter: ")))
        ctx = replace(ctx, progress=_scaled(ctx, 0.1, 1.0, ""))
    run = acdc_fast(ctx, taus, bool(p.get("abs", False)), start, int(rows) if rows else None,
                    int(memory) if memory else None)
    names = ctx.graph.edge_names
    info: dict[str, Any] = {
        "tau": run.taus,
        "abs": bool(p.get("abs", False)),
        "n_edges_per_tau": [int(k.sum()) for k in run.keep],
        "tests_per_tau": [int(t.sum()) for t in run.tested],
        "evaluations": run.evaluations,
        "evaluations_saved": run.skipped,
        "rows_per_pass": run.extra["rows_per_pass"],
        "acdc_seconds": round(run.seconds, 3),
        "prediction_seconds": run.extra["prediction_seconds"],
        "prefilter": pre_info,
    }
    if len(run.taus) > 1:
        info["largest_surviving_tau"] = largest_surviving_tau(run, names)
    scores = run.effects[0].to(ctx.model.dtype)
    return MethodResult(scores, info, run.keep[0].clone())


def largest_surviving_tau(run: ACDCRun, names: list[str]) -> dict[str, float]:
    """Edge name -> the largest tau whose circuit keeps it (edges kept by some tau)."""
    out: dict[str, float] = {}
    for tau, keep in sorted(zip(run.taus, run.keep, strict=True), key=lambda x: x[0]):
        for i in keep.nonzero().squeeze(1).tolist():
            out[names[i]] = tau
    return out


def _scaled(ctx: MethodContext, lo: float, hi: float, prefix: str) -> Callable[[float, str], None] | None:
    if ctx.progress is None:
        return None
    report = ctx.progress
    return lambda f, stage: report(lo + (hi - lo) * f, prefix + stage)


__all__ = ["ACDCRun", "acdc_fast", "acdc_reference", "drop_inputless", "prefilter", "run_acdc", "visit_order"]
