"""EAP for every edge against the cost of the plain model's passes on the same batch.

Prints the time of EAP (all edges, one batch: corrupted pass, clean pass with gradient
probes, backward, score products) divided by the time of 2 forward + 1 backward passes of
the unpatched model (TransformerLens defaults, gradient taken at the input embedding).
The three are timed in turn, round after round (at least ``--repeats`` rounds and 2
s), and each time is the median of its rounds. Ends with one line ``ratio=X``; the
target is <= 1.5.

    python bench/eap.py --model random:gpt2-small [--batch 16 --seq 32 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from circuitd import metrics
from circuitd.batch import TaskBatch
from circuitd.edges import EdgeGraph
from circuitd.models.registry import load_model
from circuitd.patching import PatchingEngine
from circuitd.tasks import load_task_data, resolve_task


def _once(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _timed_pairs(fns: list, repeats: int, min_seconds: float = 2.0) -> list[float]:
    """Median time of each function, run in turn (interleaved, so that the machine's drift
    hits them alike), ``repeats`` rounds or more until ``min_seconds`` have passed."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < repeats or time.perf_counter() - start < min_seconds:
        for i, fn in enumerate(fns):
            times[i].append(_once(fn))
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:gpt2-small")
    ap.add_argument("--task", default=None, help="generator (default: ioi for zoo models, else random)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32, help="prompt length for the random task")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, args.device)
    graph = EdgeGraph(model.shape)
    engine = PatchingEngine(model, graph)
    task_name = args.task or ("ioi" if model.tokenizer is not None else "random")
    params = {"length": args.seq} if task_name == "random" else {}
    data = load_task_data(task_name, model.tokenizer, model.shape.d_vocab, n=args.batch, **params)
    task = resolve_task(data, model.tokenizer, model.shape.d_vocab, model.shape.n_ctx)
    b = TaskBatch.from_task(task, model.device)

    def metric_fn(logits: torch.Tensor) -> torch.Tensor:
        return metrics.metric(task.metric, logits, b)

    def answer_metric_fn(logits: torch.Tensor) -> torch.Tensor:
        return metrics.per_prompt_at_answers(task.metric, logits, b).mean(-1)

    def eap() -> torch.Tensor:
        """What circuitd's EAP runs: the metric reads the answer positions, so the clean pass
        unembeds only those."""
        ablated = engine.ablated_sources("resample", b.corrupted)
        return engine.edge_gradients(b.clean, ablated, answer_metric_fn, answer_pos=b.answer_pos)

    tl = model.hooked_transformer

    def plain_passes() -> None:
        with torch.no_grad():
            tl(b.corrupted)
        emb = tl.embed(b.clean) + tl.pos_embed(b.clean)
        emb.requires_grad_(True)
        with torch.enable_grad():
            out = tl(emb, start_at_layer=0)
            metric_fn(out).backward()

    hooks = (tl.cfg.use_attn_result, tl.cfg.use_split_qkv_input, tl.cfg.use_hook_mlp_in)

    def unpatched_passes() -> None:
        """The plain passes with TransformerLens's defaults (no edge hook points)."""
        tl.set_use_attn_result(False)
        tl.set_use_split_qkv_input(False)
        tl.set_use_hook_mlp_in(False)
        try:
            plain_passes()
        finally:
            tl.set_use_attn_result(hooks[0])
            tl.set_use_split_qkv_input(hooks[1])
            tl.set_use_hook_mlp_in(hooks[2])

    # plain_passes alone runs with the hook points EAP needs switched on
    t_eap, t_plain, t_hooked = _timed_pairs([eap, unpatched_passes, plain_passes], args.repeats)
    tokens = b.clean.numel()
    print(f"model: {args.model}  device: {args.device}  threads: {torch.get_num_threads()}")
    print(f"batch: {b.clean.shape[0]} prompts x {b.clean.shape[1]} tokens ({tokens} tokens)")
    print(f"edges: {graph.n_edges}")
    print(f"EAP, all edges:                          {t_eap * 1000:9.1f} ms")
    print(f"2 fwd + 1 bwd, unpatched model:          {t_plain * 1000:9.1f} ms")
    print(f"2 fwd + 1 bwd, edge hook points enabled: {t_hooked * 1000:9.1f} ms  "
          f"(ratio to those: {t_eap / t_hooked:.2f})")
    print(f"ratio={t_eap / t_plain:.2f}")


if __name__ == "__main__":
    main()
