"""How many circuits one batched pass or incremental trial of the fast path may hold:
the memory a batch may use, and the bytes each circuit of it takes."""

from __future__ import annotations

import os

import torch

from circuitd.edges import EdgeGraph

MAX_ROWS = 256

CPU_PASS_BYTES = 2**26  # larger passes run slower per circuit on a CPU (caches), not faster
CPU_TRIAL_BYTES = 2**28  # incremental trials are small: more rows share each operation's overhead


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
