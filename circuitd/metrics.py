"""Task metrics at the answer position, and normalised faithfulness.

Every metric takes logits with any leading circuit axes ``[..., B, P, V]`` and returns the
mean over the batch ``[...]``. Answer sets with several tokens: ``logit_diff`` compares
the mean logit of each set, ``prob_diff`` the total probability of each set, ``nll`` is
``-log`` of the total probability of the correct set. ``kl`` is KL(clean || circuit)
summed over the vocabulary; it needs the clean model's log-probabilities.
"""

from __future__ import annotations

import torch

from circuitd.batch import TaskBatch
from circuitd.names import METRICS


def answer_logits(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """``[..., B, V]``: each prompt's logits at its answer position."""
    pos = batch.answer_pos.view(*([1] * (logits.ndim - 3)), -1, 1, 1)
    pos = pos.expand(*logits.shape[:-2], 1, logits.shape[-1])
    return logits.gather(-2, pos).squeeze(-2)


def _set_mean(values: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    picked = values.gather(-1, ids.expand(*values.shape[:-1], ids.shape[-1]))
    m = mask.to(values.dtype)
    return (picked * m).sum(-1) / m.sum(-1)


def _set_logsumexp(logp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    picked = logp.gather(-1, ids.expand(*logp.shape[:-1], ids.shape[-1]))
    return picked.masked_fill(~mask, float("-inf")).logsumexp(-1)


def per_prompt(
    name: str, logits: torch.Tensor, batch: TaskBatch, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """The metric of every prompt ``[..., B]``."""
    return per_prompt_at_answers(name, answer_logits(logits, batch), batch, clean_logprobs)


def per_prompt_at_answers(
    name: str, final: torch.Tensor, batch: TaskBatch, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`per_prompt` from the logits at the answer positions ``[..., B, V]``."""
    final = final.float()
    if name == "logit_diff":
        return _set_mean(final, batch.correct, batch.correct_mask) - _set_mean(
            final, batch.incorrect, batch.incorrect_mask
        )
    logp = final.log_softmax(-1)
    if name == "prob_diff":
        return _set_logsumexp(logp, batch.correct, batch.correct_mask).exp() - _set_logsumexp(
            logp, batch.incorrect, batch.incorrect_mask
        ).exp()
    if name == "nll":
        return -_set_logsumexp(logp, batch.correct, batch.correct_mask)
    if name == "kl":
        if clean_logprobs is None:
            raise ValueError("kl needs the clean model's log-probabilities")
        return (clean_logprobs.exp() * (clean_logprobs - logp)).sum(-1)
    raise ValueError(f"metric: '{name}' is not one of {', '.join(METRICS)}")


def metric(
    name: str, logits: torch.Tensor, batch: TaskBatch, clean_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """The batch mean of the metric ``[...]``."""
    return per_prompt(name, logits, batch, clean_logprobs).mean(-1)


def clean_logprobs_of(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Log-probabilities of the clean model at the answer positions ``[B, V]`` (for ``kl``)."""
    return answer_logits(logits, batch).float().log_softmax(-1)


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    """``(m(C) - m(empty)) / (m(M) - m(empty))``; nan when the task does not separate them."""
    denom = m_full - m_empty
    if abs(denom) < 1e-12:
        return float("nan")
    return (m_circuit - m_empty) / denom
