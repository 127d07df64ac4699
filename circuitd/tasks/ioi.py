"""``ioi``: indirect object identification (Wang et al. 2023).

"When Mary and John went to the store, John gave a drink to" -> " Mary". The clean
answer is the indirect object (IO), the incorrect one the repeated subject (S). ABBA
prompts name IO first, BABA prompts name S first. The corrupted prompt is the same
template with the three name slots filled by three other distinct names (the "ABC"
corruption), so it carries no information about which name is the answer.

Answers are written with a leading space (" Mary"): that is the token that follows
"to" in GPT-2's BPE, and word-level tokenizers ignore the space.

Positions: with one template (``template``) and one order, every prompt has the same layout
when each name, place and object is one token. They are named by the template's words and the
slots' roles: "IO" and "S1" for the first two names (as the order places them), "S2" for the
repeated subject, "PLACE", "OBJECT", "END" for the last position (the answer follows it) and
"BOS". With both orders the first two names are "A" and "B" (their roles vary by prompt).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from circuitd.errors import TaskError
from circuitd.tasks.base import TaskData
from circuitd.tasks.params import GeneratorParams
from circuitd.tasks.positions import common_names, template_position_names
from circuitd.tasks.vocab import (
    NAMES,
    OBJECTS,
    PLACES,
    encodes,
    same_length,
    single_words,
)
from circuitd.tokenizer import Tokenizer

# {A} is named first, {B} second, {C} is the subject of the final clause (a repeat).
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the {place}, {C} gave a {object} to",
    "Then, {A} and {B} went to the {place}. {C} gave a {object} to",
    "After {A} and {B} went to the {place}, {C} gave a {object} to",
    "While {A} and {B} were working at the {place}, {C} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {C} gave it to",
    "When {A} and {B} got a {object} at the {place}, {C} decided to give it to",
    "The {place} that {A} and {B} went to had a {object}. {C} gave it to",
    "Afterwards, {A} and {B} went to the {place}. {C} gave a {object} to",
)
ORDERS = ("ABBA", "BABA")
MIN_NAMES = 5  # IO, S and three distinct corrupting names


@dataclass(frozen=True)
class IOIExample:
    """One IOI prompt with its ABC corruption."""

    prompt: str
    corrupted: str
    io: str
    s: str
    order: str
    template: int
    place: str
    obj: str


def render(template: str, a: str, b: str, c: str, place: str, obj: str) -> str:
    return template.format(A=a, B=b, C=c, place=place, object=obj)


def sample_ioi(
    rng: random.Random,
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
    templates: Sequence[int] | None = None,
    orders: Sequence[str] = ORDERS,
) -> IOIExample:
    """Draw one IOI example; the training corpus and ``generate`` share this definition."""
    t = rng.choice(templates) if templates is not None else rng.randrange(len(TEMPLATES))
    order = rng.choice(orders)
    io, s, *others = rng.sample(list(names), MIN_NAMES)
    place, obj = rng.choice(places), rng.choice(objects)
    a, b = (io, s) if order == "ABBA" else (s, io)
    prompt = render(TEMPLATES[t], a, b, s, place, obj)
    corrupted = render(TEMPLATES[t], others[0], others[1], others[2], place, obj)
    return IOIExample(prompt, corrupted, io, s, order, t, place, obj)


def sample_ioi_text(rng: random.Random) -> tuple[str, str]:
    """A training sentence as (prompt, continuation): the continuation is " IO." """
    ex = sample_ioi(rng)
    return ex.prompt, f" {ex.io}."


def _usable_templates(tokenizer: Tokenizer, name: str, place: str, obj: str) -> list[int]:
    """Templates whose fixed words this tokenizer can express."""
    return [
        i for i, t in enumerate(TEMPLATES)
        if encodes(tokenizer, render(t, name, name, name, place, obj)) is not None
    ]


class IOIParams(GeneratorParams):
    """ioi's parameters: which name orders and templates its prompts use."""

    templates: Literal["ABBA", "BABA", "both"] = Field(
        default="both", description="ABBA names the answer first, BABA the subject first"
    )
    template: int | None = Field(
        default=None, ge=0, le=len(TEMPLATES) - 1, description="use only this template (aligned positions)"
    )


def _slot_names(order: str) -> dict[str, str]:
    """The name slots' roles: {A} and {B} by the order ("A" and "B" when it varies)."""
    a, b = {"ABBA": ("IO", "S1"), "BABA": ("S1", "IO")}.get(order, ("A", "B"))
    return {"A": a, "B": b, "C": "S2", "place": "PLACE", "object": "OBJECT"}


def position_names(tokenizer: Tokenizer, examples: Sequence[IOIExample], order: str) -> list[str] | None:
    """Names of the positions if every prompt has the same layout (one template, every slot one
    token), else None; ``order`` is "ABBA", "BABA" or "both"."""
    roles = _slot_names(order)
    return common_names(
        template_position_names(
            tokenizer, TEMPLATES[e.template],
            {"A": e.io if e.order == "ABBA" else e.s, "B": e.s if e.order == "ABBA" else e.io,
             "C": e.s, "place": e.place, "object": e.obj},
            roles, last="END",
        )
        for e in examples
    )


def generate(
    tokenizer: Tokenizer | None, d_vocab: int, n: int = 64, seed: int = 0, **params: Any
) -> TaskData:
    """``n`` IOI prompt pairs for ``tokenizer``; ``params`` are :class:`IOIParams`."""
    p = IOIParams.of(params)
    if tokenizer is None:
        raise TaskError("task", "ioi needs a model with a tokenizer")
    orders = ORDERS if p.templates == "both" else (p.templates,)
    names = single_words(tokenizer, NAMES, d_vocab)
    places = single_words(tokenizer, PLACES, d_vocab)
    objects = single_words(tokenizer, OBJECTS, d_vocab)
    if len(names) < MIN_NAMES:
        raise TaskError(
            "task", f"ioi needs {MIN_NAMES} names that are single tokens for this model, "
            f"found {len(names)}"
        )
    if not places or not objects:
        raise TaskError("task", "ioi: no place or object word is a single token for this model")
    usable = _usable_templates(tokenizer, names[0], places[0], objects[0])
    if not usable:
        raise TaskError("task", "ioi: this tokenizer cannot express any of the ioi templates")
    if p.template is not None:
        if p.template not in usable:
            raise TaskError(
                "template", f"ioi template {p.template} cannot be written with this tokenizer "
                f"(usable: {', '.join(map(str, usable))})"
            )
        usable = [p.template]

    rng = random.Random(seed)
    examples: list[IOIExample] = []
    for _ in range(50 * n):
        if len(examples) == n:
            break
        ex = sample_ioi(rng, names, places, objects, usable, orders)
        if same_length(tokenizer, ex.prompt, ex.corrupted):
            examples.append(ex)
    if len(examples) < n:
        raise TaskError("task", f"ioi: only {len(examples)} of {n} prompt pairs had equal lengths")
    return TaskData.generated(
        name="ioi",
        description=f"indirect object identification ({p.templates}"
        + ("" if p.template is None else f", template {p.template}") + "), ABC corruption",
        clean=[e.prompt for e in examples],
        corrupted=[e.corrupted for e in examples],
        correct=[f" {e.io}" for e in examples],
        incorrect=[f" {e.s}" for e in examples],
        metric=p.metric,
        position_names=position_names(tokenizer, examples, p.templates),
    )
