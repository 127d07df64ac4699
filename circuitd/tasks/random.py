"""``random``: token-id prompt pairs for models without a tokenizer (random weights).

Clean and corrupted prompts are independent uniform token sequences of one length; the
correct answer is a random token and the incorrect one another, so the metric is an
arbitrary but fixed function of the model, which is all invariant tests need. Every prompt
has ``length`` tokens and no BOS, so position i is named "t{i}".
"""

from __future__ import annotations

import random as _random
from typing import Annotated, Any, cast

from pydantic import Field

from circuitd.errors import TaskError
from circuitd.limits import at_most
from circuitd.tasks.base import Answer, Prompt, TaskData
from circuitd.tasks.params import GeneratorParams
from circuitd.tokenizer import Tokenizer


class RandomParams(GeneratorParams):
    """random's parameters: the prompts' length in tokens."""

    length: Annotated[int, at_most("max_tokens")] = Field(default=6, ge=1, description="tokens per prompt")


def generate(tokenizer: Tokenizer | None, d_vocab: int, n: int = 8, seed: int = 0, **params: Any) -> TaskData:
    """``n`` pairs of uniform token sequences; ``params`` are :class:`RandomParams`."""
    p = RandomParams.of(params)
    if d_vocab < 2:
        raise TaskError("task", f"random needs a vocabulary of at least 2 tokens, the model has {d_vocab}")
    rng = _random.Random(seed)
    clean: list[Prompt] = [[rng.randrange(d_vocab) for _ in range(p.length)] for _ in range(n)]
    corrupted: list[Prompt] = [[rng.randrange(d_vocab) for _ in range(p.length)] for _ in range(n)]
    correct = [rng.randrange(d_vocab) for _ in range(n)]
    incorrect: list[Answer] = [(c + 1 + rng.randrange(d_vocab - 1)) % d_vocab for c in correct]
    return TaskData.generated(
        name="random", clean=clean, corrupted=corrupted,
        correct=cast(list[Answer], correct),  # token ids; list[int] is not list[Answer] (invariance)
        incorrect=incorrect, metric=p.metric, prepend_bos=False,
        position_names=[f"t{i}" for i in range(p.length)],
    )
