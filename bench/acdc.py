"""ACDC: the fast path against the reference, and the attribution-patching prefilter.

Runs, on one task and one tau: the reference (one engine pass per test), the fast path
(cached prefix, skipped blocks, batched candidates), and the fast path started from the
top ``--prefilter-top-n`` edges by EAP score (default 20% of the edges). Prints the times
and their ratio (the two circuits must be identical), the evaluations each run spent, and
the faithfulness (logit difference, Evaluator) of the plain and the prefiltered circuit.
The fast path's time is the median of ``--fast-runs`` runs, one before the reference and
the rest after it, so that neither a cold start nor the machine's drift over the
reference's minute decides the ratio.
With ``--sweep`` it also runs a list of taus in one fast run and prints each circuit's
size and faithfulness. Ends with one line ``speedup=X evaluations_saved=Y
faithfulness_delta=Z``: reference time / fast time, plain / prefiltered evaluations, and
|faithfulness(prefiltered) - faithfulness(plain)|.

    python bench/acdc.py --model zoo:synth --task ioi --tau 0.02 [--prefilter-top-n 304]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from circuitd.edge_context import MethodContext
from circuitd.edges import EdgeGraph
from circuitd.evaluate import Evaluator
from circuitd.methods.acdc import ACDCParams
from circuitd.methods.acdc.fast import acdc_fast
from circuitd.methods.acdc.prefilter import prefilter
from circuitd.methods.acdc.reference import acdc_reference
from circuitd.models.registry import load_model
from circuitd.tasks import load_task_data, resolve_task


def _faithfulness(evaluator: Evaluator, keep: torch.Tensor) -> float:
    return float(evaluator.summary(keep)["faithfulness"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:synth")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--metric", default="kl", help="the metric ACDC minimises")
    ap.add_argument("--ablation", default="resample")
    ap.add_argument("--tau", type=float, default=0.02)
    ap.add_argument("--prefilter-top-n", type=int, default=None, help="default: 20%% of the edges")
    ap.add_argument("--prefilter-method", default="eap")
    ap.add_argument("--batch", type=int, default=None, help="circuits per pass (default: from memory)")
    ap.add_argument("--sweep", default="", help="comma-separated taus for one sweep run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--fast-runs", type=int, default=3, help="fast runs timed (median)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, args.device, args.dtype)
    graph = EdgeGraph(model.shape)
    params = {} if model.tokenizer is not None else {"length": 12}
    data = load_task_data(args.task, model.tokenizer, model.shape.d_vocab, n=args.n, seed=0, **params)
    task = resolve_task(data, model.tokenizer, model.shape.d_vocab, model.shape.n_ctx)
    ctx = MethodContext(model, graph, task, args.metric, args.ablation, max(args.n, 1))
    faith_ctx = MethodContext(model, graph, task, "logit_diff", args.ablation, max(args.n, 1))
    evaluator = Evaluator(faith_ctx)
    top = args.prefilter_top_n or math.ceil(0.2 * graph.n_edges)
    print(f"model: {args.model}  task: {args.task} ({len(task)} prompts)  metric: {args.metric}  "
          f"ablation: {args.ablation}  device: {args.device}  dtype: {args.dtype}  "
          f"threads: {torch.get_num_threads()}")
    print(f"edges: {graph.n_edges}  tau: {args.tau}")

    fast = acdc_fast(ctx, args.tau, rows=args.batch)
    runs = [fast]
    n_fast = int(fast.keep[0].sum())
    print(f"fast ACDC:       {fast.seconds:8.2f} s  {fast.evaluations:5d} evaluations  "
          f"{int(fast.tested[0].sum())} tests  {n_fast} edges  ({fast.extra['rows_per_pass']} circuits/pass)")
    speedup = float("nan")
    if not args.skip_reference:
        ref = acdc_reference(ctx, args.tau)
        runs += [acdc_fast(ctx, args.tau, rows=args.batch) for _ in range(args.fast_runs - 1)]
        t_fast = statistics.median(r.seconds for r in runs)
        print(f"fast ACDC runs:  {' '.join(f'{r.seconds:.2f}' for r in runs)} s  (median {t_fast:.2f} s)")
        same = all(torch.equal(ref.keep[0], r.keep[0]) for r in runs)
        print(f"reference ACDC:  {ref.seconds:8.2f} s  {ref.evaluations:5d} evaluations  "
              f"{int(ref.tested[0].sum())} tests  {int(ref.keep[0].sum())} edges")
        print(f"identical circuits: {same}  (edge effects differ by at most "
              f"{float((ref.effects[0] - fast.effects[0]).abs().max()):.2e})")
        speedup = ref.seconds / t_fast if same else float("nan")
        print(f"speedup (reference / fast): {speedup:.2f}x")

    t0 = time.perf_counter()
    start, pre_info = prefilter(ctx, ACDCParams(prefilter_top_n=top, prefilter_method=args.prefilter_method))
    pre = acdc_fast(ctx, args.tau, start=start, rows=args.batch)
    t_pre = time.perf_counter() - t0
    assert pre_info is not None
    saved = fast.evaluations / pre.evaluations
    print(f"prefiltered ACDC (top {top} by {args.prefilter_method}): {t_pre:8.2f} s "
          f"(scoring {pre_info['seconds']:.2f} s)  {pre.evaluations:5d} evaluations  "
          f"{int(pre.tested[0].sum())} tests  {int(pre.keep[0].sum())} edges  "
          f"{pre.skipped} tests skipped")
    f_plain = _faithfulness(evaluator, fast.keep[0])
    f_pre = _faithfulness(evaluator, pre.keep[0])
    delta = abs(f_pre - f_plain)
    print(f"evaluations saved (plain / prefiltered): {saved:.2f}x")
    print(f"faithfulness (logit_diff): plain {f_plain:.4f}  prefiltered {f_pre:.4f}  delta {delta:.4f}")

    if args.sweep:
        taus = [float(t) for t in args.sweep.split(",")]
        sweep = acdc_fast(ctx, taus, rows=args.batch)
        print(f"sweep of {len(taus)} taus in one run: {sweep.seconds:.2f} s, {sweep.evaluations} evaluations")
        for tau, keep in sorted(zip(taus, sweep.keep, strict=True)):
            n = int(keep.sum())
            f = _faithfulness(evaluator, keep)
            mark = "  <= 10% of edges, faithfulness >= 0.8" if n <= 0.1 * graph.n_edges and f >= 0.8 else ""
            print(f"  tau {tau:<8g} {n:5d} edges ({100 * n / graph.n_edges:5.2f}%)  "
                  f"faithfulness {f:.4f}{mark}")
    print(f"speedup={speedup:.2f} evaluations_saved={saved:.2f} faithfulness_delta={delta:.4f}")


if __name__ == "__main__":
    main()
