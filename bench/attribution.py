"""Time per attribution graph and backward passes against their floor.

Two setups: zoo:synth with its shipped transcoders on an IOI prompt, and a 4-layer d_model-256
random model (``random:small``) with random TopK transcoders on a random prompt. For each, the
whole graph (record the prompt, every adjacency row, prune) is timed over several rounds (median),
and the backward passes are compared with the floor ``ceil(targets / batch)``, targets being the
feature and logit nodes whose rows the graph needs. Ends with one line ``seconds=X
backward_passes=Y floor=Z``: the totals over both graphs (seconds: sum of the medians).

    python bench/attribution.py [--batch 64] [--rounds 3] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from circuitd.attribution import attribute, record
from circuitd.models.registry import load_model
from circuitd.transcoders import random_transcoders
from circuitd.transcoders.sources import load_transcoders

IOI = "When Mary and John went to the store, John gave a drink to"


def _graph(adapter, tset, tokens, batch: int, max_feature_nodes: int | None):
    ctx = record(adapter, tset, tokens)
    att = attribute(ctx, batch_size=batch, max_feature_nodes=max_feature_nodes)
    att.graph().prune()
    if ctx.mlp_in.is_cuda:
        torch.cuda.synchronize()
    return att


def bench_one(name: str, adapter, tset, tokens, batch: int, rounds: int, max_feature_nodes: int | None):
    _graph(adapter, tset, tokens, batch, max_feature_nodes)  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        att = _graph(adapter, tset, tokens, batch, max_feature_nodes)
        times.append(time.perf_counter() - t0)
    n_feats = sum(n.kind == "feature" for n in att.nodes)
    targets = n_feats + sum(n.kind == "logit" for n in att.nodes)
    floor = math.ceil(targets / batch)
    seconds = statistics.median(times)
    print(
        f"{name}: {len(tokens)} tokens, {n_feats} feature nodes, {len(att.nodes)} nodes; "
        f"{seconds:.3f} s per graph (median of {rounds}); backward passes {att.backward_passes}, "
        f"floor ceil({targets}/{batch}) = {floor}"
    )
    return seconds, att.backward_passes, floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--transcoders", help="zoo:synth transcoders (default: the shipped set)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}")

    synth = load_model("zoo:synth", args.device)
    tokens = torch.tensor(synth.tokenizer.encode(IOI, prepend_bos=True))
    tc = load_transcoders(args.transcoders, synth)
    results = [bench_one("zoo:synth (shipped transcoders, IOI prompt)", synth, tc,
                         tokens, args.batch, args.rounds, args.max_feature_nodes)]

    small = load_model("random:small@0", args.device)
    cfg = small.shape
    tset = random_transcoders(cfg.n_layers, cfg.d_model, 2048, activation="topk", k=32, skip=True, seed=1)
    tset = tset.to(small.device)
    tokens = torch.randint(1, cfg.d_vocab, (16,), generator=torch.Generator().manual_seed(0))
    name = "random:small (4 layers, d_model 256; random TopK-32 transcoders, 2048 features)"
    results.append(bench_one(name, small, tset, tokens, args.batch, args.rounds, args.max_feature_nodes))

    seconds = sum(r[0] for r in results)
    passes = sum(r[1] for r in results)
    floor = sum(r[2] for r in results)
    print(f"seconds={seconds:.3f} backward_passes={passes} floor={floor}")


if __name__ == "__main__":
    main()
