"""``induction``: continue a repeated sequence (Olsson et al. 2022).

Prompt: a random sequence of distinct words, then its first ``prefix_len`` words again;
the correct answer is the next word of the first copy. The corrupted prompt replaces the
first copy with a different random sequence that shares only the word at the last
prefix position (the "anchor"), so an induction mechanism on the corrupted prompt
predicts that sequence's next word: that word is the incorrect answer. The second copy
is the same in both prompts, so only the first copy's content differs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from circuitd.errors import TaskError
from circuitd.tasks.base import TaskData
from circuitd.tasks.vocab import INDUCTION_WORDS, check_metric, same_length, single_words
from circuitd.tokenizer import Tokenizer


@dataclass(frozen=True)
class InductionExample:
    seq: tuple[str, ...]
    other: tuple[str, ...]
    prefix_len: int

    @property
    def prompt(self) -> str:
        return " ".join(self.seq + self.seq[: self.prefix_len])

    @property
    def corrupted(self) -> str:
        return " ".join(self.other + self.seq[: self.prefix_len])

    @property
    def correct(self) -> str:
        return self.seq[self.prefix_len]

    @property
    def incorrect(self) -> str:
        return self.other[self.prefix_len]


def sample_induction(
    rng: random.Random, seq_len: int, prefix_len: int, pool: Sequence[str] = INDUCTION_WORDS
) -> InductionExample:
    """Draw one example; ``other`` is disjoint from ``seq`` except the anchor word."""
    words = rng.sample(list(pool), 2 * seq_len - 1)
    seq = words[:seq_len]
    other = words[seq_len:]
    other.insert(prefix_len - 1, seq[prefix_len - 1])
    return InductionExample(tuple(seq), tuple(other), prefix_len)


def sample_induction_text(
    rng: random.Random, min_len: int = 4, max_len: int = 14
) -> tuple[str, str, int]:
    """A training sequence: ``seq`` then a repeat of at least half of it. Returns
    (first copy, repeat, length of the first copy in words)."""
    seq_len = rng.randint(min_len, max_len)
    seq = rng.sample(list(INDUCTION_WORDS), seq_len)
    repeat = rng.randint(max(1, seq_len // 2), seq_len)
    return " ".join(seq), " " + " ".join(seq[:repeat]), seq_len


def generate(
    tokenizer: Tokenizer | None,
    d_vocab: int,
    n: int = 64,
    seed: int = 0,
    metric: str = "logit_diff",
    seq_len: int = 10,
    prefix_len: int | None = None,
) -> TaskData:
    """``n`` prompt pairs; the prompt is ``seq_len`` words plus the first ``prefix_len`` again
    (default half), so every prompt has ``seq_len + prefix_len`` words."""
    if tokenizer is None:
        raise TaskError("task", "induction needs a model with a tokenizer")
    check_metric(metric)
    k = seq_len // 2 if prefix_len is None else prefix_len
    if seq_len < 2:
        raise TaskError("seq_len", f"must be at least 2, got {seq_len}")
    if not 1 <= k < seq_len:
        raise TaskError("prefix_len", f"must be in 1..{seq_len - 1}, got {k}")
    pool = single_words(tokenizer, INDUCTION_WORDS, d_vocab)
    if len(pool) < 2 * seq_len - 1:
        raise TaskError(
            "task", f"induction with seq_len={seq_len} needs {2 * seq_len - 1} pool words that "
            f"are single tokens for this model, found {len(pool)}"
        )
    rng = random.Random(seed)
    examples: list[InductionExample] = []
    for _ in range(50 * n):
        if len(examples) == n:
            break
        ex = sample_induction(rng, seq_len, k, pool)
        if same_length(tokenizer, ex.prompt, ex.corrupted):
            examples.append(ex)
    if len(examples) < n:
        raise TaskError(
            "task", f"induction: only {len(examples)} of {n} prompt pairs had equal lengths"
        )
    return TaskData(
        name="induction",
        description=f"repeated random words (seq_len={seq_len}, prefix_len={k}); the corrupted "
        "first copy shares only the anchor word",
        clean=[e.prompt for e in examples],
        corrupted=[e.corrupted for e in examples],
        correct=[f" {e.correct}" for e in examples],
        incorrect=[f" {e.incorrect}" for e in examples],
        metric=metric,
    )
