"""``random``: token-id prompt pairs for models without a tokenizer (random weights).

Clean and corrupted prompts are independent uniform token sequences of one length; the
correct answer is a random token and the incorrect one another, so the metric is an
arbitrary but fixed function of the model, which is all invariant tests need.
"""

from __future__ import annotations

import random as _random
from typing import cast

from circuitd.tasks.base import Answer, Prompt, TaskData
from circuitd.tokenizer import Tokenizer


def generate(
    tokenizer: Tokenizer | None, d_vocab: int, n: int = 8, seed: int = 0, length: int = 6,
    metric: str = "logit_diff",
) -> TaskData:
    rng = _random.Random(seed)
    clean: list[Prompt] = [[rng.randrange(d_vocab) for _ in range(length)] for _ in range(n)]
    corrupted: list[Prompt] = [[rng.randrange(d_vocab) for _ in range(length)] for _ in range(n)]
    correct = [rng.randrange(d_vocab) for _ in range(n)]
    incorrect: list[Answer] = [(c + 1 + rng.randrange(d_vocab - 1)) % d_vocab for c in correct]
    return TaskData(
        name="random", clean=clean, corrupted=corrupted,
        correct=cast(list[Answer], correct),  # token ids; list[int] is not list[Answer] (invariance)
        incorrect=incorrect, metric=metric, prepend_bos=False,
    )
