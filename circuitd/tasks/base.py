"""Task data: what a researcher writes (``TaskData``) and what the engine runs (``Task``).

A task JSON file's minimal form is ``{"clean", "corrupted", "correct", "incorrect",
"metric"}``. Optional fields: ``name``, ``description``, ``answer_position`` (an int or
one per prompt; negative counts from the end; default -1, the last token) and
``prepend_bos`` (default true: string prompts get the model's BOS token, id lists are
taken verbatim). Prompts are strings or token-id lists; each answer is a token (a string
that encodes to exactly one token, or an id) or a list of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from circuitd.errors import TaskError
from circuitd.names import METRICS
from circuitd.tokenizer import Tokenizer, single_token

Prompt = str | list[int]
Answer = str | int | list[str | int]


class TaskData(BaseModel):
    """A task as written: checked without a model (lengths, types, metric)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    description: str = ""
    clean: list[Prompt] = Field(min_length=1)
    corrupted: list[Prompt] = Field(min_length=1)
    correct: list[Answer]
    incorrect: list[Answer]
    metric: str = "logit_diff"
    answer_position: int | list[int] = -1
    prepend_bos: bool = True

    @model_validator(mode="after")
    def _check_shapes(self) -> TaskData:
        n = len(self.clean)
        for name in ("corrupted", "correct", "incorrect"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: has {len(getattr(self, name))} entries, clean has {n}")
        if isinstance(self.answer_position, list) and len(self.answer_position) != n:
            raise ValueError(f"answer_position: has {len(self.answer_position)} entries, clean has {n}")
        if self.metric not in METRICS:
            raise ValueError(f"metric: '{self.metric}' is not one of {', '.join(METRICS)}")
        for name in ("correct", "incorrect"):
            for i, ans in enumerate(getattr(self, name)):
                if isinstance(ans, list) and not ans:
                    raise ValueError(f"{name}[{i}]: empty answer list")
        for i, (c, k) in enumerate(zip(self.clean, self.corrupted, strict=True)):
            if isinstance(c, list) and isinstance(k, list) and len(c) != len(k):
                raise ValueError(
                    f"corrupted[{i}]: {len(k)} tokens but clean[{i}] has {len(c)}"
                )
        return self

    def head(self, n: int) -> TaskData:
        """The first ``n`` prompts."""
        pos = self.answer_position
        return self.model_copy(
            update=dict(
                clean=self.clean[:n], corrupted=self.corrupted[:n], correct=self.correct[:n],
                incorrect=self.incorrect[:n],
                answer_position=pos[:n] if isinstance(pos, list) else pos,
            )
        )


@dataclass
class Task:
    """A task in token ids, checked against a model's tokenizer, vocabulary and context."""

    name: str
    clean: list[list[int]]
    corrupted: list[list[int]]
    correct: list[list[int]]
    incorrect: list[list[int]]
    answer_pos: list[int]
    metric: str = "logit_diff"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clean)

    def head(self, n: int) -> Task:
        """The first ``n`` prompts."""
        return replace(
            self, clean=self.clean[:n], corrupted=self.corrupted[:n], correct=self.correct[:n],
            incorrect=self.incorrect[:n], answer_pos=self.answer_pos[:n],
        )


def prompt_ids(
    prompt: Prompt, where: str, tokenizer: Tokenizer | None, bos: bool, d_vocab: int
) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise TaskError(where, "this model has no tokenizer: give prompts as token-id lists")
        try:
            ids = tokenizer.encode(prompt, prepend_bos=bos)
        except ValueError as exc:
            raise TaskError(where, str(exc)) from exc
    else:
        ids = list(prompt)
    if not ids:
        raise TaskError(where, "empty prompt")
    bad = [i for i in ids if not 0 <= i < d_vocab]
    if bad:
        raise TaskError(where, f"token id {bad[0]} is outside the vocabulary (0..{d_vocab - 1})")
    return ids


def answer_ids(answer: Answer, where: str, tokenizer: Tokenizer | None, d_vocab: int) -> list[int]:
    items = answer if isinstance(answer, list) else [answer]
    out: list[int] = []
    for j, item in enumerate(items):
        at = f"{where}[{j}]" if isinstance(answer, list) else where
        if isinstance(item, str):
            if tokenizer is None:
                raise TaskError(at, "this model has no tokenizer: give answers as token ids")
            tok = single_token(tokenizer, item)
            if tok is None:
                raise TaskError(at, f"'{item}' is not a single token for this model")
            item = tok
        if not 0 <= item < d_vocab:
            raise TaskError(at, f"token id {item} is outside the vocabulary (0..{d_vocab - 1})")
        out.append(item)
    return out


def resolve_task(data: TaskData, tokenizer: Tokenizer | None, d_vocab: int, n_ctx: int) -> Task:
    """Token ids for every prompt and answer; errors name the field and the prompt."""
    clean, corrupted, answer_pos = [], [], []
    for i, (c, k) in enumerate(zip(data.clean, data.corrupted, strict=True)):
        cid = prompt_ids(c, f"clean[{i}]", tokenizer, data.prepend_bos, d_vocab)
        kid = prompt_ids(k, f"corrupted[{i}]", tokenizer, data.prepend_bos, d_vocab)
        if len(cid) != len(kid):
            raise TaskError(
                f"corrupted[{i}]", f"{len(kid)} tokens but clean[{i}] has {len(cid)} tokens"
            )
        if len(cid) > n_ctx:
            raise TaskError(f"clean[{i}]", f"{len(cid)} tokens exceed the model's context {n_ctx}")
        pos = data.answer_position
        pos = pos[i] if isinstance(pos, list) else pos
        if not -len(cid) <= pos < len(cid):
            raise TaskError(f"answer_position[{i}]", f"{pos} is outside a {len(cid)}-token prompt")
        clean.append(cid)
        corrupted.append(kid)
        answer_pos.append(pos % len(cid))
    correct = [answer_ids(a, f"correct[{i}]", tokenizer, d_vocab) for i, a in enumerate(data.correct)]
    incorrect = [
        answer_ids(a, f"incorrect[{i}]", tokenizer, d_vocab) for i, a in enumerate(data.incorrect)
    ]
    return Task(data.name, clean, corrupted, correct, incorrect, answer_pos, data.metric)
