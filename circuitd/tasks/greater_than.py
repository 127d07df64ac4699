"""``greater_than``: year-span completion (Hanna et al. 2023).

"The war lasted from the year 1732 to the year 17" -> any two-digit token greater than
32 is correct, any one at most 32 incorrect. The corrupted prompt writes the start year
as 1701, which leaves almost every ending plausible, so the circuit's job is the
comparison with YY. Default metric: probability difference (sum of the probabilities of
the correct endings minus the incorrect ones).

Positions (when every prompt tokenizes as the template does): the template's words by their
text, the slots as "NOUN", "CC" (the century), "YY", and "END" for the last (the repeated
century, after which the answer comes): "BOS", "The", "NOUN", "lasted", "from", "the",
"year", "CC", "YY", "to", "the", "year", "END".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from circuitd.errors import TaskError
from circuitd.names import MetricName
from circuitd.tasks.base import TaskData
from circuitd.tasks.params import GeneratorParams
from circuitd.tasks.positions import common_names, template_position_names
from circuitd.tasks.vocab import (
    CENTURIES,
    DURATION_NOUNS,
    TWO_DIGITS,
    Century,
    encodes,
    one_token,
    same_length,
    single_words,
)
from circuitd.tokenizer import Tokenizer

TEMPLATE = "The {noun} lasted from the year {century}{yy} to the year {century}"
YEARS: tuple[int, ...] = tuple(range(2, 99))  # YY in 02..98: both answer sets non-empty
CORRUPT_YY = "01"
SLOT_NAMES = {"noun": "NOUN", "century": "CC", "yy": "YY"}


@dataclass(frozen=True)
class GreaterThanExample:
    prompt: str
    corrupted: str
    noun: str
    century: str
    yy: int


def sample_greater_than(
    rng: random.Random,
    nouns: Sequence[str] = DURATION_NOUNS,
    centuries: Sequence[str] = CENTURIES,
    years: Sequence[int] = YEARS,
) -> GreaterThanExample:
    """Draw one example; the training corpus and ``generate`` share this definition."""
    noun, century, yy = rng.choice(nouns), rng.choice(centuries), rng.choice(years)
    prompt = TEMPLATE.format(noun=noun, century=century, yy=f"{yy:02d}")
    corrupted = TEMPLATE.format(noun=noun, century=century, yy=CORRUPT_YY)
    return GreaterThanExample(prompt, corrupted, noun, century, yy)


def position_names(tokenizer: Tokenizer, examples: Sequence[GreaterThanExample]) -> list[str] | None:
    """The template's position names if every prompt tokenizes as the template does, else None."""
    return common_names(
        template_position_names(
            tokenizer, TEMPLATE, {"noun": e.noun, "century": e.century, "yy": f"{e.yy:02d}"},
            SLOT_NAMES, last="END",
        )
        for e in examples
    )


def sample_greater_than_text(rng: random.Random) -> tuple[str, str]:
    """A training sentence as (prompt, continuation): an end year after the start year."""
    ex = sample_greater_than(rng)
    end = rng.randint(ex.yy + 1, 99)
    return ex.prompt, f"{end:02d}."


def _splits_as_pair(tokenizer: Tokenizer, century: str, yy: str) -> bool:
    """Whether " CCYY" encodes as the century token then the YY token (GPT-2 merges some)."""
    try:
        whole = tokenizer.encode(f" {century}{yy}", prepend_bos=False)
        head = tokenizer.encode(f" {century}", prepend_bos=False)
        tail = tokenizer.encode(yy, prepend_bos=False)
    except ValueError:
        return False
    return len(head) == 1 and len(tail) == 1 and whole == head + tail


class GreaterThanParams(GeneratorParams):
    """greater_than's parameters: its metric (probability difference by default) and centuries."""

    metric: MetricName = Field(default="prob_diff", description="the task's metric")
    centuries: list[Century] | None = Field(
        default=None, min_length=1, max_length=len(CENTURIES),
        description='the start years\' centuries: "17", "16,17" or ["16", "17"] (default all)',
    )

    @field_validator("centuries", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split(",") if isinstance(value, str) else value


def generate(
    tokenizer: Tokenizer | None, d_vocab: int, n: int = 64, seed: int = 0, **params: Any
) -> TaskData:
    """``n`` prompt pairs; ``params`` are :class:`GreaterThanParams`."""
    p = GreaterThanParams.of(params)
    if tokenizer is None:
        raise TaskError("task", "greater_than needs a model with a tokenizer")
    cents: list[str] = list(p.centuries or CENTURIES)
    digits = [
        d for d in TWO_DIGITS
        if (tok := one_token(tokenizer, d)) is not None and tok < d_vocab
    ]
    if len(digits) < len(TWO_DIGITS):
        raise TaskError(
            "task", f"greater_than needs the 100 two-digit tokens 00..99, this model has "
            f"{len(digits)}"
        )
    nouns = single_words(tokenizer, DURATION_NOUNS, d_vocab)
    if not nouns:
        raise TaskError("task", "greater_than: no event noun is a single token for this model")
    pairs = [
        (c, y) for c in cents for y in YEARS
        if _splits_as_pair(tokenizer, c, f"{y:02d}") and _splits_as_pair(tokenizer, c, CORRUPT_YY)
    ]
    if encodes(tokenizer, TEMPLATE.format(noun=nouns[0], century="17", yy="32")) is None:
        raise TaskError("task", "greater_than: this tokenizer cannot express the template")
    if not pairs:
        raise TaskError("task", "greater_than: no start year splits into century and YY tokens")

    rng = random.Random(seed)
    examples: list[GreaterThanExample] = []
    for _ in range(50 * n):
        if len(examples) == n:
            break
        century, yy = rng.choice(pairs)
        ex = sample_greater_than(rng, nouns, [century], [yy])
        if same_length(tokenizer, ex.prompt, ex.corrupted):
            examples.append(ex)
    if len(examples) < n:
        raise TaskError(
            "task", f"greater_than: only {len(examples)} of {n} prompt pairs had equal lengths"
        )
    return TaskData.generated(
        name="greater_than",
        description="year-span completion: endings greater than YY are correct; YY=01 corrupts",
        clean=[e.prompt for e in examples],
        corrupted=[e.corrupted for e in examples],
        correct=[[d for d in TWO_DIGITS if int(d) > e.yy] for e in examples],
        incorrect=[[d for d in TWO_DIGITS if int(d) <= e.yy] for e in examples],
        metric=p.metric,
        position_names=position_names(tokenizer, examples),
    )
