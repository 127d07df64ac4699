"""A task as padded tensors: what the patching engine and the metrics consume.

Prompts of different lengths are right-padded; attention is causal, so padding never
changes the logits at or before a prompt's answer position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from circuitd.tasks.base import Task


def _pad(rows: list[list[int]], fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return out, mask


@dataclass
class TaskBatch:
    clean: torch.Tensor  # [B, P] token ids
    corrupted: torch.Tensor  # [B, P]
    token_mask: torch.Tensor  # [B, P] real (not padding) positions
    answer_pos: torch.Tensor  # [B]
    correct: torch.Tensor  # [B, Kc] token ids (padded)
    correct_mask: torch.Tensor  # [B, Kc]
    incorrect: torch.Tensor  # [B, Ki]
    incorrect_mask: torch.Tensor  # [B, Ki]

    @classmethod
    def from_task(
        cls, task: Task, device: str | torch.device = "cpu", rows: list[int] | None = None
    ) -> TaskBatch:
        idx = list(range(len(task))) if rows is None else rows
        clean, token_mask = _pad([task.clean[i] for i in idx])
        corrupted, _ = _pad([task.corrupted[i] for i in idx])
        correct, cmask = _pad([task.correct[i] for i in idx])
        incorrect, imask = _pad([task.incorrect[i] for i in idx])
        pos = torch.tensor([task.answer_pos[i] for i in idx], dtype=torch.long)
        tensors = (clean, corrupted, token_mask, pos, correct, cmask, incorrect, imask)
        return cls(*(t.to(device) for t in tensors))

    def __len__(self) -> int:
        return self.clean.shape[0]


def iter_batches(
    task: Task, batch_size: int, device: str | torch.device = "cpu"
) -> Iterator[TaskBatch]:
    """Minibatches in prompt order (the last may be smaller)."""
    for start in range(0, len(task), batch_size):
        rows = list(range(start, min(start + batch_size, len(task))))
        yield TaskBatch.from_task(task, device, rows)
