"""ACDC (Conmy et al. 2023): greedy edge pruning, exact and fast, with an
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

- incremental passes (:mod:`circuitd.patching.incremental`): the current circuit's node
  values are kept, and a test recomputes only the tested destination and the nodes its
  change reaches through kept edges (a few, once the later layers are pruned), at the
  answer positions alone where nothing downstream needs more;
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

Rows per trial: ``rows``, or as many as ``memory`` bytes hold (arguments of
:func:`circuitd.methods.acdc.scoring.score_acdc`; default half the free GPU memory; on a CPU
at most ``CPU_TRIAL_BYTES``, or ``CPU_PASS_BYTES`` for passes from the prefix, because a CPU
runs a larger pass no faster per circuit).

This module holds the method's parameters and entry point and imports no torch; the
submodules compute: ``order``, ``reference``, ``fast`` (with ``planner``, ``budget`` and
``evaluation``), ``prefilter`` and ``scoring``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from circuitd.limits import MAX_TAUS, at_most
from circuitd.methods.contract import EdgeMethod, EdgeParams, IGSteps, NodeScoring, finite_list
from circuitd.names import MetricName


class ACDCParams(EdgeParams, IGSteps):
    """ACDC's thresholds, test metric and prefilter; ``ig_steps`` is the EAP-IG prefilter's."""

    node_scoring: ClassVar[NodeScoring | None] = "greedy"  # ACDC-node: the same greedy pass over nodes

    tau: list[float] = Field(
        default_factory=lambda: [0.01], min_length=1, max_length=MAX_TAUS,
        description="remove an edge when the metric rises by less than tau; several: a sweep in one run",
    )
    abs_diff: bool = Field(
        default=False, description="compare |metric change| with tau", json_schema_extra={"cli_flag": "--abs"}
    )
    acdc_metric: MetricName = Field(default="kl", description="the metric ACDC's tests use")
    prefilter_top_n: Annotated[int | None, at_most("max_edges")] = Field(
        default=None, ge=1, description="test only the top N edges by EAP score"
    )
    prefilter_threshold: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="test only edges with |EAP score| >= X"
    )
    prefilter_method: Literal["eap", "eap-ig"] = Field(default="eap-ig", description="the prefilter's scores")

    @field_validator("tau", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("tau")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        return finite_list("tau", v)

    @model_validator(mode="after")
    def _one_prefilter(self) -> ACDCParams:
        if self.prefilter_top_n is not None and self.prefilter_threshold is not None:
            raise ValueError("prefilter_top_n and prefilter_threshold: give at most one")
        given = "prefilter_top_n" if self.prefilter_top_n is not None else "prefilter_threshold"
        if self.level != "edge" and getattr(self, given) is not None:
            raise ValueError(f"{given}: the prefilter selects edges; not at level {self.level}")
        return self


ACDC = EdgeMethod(
    "acdc", "greedy edge pruning by exact patching, with tau sweeps and a prefilter", ACDCParams,
    "circuitd.methods.acdc.scoring:score_acdc",
)
