"""``induction``: continue a repeated sequence (Olsson et al. 2022).

Prompt: a random sequence of distinct words, then its first ``prefix_len`` words again;
the correct answer is the next word of the first copy. The corrupted prompt replaces the
first copy with a different random sequence that shares only the word at the last
prefix position (the "anchor"), so an induction mechanism on the corrupted prompt
predicts that sequence's next word: that word is the incorrect answer. The second copy
is the same in both prompts, so only the first copy's content differs.

Positions (when every word is one token): "BOS", the first copy "A0".."A{seq_len-1}", the
repeat "B0".."B{prefix_len-1}"; the answer is read at the last, B{prefix_len-1}, whose
continuation is A{prefix_len}.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from circuitd.errors import TaskError
from circuitd.tasks.base import TaskData
from circuitd.tasks.params import GeneratorParams
from circuitd.tasks.vocab import INDUCTION_WORDS, same_length, single_words
from circuitd.tokenizer import Tokenizer

MAX_SEQ_LEN = (len(INDUCTION_WORDS) + 1) // 2  # a prompt pair draws 2 * seq_len - 1 distinct words


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


class InductionParams(GeneratorParams):
    """induction's parameters: the sequence's length and how much of it repeats."""

    seq_len: int = Field(default=10, ge=2, le=MAX_SEQ_LEN, description="words of the first copy")
    prefix_len: int | None = Field(
        default=None, ge=1, le=MAX_SEQ_LEN - 1, description="words repeated (default half of seq_len)"
    )

    @field_validator("prefix_len")
    @classmethod
    def _shorter(cls, value: int | None, info: ValidationInfo) -> int | None:
        seq_len = info.data.get("seq_len")
        if value is not None and seq_len is not None and value >= seq_len:
            raise ValueError(f"must be in 1..{seq_len - 1}, got {value}")
        return value


def position_names(
    tokenizer: Tokenizer, prompts: Sequence[str], seq_len: int, prefix_len: int
) -> list[str] | None:
    """The names of the positions, or None where a prompt is not one token per word (GPT-2
    splits some words when no space precedes them, as the first word's does)."""
    names = ["BOS"] if tokenizer.bos_id is not None else []
    names += [f"A{i}" for i in range(seq_len)] + [f"B{i}" for i in range(prefix_len)]
    if any(len(tokenizer.encode(p, prepend_bos=True)) != len(names) for p in prompts):
        return None
    return names


def generate(
    tokenizer: Tokenizer | None, d_vocab: int, n: int = 64, seed: int = 0, **params: Any
) -> TaskData:
    """``n`` prompt pairs; the prompt is ``seq_len`` words plus the first ``prefix_len`` again
    (default half), so every prompt has ``seq_len + prefix_len`` words (:class:`InductionParams`)."""
    p = InductionParams.of(params)
    if tokenizer is None:
        raise TaskError("task", "induction needs a model with a tokenizer")
    seq_len = p.seq_len
    k = seq_len // 2 if p.prefix_len is None else p.prefix_len
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
    clean = [e.prompt for e in examples]
    return TaskData.generated(
        name="induction",
        description=f"repeated random words (seq_len={seq_len}, prefix_len={k}); the corrupted "
        "first copy shares only the anchor word",
        clean=clean,
        corrupted=[e.corrupted for e in examples],
        correct=[f" {e.correct}" for e in examples],
        incorrect=[f" {e.incorrect}" for e in examples],
        metric=p.metric,
        position_names=position_names(tokenizer, clean, seq_len, k),
    )
