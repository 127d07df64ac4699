"""Incremental patched passes: one circuit's node values kept, and circuits that differ
from it in a few edges evaluated by recomputing only the nodes those edges reach.

The semantics are the patching engine's (:mod:`circuitd.patching`): a
destination input is, for every source it may read, the source's output in this circuit
when the edge is kept and the source's ablated value when it is not, plus the attention
output biases of the layers it reads. So removing an edge ``u -> v`` adds ``ablated_u -
out_u`` to v's input; v's output then changes, and the change reaches only the
destinations that keep an edge from v, and so on. ACDC tests edges of a circuit that is
mostly pruned already, so a test recomputes a few nodes instead of the whole model.

A *stage* is one destination group of the edge graph (the heads of a layer, an MLP, the
logits); its *ports* are the group's destination inputs in the group's edge layout
(``[qkv, head]`` for attention), so the edges into a stage are ``[ports, sources]``.

Positions. Changes happen at *live* positions only: from each prompt's first position
whose ablated values may differ from the clean ones (``clean_prefix``: under resample
ablation, where the corrupted prompt first differs; the model is causal, so every
source's corrupted value before it is the clean one) up to its answer position (nothing
after it reaches the metric). Trials compute full nodes at the live positions alone,
packed into one token axis ``T``; keys and values keep the whole grid ``[B, P]``, the
unchanged ones from the kept circuit. Rotary models keep every position (their
projections need the grid).

The metric reads the logits at the answer positions only. A node whose kept
edges reach the logits only through MLPs and head queries is needed at the answer
positions only (an *answer node*; every other node is a *full node*): keys and values
need every position, queries and MLPs only the positions asked of them. Trials compute
answer nodes at one position per prompt. Nodes only lose kept edges as ACDC proceeds, so
a node never turns from an answer node into a full one; an answer node's values at the
other positions go stale and are never read again.

Needs the adapter's per-node computation (:meth:`ModelAdapter.node_math_supported`), which
does not cover grouped-query attention: ACDC runs those models from cached prefixes instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuitd.edges import DestGroup, EdgeGraph
from circuitd.models.adapter import ModelAdapter
from circuitd.patching.incremental_plan import _Change, _match, _mix, _Modes, _port_inputs, _ReadPlan, _rows


@dataclass
class Trial:
    """New values of R circuits that differ from the kept one in one stage's edges.

    Every tensor here is node- or port-major, the R circuits second: a stage reads the
    rows of the nodes that changed, and a head's projections run over all its circuits,
    prompts and positions in one product, with no tensor copied into another layout."""

    # (stage, ports, new inputs): full ports [p, R, T, D] (live positions), answer ports [p, R, B, D]
    ports_full: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    ports_ans: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # (nodes, new outputs): full nodes [k, R, T, D], answer nodes [k, R, B, D]
    nodes_full: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    nodes_ans: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    # (layer, heads, 0/1/2 for queries/keys/values, new [H', R, B, P, E]; answer queries
    # [H', R, B, 1, E])
    qkv: list[tuple[int, torch.Tensor, int, torch.Tensor]] = field(default_factory=list)
    final: torch.Tensor | None = None  # [R, B, D]
    logits: torch.Tensor | None = None  # [R, B, V] at the answer positions


class IncrementalPass:
    """The node values of the circuit ``keep`` on one batch of prompts.

    ``keep [n_edges]`` is read, not copied. The caller changes it only by removing the
    edges of a trial row it commits, or edges into nodes that no kept edge reads, and
    runs trials stage by stage from the logits backwards (ACDC's order): the edges out of
    the stages at and after a trial's stage do not change while trials run there."""

    def __init__(
        self,
        model: ModelAdapter,
        graph: EdgeGraph,
        inputs: torch.Tensor,
        ablated: torch.Tensor,
        answer_pos: torch.Tensor,
        keep: torch.Tensor,
        clean_prefix: torch.Tensor | None = None,
    ):
        """``inputs [B, P, D]``: the clean input source; ``ablated [S, B, P, D]``: every
        source's ablated value; ``answer_pos [B]``; ``clean_prefix [B]``: how many leading
        positions of each prompt have every source's ablated value equal to its clean one
        (None: none)."""
        if not model.node_math_supported():
            raise ValueError(f"{model.model_id}: incremental passes do not support this architecture")
        if graph.kv_grouped:  # the node math has no key/value heads; grouped-query models are refused above
            raise ValueError(f"{model.model_id}: incremental passes take no k/v edges per key/value head")
        self.model = model
        self.graph = graph
        self.keep = keep
        b, p, _ = inputs.shape
        dev = inputs.device
        self.batch = torch.arange(b, device=dev)
        self.answer_pos = answer_pos.to(dev)
        self.answer_flat = self.batch * p + self.answer_pos  # into a flattened [B * P] axis
        self.visible_full = torch.ones(p, p, dtype=torch.bool, device=dev).tril()
        seen = torch.arange(p, device=dev)[None, :] <= self.answer_pos[:, None]
        self.visible_ans = seen[:, None, :]  # [B, 1, P]: keys an answer query sees
        prefix = torch.zeros(b, dtype=torch.long) if clean_prefix is None else clean_prefix
        unchanged = torch.arange(p, device=dev)[None, :] < prefix.to(dev)[:, None]  # [B, P]
        # rotary projections need their positions: every position is live, and queries
        # are never projected at the answer positions alone
        self.grid = model.rotary()
        self.grid_shape = (b, p)
        live = seen & ~unchanged | self.grid
        live[self.batch, self.answer_pos] = True  # the metric reads it even where nothing changes
        self.live = live.flatten().nonzero().squeeze(1)  # [T] into the flattened [B * P] axis
        self.answer_live = torch.searchsorted(self.live, self.answer_flat)  # answers in the T axis
        self.out = torch.empty_like(ablated)
        self.out[0] = inputs
        self.port_in: list[torch.Tensor] = []
        self.port_ans: list[torch.Tensor] = []
        self.qkv: dict[int, torch.Tensor] = {}  # layer -> [3, H, B, P, E] queries, keys, values
        self.const = [self._bias_of(g) for g in graph.groups]
        self._modes_at: tuple[int, _Modes] | None = None
        self._plans: dict[tuple, _ReadPlan | None] = {}  # for trials at stage _plans_at
        self._plans_at = -1
        with torch.no_grad():
            for gi, g in enumerate(graph.groups):
                k = self._edges(g).to(ablated.dtype)  # [ports, n_src]
                n = g.n_src
                flat = k @ self.out[:n].flatten(1) + (1 - k) @ ablated[:n].flatten(1)
                flat = flat.view(-1, *inputs.shape) + self.const[gi]
                self.port_in.append(flat)
                self.port_ans.append(self._at_answers(flat))
                if g.kind == "logits":
                    continue
                nodes, new = self._initial_outputs(g, flat)
                self.out[nodes] = new
        # the unchanged positions' ablated values are the clean ones: set them so exactly
        ablated = torch.where(unchanged[None, :, :, None], self.out, ablated)
        self.abl_ans = self._at_answers(ablated)
        self.out_ans = self._at_answers(self.out)
        self.diff_ans = self.abl_ans - self.out_ans
        self.final = self.port_ans[-1][0].clone()  # [B, D]
        # from here on, full values live at the live positions only: [.., T, D]
        self.ablated = self._live(ablated)
        self.out = self._live(self.out)
        self.diff = self.ablated - self.out
        self.port_in = [self._live(x) for x in self.port_in]

    def _initial_outputs(self, g: DestGroup, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node of stage ``g`` at every position, from its ports ``flat [ports, B, P, D]``."""
        dev = flat.device
        if g.kind == "mlp":
            return torch.tensor([self.graph.mlp_source(g.layer)], device=dev), self.model.mlp_output(
                g.layer, flat[0]
            ).unsqueeze(0)
        heads = torch.arange(g.n_heads, device=dev)
        x = flat.view(g.n_qkv, g.n_heads, *flat.shape[1:])  # [X, H, B, P, D]
        q, k, v = (self.model.head_project(g.layer, heads, w, x[w % g.n_qkv]) for w in range(3))
        self.qkv[g.layer] = torch.stack([q, k, v])
        out = self.model.head_attend(g.layer, heads, q, k, v, self.visible_full)  # [H, B, P, D]
        return self.graph.head_source(g.layer, 0) + heads, out

    # --- layout ---------------------------------------------------------------------------
    def _edges(self, g: DestGroup) -> torch.Tensor:
        """``keep``'s block for group ``g`` as ``[ports, n_src]``."""
        return self.keep[g.offset : g.stop].view(g.n_dest, g.n_src).to(self.out.device)

    def _bias_of(self, g: DestGroup) -> torch.Tensor:
        """The attention output biases in a destination's input: those of every layer whose
        heads it may read."""
        total = torch.zeros(self.graph.shape.d_model, device=self.out.device, dtype=self.out.dtype)
        for layer in range(self.graph.shape.n_layers):
            if self.graph.head_source(layer, 0) < g.n_src:
                total = total + self.model.attn_output_bias(layer).to(total.dtype)
        return total

    def _at_answers(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., B, P, D]`` at each prompt's answer position: ``[..., B, D]``."""
        return x.flatten(-3, -2).index_select(-2, self.answer_flat)  # faster than x[..., b, p, :]

    def _live(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., B, P, D]`` at the live positions: ``[..., T, D]``."""
        return x.flatten(-3, -2).index_select(-2, self.live)

    def _live_answers(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., T, D]`` (live positions) at each prompt's answer position: ``[..., B, D]``."""
        return x.index_select(-2, self.answer_live)

    def _modes(self, gi: int) -> _Modes:
        """Full and answer nodes and ports, from the kept edges (fixed while trials run at
        stage ``gi``: only the edges out of later stages matter for stages >= gi)."""
        if self._modes_at is not None and self._modes_at[0] == gi:
            return self._modes_at[1]
        graph = self.graph
        node_full = torch.zeros(graph.n_sources, dtype=torch.bool, device=self.out.device)
        port_full: list[torch.Tensor] = [node_full[:0]] * len(graph.groups)
        answer_queries = not self.grid
        for gj in reversed(range(len(graph.groups))):
            g = graph.groups[gj]
            if g.kind == "logits":
                pf = torch.zeros(1, dtype=torch.bool, device=node_full.device)
            elif g.kind == "mlp":
                pf = node_full[graph.mlp_source(g.layer)].view(1)
            else:
                lo = graph.head_source(g.layer, 0)
                pf = torch.ones(g.n_qkv, g.n_heads, dtype=torch.bool, device=node_full.device)
                if g.n_qkv == 3 and answer_queries:
                    pf[0] = node_full[lo : lo + g.n_heads]
                pf = pf.flatten()
            port_full[gj] = pf
            node_full[: g.n_src] |= (self._edges(g) & pf[:, None]).any(0)
        modes = _Modes(node_full, port_full)
        self._modes_at = (gi, modes)
        return modes

    # --- evaluation -----------------------------------------------------------------------
    def logits(self) -> torch.Tensor:
        """Logits of the kept circuit at the answer positions ``[B, V]``."""
        with torch.no_grad():
            return self.model.logits_of(self.final)

    def trial(self, gi: int, removed: torch.Tensor) -> Trial:
        """Circuits ``keep`` minus ``removed [R, ports, n_src]`` (bool, edges of stage
        ``gi``, each one kept now): the stage and every node they reach, recomputed."""
        graph = self.graph
        g = graph.groups[gi]
        r = removed.shape[0]
        modes = self._modes(gi)
        rec, changes = Trial(), []
        touched = removed.any(0)
        srcs = touched.any(0).nonzero().squeeze(1)
        with torch.no_grad():
            coef = removed[:, :, srcs].to(self.out.dtype)  # [R, ports, s]
            if g.kind == "logits":
                final = self.final + torch.einsum("rs,sbd->rbd", coef[:, 0], _rows(self.diff_ans, srcs))
            else:
                ports = touched.any(1).nonzero().squeeze(1)
                pf = modes.port_full[gi][ports]
                pfull, pans = ports[pf], ports[~pf]
                new_full = _port_inputs(self.port_in[gi], pfull, coef[:, pfull], _rows(self.diff, srcs))
                new_ans = _port_inputs(self.port_ans[gi], pans, coef[:, pans], _rows(self.diff_ans, srcs))
                self._stage(rec, changes, modes, gi, pfull, new_full, pans, new_ans)
                final = self.final.expand(r, *self.final.shape)
                for gj in range(gi + 1, len(graph.groups)):
                    final = self._propagate(rec, changes, modes, gi, gj, r, final)
            rec.final = final
            rec.logits = self.model.logits_of(final)
        return rec

    def _propagate(
        self, rec: Trial, changes: list[_Change], modes: _Modes, gi: int, gj: int, r: int,
        final: torch.Tensor,
    ) -> torch.Tensor:
        """Stage ``gj``'s ports that keep an edge from a changed node take the changes, and
        its nodes are recomputed; for the logits, the final residual stream changes."""
        g = self.graph.groups[gj]
        readable = [c for c in changes if c.last < g.n_src]
        plan = self._read_plan(gi, gj, readable, modes) if readable else None
        if plan is None:
            return final
        if g.kind == "logits":
            assert plan.w_ans is not None
            return final + _mix(plan.w_ans, [c.ans for c in readable])[0]
        # every change read in one product: [ports, changed nodes] @ [changed nodes, R, ...]
        # (a port with no new value has no weights: w_full None means pfull is empty)
        new_full = self.port_in[gj][:0, None].expand(0, r, *self.port_in[gj].shape[1:])
        if plan.w_full is not None:
            new_full = _mix(plan.w_full, [c.delta for c in readable if c.delta is not None])
            new_full += _rows(self.port_in[gj], plan.pfull).unsqueeze(1)
        new_ans = self.port_ans[gj][:0, None].expand(0, r, *self.port_ans[gj].shape[1:])
        if plan.w_ans is not None:
            new_ans = _mix(plan.w_ans, [c.ans for c in readable])
            new_ans += _rows(self.port_ans[gj], plan.pans).unsqueeze(1)
        self._stage(rec, changes, modes, gj, plan.pfull, new_full, plan.pans, new_ans)
        return final

    def _read_plan(self, gi: int, gj: int, readable: list[_Change], modes: _Modes) -> _ReadPlan | None:
        """How stage ``gj`` reads the changes ``readable`` (None: it keeps no edge from
        them), worked out once per set of changed nodes while trials run at stage ``gi``
        (the edges into later stages do not change meanwhile)."""
        if self._plans_at != gi:
            self._plans.clear()
            self._plans_at = gi
        key = (gj, tuple(c.key for c in readable))
        if key in self._plans:
            return self._plans[key]
        g = self.graph.groups[gj]
        kept = self._edges(g)
        weights = [kept[:, c.nodes] for c in readable]  # [ports, k] each
        both = torch.cat(weights, 1)  # [ports, changed nodes]
        reads_any = both.any(1)
        plan = None
        if bool(reads_any.any()):
            dtype = self.out.dtype
            full = [w for w, c in zip(weights, readable, strict=True) if c.delta is not None]
            w_full = torch.cat(full, 1) if full else None  # [ports, full changed nodes]
            if g.kind == "logits":
                no_ports = reads_any.nonzero()[:0, 0]  # the logits read the final stream only
                plan = _ReadPlan(no_ports, no_ports, None, both.to(dtype))
            else:
                pf = modes.port_full[gj]
                reads_full = w_full.any(1) if w_full is not None else torch.zeros_like(reads_any)
                pfull = (pf & reads_full).nonzero().squeeze(1)
                pans = (~pf & reads_any).nonzero().squeeze(1)
                plan = _ReadPlan(
                    pfull, pans,
                    w_full[pfull].to(dtype) if w_full is not None and pfull.numel() else None,
                    both[pans].to(dtype) if pans.numel() else None,
                )
        self._plans[key] = plan
        return plan

    def _stage(
        self, rec: Trial, changes: list[_Change], modes: _Modes, gi: int,
        pfull: torch.Tensor, new_full: torch.Tensor, pans: torch.Tensor, new_ans: torch.Tensor,
    ) -> None:
        """Recompute the nodes of stage ``gi`` that own the ports with new inputs (full
        ports ``pfull`` with ``new_full [p, R, T, D]``, answer ports ``pans`` with
        ``new_ans [p, R, B, D]``) and record everything in ``rec`` and ``changes``."""
        g = self.graph.groups[gi]
        rec.ports_full.append((gi, pfull, new_full))
        rec.ports_ans.append((gi, pans, new_ans))
        if g.kind == "mlp":
            node = torch.tensor([self.graph.mlp_source(g.layer)], device=pfull.device)
            if pfull.numel():
                out = self.model.mlp_output(g.layer, new_full[0])  # position-wise: [R, T, D] as is
            else:
                out = self.model.mlp_output(g.layer, new_ans[0].unsqueeze(-2)).squeeze(-2)
            self._record(rec, changes, node, out.unsqueeze(0), bool(pfull.numel()))
            return
        h = g.n_heads
        heads = torch.unique(torch.cat([pfull, pans]) % h)
        lo = self.graph.head_source(g.layer, 0)
        full = modes.node_full[lo + heads]
        for hs, is_full in ((heads[full], True), (heads[~full], False)):
            if hs.numel():
                self._heads(rec, changes, gi, hs, is_full, pfull, new_full, pans, new_ans)

    def _heads(
        self, rec: Trial, changes: list[_Change], gi: int, hs: torch.Tensor, is_full: bool,
        pfull: torch.Tensor, new_full: torch.Tensor, pans: torch.Tensor, new_ans: torch.Tensor,
    ) -> None:
        """Outputs of heads ``hs`` of stage ``gi`` (all full or all answer nodes)."""
        g = self.graph.groups[gi]
        h = g.n_heads
        qkv = []
        for which in range(3):
            x = which if g.n_qkv == 3 else 0
            answer_query = which == 0 and not is_full
            # an answer node's queries have ports of their own, answer ports (see _modes)
            # except under rotary positions, whose queries are projected where they are
            own_answer_ports = answer_query and g.n_qkv == 3 and not self.grid
            ports, new = (pans, new_ans) if own_answer_ports else (pfull, new_full)
            kept = self.qkv[g.layer][which].index_select(0, hs)  # [H', B, P, E]
            if answer_query:
                kept = kept[:, self.batch, self.answer_pos].unsqueeze(-2)  # [H', B, 1, E]
            kept = kept.unsqueeze(1)  # one circuit: [H', 1, B, P or 1, E]
            hit, rows = _match(x * h + hs, ports)
            if not hit.numel():  # the kept queries, keys or values
                qkv.append(kept)
                continue
            # only the heads whose input changed are projected; the rest keep theirs
            inp = _rows(new, rows)  # [H'', R, T, D], or [H'', R, B, D] (answer ports)
            if answer_query and self.grid:  # every position, then the answers: [H'', R, B, 1, E]
                grid = inp.view(*inp.shape[:2], *self.grid_shape, -1)
                y = self.model.head_project(g.layer, hs[hit], which, grid)
                y = self._at_answers(y).unsqueeze(-2)
            elif answer_query:
                if not own_answer_ports:  # one input for q, k and v
                    inp = self._live_answers(inp)
                y = self.model.head_project(g.layer, hs[hit], which, inp.unsqueeze(-2))  # [H'', R, B, 1, E]
            else:
                y = self._project_live(g.layer, hs[hit], which, inp, kept.index_select(0, hit))
            if hit.numel() < hs.numel():
                y = kept.repeat(1, y.shape[1], 1, 1, 1).index_copy_(0, hit, y)
            rec.qkv.append((g.layer, hs, which, y))
            qkv.append(y)
        # each head has a changed port, so at least one of q, k, v has R rows
        q, k, v = qkv
        if is_full:  # outputs at the live positions: [H', R, T, D]
            out = self.model.head_attend(g.layer, hs, q, k, v, self.visible_full, self.live)
        else:  # [H', R, B, D]
            out = self.model.head_attend(g.layer, hs, q, k, v, self.visible_ans).squeeze(-2)
        nodes = self.graph.head_source(g.layer, 0) + hs
        self._record(rec, changes, nodes, out, is_full)

    def _project_live(
        self, layer: int, heads: torch.Tensor, which: int, x: torch.Tensor, kept: torch.Tensor
    ) -> torch.Tensor:
        """Queries, keys or values of ``heads`` on the grid ``[H', R, B, P, E]`` from their
        inputs at the live positions ``x [H', R, T, D]``; the other positions keep ``kept
        [H', 1, B, P, E]``."""
        h, r = x.shape[0], x.shape[1]
        if self.grid:  # every position is live
            return self.model.head_project(layer, heads, which, x.view(h, r, *self.grid_shape, -1))
        y = self.model.head_project(layer, heads, which, x)  # [H', R, T, E]
        grid = kept.repeat(1, r, 1, 1, 1)
        grid.view(h, r, -1, grid.shape[-1]).index_copy_(2, self.live, y)
        return grid

    def _record(
        self, rec: Trial, changes: list[_Change], nodes: torch.Tensor, new: torch.Tensor, full: bool
    ) -> None:
        """Nodes ``nodes`` with new outputs ``new [k, R, T, D]`` (full) or ``[k, R, B, D]``."""
        last = int(nodes[-1])
        if full:
            rec.nodes_full.append((nodes, new))
            delta = new - _rows(self.out, nodes).unsqueeze(1)
            changes.append(_Change(nodes, last, delta, self._live_answers(delta)))
        else:
            rec.nodes_ans.append((nodes, new))
            changes.append(_Change(nodes, last, None, new - _rows(self.out_ans, nodes).unsqueeze(1)))

    def commit(self, rec: Trial, row: int) -> None:
        """Make circuit ``row`` of a trial the kept one (the caller removes its edges from
        ``keep``)."""
        for gi, ports, new in rec.ports_full:
            self.port_in[gi].index_copy_(0, ports, new[:, row])
            self.port_ans[gi].index_copy_(0, ports, self._live_answers(new[:, row]))
        for gi, ports, new in rec.ports_ans:
            self.port_ans[gi].index_copy_(0, ports, new[:, row])
        for nodes, new in rec.nodes_full:
            new_row = new[:, row]
            new_ans = self._live_answers(new_row)
            self.out.index_copy_(0, nodes, new_row)
            self.diff.index_copy_(0, nodes, _rows(self.ablated, nodes) - new_row)
            self.out_ans.index_copy_(0, nodes, new_ans)
            self.diff_ans.index_copy_(0, nodes, _rows(self.abl_ans, nodes) - new_ans)
        for nodes, new in rec.nodes_ans:
            self.out_ans.index_copy_(0, nodes, new[:, row])
            self.diff_ans.index_copy_(0, nodes, _rows(self.abl_ans, nodes) - new[:, row])
        for layer, hs, which, new in rec.qkv:
            kept = self.qkv[layer][which]  # [H, B, P, E]
            if new.shape[-2] == 1 < kept.shape[-2]:  # answer queries
                kept[hs[:, None], self.batch[None, :], self.answer_pos[None, :]] = new[:, row, :, 0]
            else:
                kept.index_copy_(0, hs, new[:, row])
        assert rec.final is not None
        self.final = rec.final[row].clone()

    def clone(self, keep: torch.Tensor) -> IncrementalPass:
        """An independent copy for the circuit ``keep`` (a copy of this one's: a branch of a
        tau sweep)."""
        new = object.__new__(IncrementalPass)
        new.__dict__.update(self.__dict__)
        new.keep = keep
        for name in ("out", "diff", "out_ans", "diff_ans", "final"):
            setattr(new, name, getattr(self, name).clone())
        new.port_in = [p.clone() for p in self.port_in]
        new.port_ans = [p.clone() for p in self.port_ans]
        new.qkv = {k: v.clone() for k, v in self.qkv.items()}
        new._plans, new._plans_at = {}, -1  # plans read keep, which the copy has its own of
        return new


__all__ = ["IncrementalPass", "Trial"]
