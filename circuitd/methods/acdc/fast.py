"""The fast ACDC: the reference's decisions for every tau of a sweep in one run, by
incremental passes (or passes from the cached prefix) whose rows test several candidates
at once on their predicted outcomes (see :mod:`circuitd.methods.acdc`)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import cast

import torch

from circuitd.edge_context import MethodContext
from circuitd.methods.acdc.budget import available_bytes, rows_per_pass, rows_per_trial
from circuitd.methods.acdc.evaluation import ACDCRun, prepare_batches, task_metric
from circuitd.methods.acdc.order import DestNode, Liveness, visit_order
from circuitd.methods.acdc.planner import Branch, KeepModel, SpanPlanner, removals
from circuitd.patching import CachedPass, IncrementalPass, PatchingEngine, Trial, clean_prefix

# the scores that predict each test's outcome: EAP-IG with this many steps on this many prompts
PREDICTION_IG_STEPS = 2
PREDICTION_PROMPTS = 8


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
        self.batches = prepare_batches(ctx, self.engine, start, True, self.incremental)
        self.start = start
        n_tokens = max(b.batch.clean.numel() for b in self.batches)
        budget = memory or available_bytes(ctx.model.device, self.incremental)
        per_row = rows_per_trial if self.incremental else rows_per_pass
        self.rows = rows or per_row(ctx.model.dtype, ctx.graph, n_tokens, budget)
        offsets = [g.offset for g in ctx.graph.groups]
        self.group_of = lambda edge: bisect.bisect_right(offsets, edge) - 1
        self.adaptive = rows is None and (self.incremental or ctx.model.device.type != "cuda")
        self.planner = SpanPlanner()
        self.predict = predict and self.rows > 1
        self.keep_model = KeepModel(None)
        self.alive = Liveness(ctx.graph)
        self.evaluations = 0
        self.skipped = 0
        self.score_seconds = 0.0

    def metric_rows(self, layer: int, keep_rows: torch.Tensor) -> list[float]:
        """The metric of every circuit ``keep_rows [R, n_edges]``, from block ``layer``."""
        alpha = (~keep_rows).to(self.ctx.model.device, self.ctx.model.dtype)
        vals = []
        with torch.no_grad():
            for chunk in alpha.split(self.rows):
                # not incremental: prepare_batches gave every batch its cached pass
                vals.append(task_metric(
                    self.ctx, self.batches,
                    lambda _, b, a=chunk: self.engine.run_from(cast(CachedPass, b.start), layer, a),
                ))
        self.evaluations += keep_rows.shape[0]
        return torch.cat(vals).tolist()

    def start_states(self, keep: torch.Tensor) -> tuple[list[IncrementalPass], float]:
        """Incremental passes of the circuit ``keep`` (one per minibatch) and its metric."""
        # incremental: prepare_batches gave every batch its clean input
        states = [IncrementalPass(self.ctx.model, self.graph, cast(torch.Tensor, b.inputs), b.ablated,
                                  b.batch.answer_pos, keep,
                                  clean_prefix(self.ctx.ablation, b.batch.clean, b.batch.corrupted))
                  for b in self.batches]
        value = float(task_metric(self.ctx, self.batches, lambda i, _: states[i].logits()[None], True)[0])
        self.evaluations += 1
        return states, value

    def scores(self) -> torch.Tensor:
        """EAP-IG scores of every edge on the run's metric, for predictions: a few steps
        (KL's gradient vanishes at the clean model, not between it and the ablated one) on
        the first few prompts (on zoo:synth / ioi, 8 prompts and 2 steps rank the kept
        edges as well as 32 prompts and 3 steps)."""
        t0 = time.perf_counter()
        from circuitd.methods.eap_scores import edge_scores

        n = min(len(self.ctx.task), PREDICTION_PROMPTS)
        ctx = replace(self.ctx, task=self.ctx.task.head(n), batch_size=n, progress=None)
        scores = edge_scores(ctx, PREDICTION_IG_STEPS)
        self.score_seconds = time.perf_counter() - t0
        return scores

    def trial_rows(
        self, br: Branch, cand: list[int], kept_pred: list[bool]
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
        # trial() sets each trial's logits
        return trials, task_metric(
            self.ctx, self.batches, lambda i, _: cast(torch.Tensor, trials[i].logits), True
        ).tolist()

    @staticmethod
    def settle(branches: list[Branch], trials: list[Trial]) -> None:
        """After :meth:`decide` on one branch (``branches[0]``; the rest split off it): each
        takes the rows it accepted into its own incremental passes."""
        parent = branches[0]
        for low in branches[1:]:
            low.states = [st.clone(low.keep) for st in parent.states]
        for br in branches:
            if br.row >= 0:
                for st, tr in zip(br.states, trials, strict=True):
                    st.commit(tr, br.row)

    def queue(self, br: Branch, block: list[DestNode]) -> list[int]:
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
        self, br: Branch, cand: list[int], values: list[float], kept_pred: list[bool]
    ) -> list[Branch]:
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
            keepers: Branch | None = cur if n_keep == len(cur.taus) else None
            removers: Branch | None = cur if n_keep == 0 else None
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
            self.keep_model = KeepModel(self.scores())
        states: list[IncrementalPass] = []
        if self.incremental:
            states, current = self.start_states(keep)
        else:
            current = self.metric_rows(graph.shape.n_layers, keep[None])[0]
        branches = [Branch(list(range(len(self.sorted_taus))), keep, zeros, zeros.bool(), current,
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

    def _report(self, done: int, branches: list[Branch], block: list[DestNode], size: int) -> None:
        """Edges decided over all edges (averaged over taus), with the block and the work."""
        n = self.graph.n_edges
        pending = [len(br.queue) - br.pos for br in branches for _ in br.taus]
        decided = done + size - sum(pending) / len(pending)
        names = block[0].name if len(block) == 1 else f"{block[-1].name}..{block[0].name}"
        self.ctx.report(
            decided / n,
            f"acdc: {names} ({int(decided)}/{n} edges decided, {self.evaluations} evaluations)",
        )

    def _result(self, branches: list[Branch], seconds: float) -> ACDCRun:
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
    """ACDC with the reference's decisions for every tau of ``taus`` in one run (see
    :mod:`circuitd.methods.acdc`). ``start``: the starting circuit (bool keep mask; default every
    edge); ``rows``: circuits per pass, else as many as ``memory`` bytes hold (default:
    :func:`available_bytes`); ``incremental``: test edges by incremental passes where the
    architecture allows (else, and with False, by passes from the cached prefix);
    ``predict``: build a trial's rows on each candidate's predicted outcome (from EAP-IG
    scores) rather than on every earlier candidate removed."""
    taus = [taus] if isinstance(taus, int | float) else list(taus)
    return _FastACDC(ctx, taus, abs_value, start, rows, memory, incremental, predict).run()
