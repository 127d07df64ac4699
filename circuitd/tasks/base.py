"""Task data: what a researcher writes (``TaskData``) and what the engine runs (``Task``).

A task JSON file's minimal form is ``{"clean", "corrupted", "correct", "incorrect",
"metric"}``. Optional fields: ``name``, ``description``, ``answer_position`` (an int or
one per prompt; negative counts from the end; default -1, the last token),
``prepend_bos`` (default true: string prompts get the model's BOS token, id lists are
taken verbatim) and ``position_names`` (a name for each token position, for position-aware
edges; every prompt must then have that many tokens). Prompts are strings or token-id
lists; each answer is a token (a string that encodes to exactly one token, or an id) or a
list of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from circuitd.errors import TaskError
from circuitd.limits import (
    CHARS_PER_TOKEN,
    MAX_ANSWER_TOKENS,
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    MAX_TOKEN_CHARS,
    TOKEN_ID_LIMIT,
    check_entries,
    env_name,
    setting_limit,
)
from circuitd.names import METRICS
from circuitd.tokenizer import Tokenizer, single_token


def _token_id(value: int) -> None:
    if not 0 <= value < TOKEN_ID_LIMIT:
        raise PydanticCustomError(
            "token_id", "token id {value} is outside 0..{top}", {"value": value, "top": TOKEN_ID_LIMIT - 1}
        )


def check_prompt(prompt: str | list[int]) -> str | list[int]:
    """A prompt within ``CIRCUITD_MAX_TOKENS``: as many ids, or ``CHARS_PER_TOKEN`` times as many
    characters of text (its tokens are counted when the task is resolved)."""
    tokens = setting_limit("max_tokens")
    if isinstance(prompt, str):
        if len(prompt) > CHARS_PER_TOKEN * tokens:
            raise PydanticCustomError(
                "too_long", "{n} characters exceed the limit of {limit} ({per} per token of {env})",
                {"n": len(prompt), "limit": CHARS_PER_TOKEN * tokens, "per": CHARS_PER_TOKEN,
                 "env": env_name("max_tokens")},
            )
        return prompt
    check_entries(prompt, tokens, env_name("max_tokens"))
    for i in prompt:
        _token_id(i)
    return prompt


def _check_token(token: str | int) -> None:
    if isinstance(token, str):
        if len(token) > MAX_TOKEN_CHARS:
            raise PydanticCustomError(
                "too_long", "{n} characters exceed the limit of {limit} for one token",
                {"n": len(token), "limit": MAX_TOKEN_CHARS},
            )
    else:
        _token_id(token)


def check_token(token: str | int) -> str | int:
    """A token given as text (one token's worth of characters) or as an id."""
    _check_token(token)
    return token


def check_answer(answer: str | int | list[str | int]) -> str | int | list[str | int]:
    """An answer: a token or at most ``MAX_ANSWER_TOKENS`` of them."""
    if isinstance(answer, list):
        check_entries(answer, MAX_ANSWER_TOKENS)
        for token in answer:
            _check_token(token)
    else:
        _check_token(answer)
    return answer


Prompt = Annotated[str | list[int], AfterValidator(check_prompt)]
Answer = Annotated[str | int | list[str | int], AfterValidator(check_answer)]
GENERATED = "generated"
"""Validation context key of a generator's own output: its size is the ``n`` it was asked for
(bounded by the spec's n_prompts), not a written task's, so ``CIRCUITD_MAX_PROMPTS`` does not
apply (the transcoder trainer draws thousands of prompts from the generators)."""


def _per_prompt_cap(entries: Any, info: ValidationInfo) -> None:
    if isinstance(entries, list) and not (info.context or {}).get(GENERATED):
        check_entries(entries, setting_limit("max_prompts"), env_name("max_prompts"))


def _per_prompt(entries: Any, info: ValidationInfo) -> Any:
    """One entry per prompt: a written task has at most ``CIRCUITD_MAX_PROMPTS``, checked before
    the entries themselves are."""
    _per_prompt_cap(entries, info)
    return entries


PerPrompt = BeforeValidator(_per_prompt)


MAX_POSITION_NAME_CHARS = 32
"""A token position's name ("IO", "S2", "BOS"): short enough to label a graph's position column."""


def _position_names_cap(names: Any) -> Any:
    """At most ``CIRCUITD_MAX_TOKENS`` names (one per position of a prompt), checked before the names."""
    if isinstance(names, list):
        check_entries(names, setting_limit("max_tokens"), env_name("max_tokens"))
    return names


def check_position_name(name: str) -> str:
    """A position name of 1 to ``MAX_POSITION_NAME_CHARS`` characters."""
    if not 1 <= len(name) <= MAX_POSITION_NAME_CHARS:
        raise PydanticCustomError(
            "position_name", "{n} characters, a position name has 1 to {limit}",
            {"n": len(name), "limit": MAX_POSITION_NAME_CHARS},
        )
    return name


PositionName = Annotated[str, AfterValidator(check_position_name)]


def check_positions(position: int | list[int], info: ValidationInfo) -> int | list[int]:
    """Answer positions that can be inside a prompt of ``CIRCUITD_MAX_TOKENS`` tokens."""
    tokens = setting_limit("max_tokens")
    _per_prompt_cap(position, info)
    for pos in position if isinstance(position, list) else [position]:
        if not -tokens <= pos < tokens:
            raise PydanticCustomError(
                "answer_position", "{pos} is outside -{n}..{top} ({env})",
                {"pos": pos, "n": tokens, "top": tokens - 1, "env": env_name("max_tokens")},
            )
    return position


class TaskData(BaseModel):
    """A task as written: checked without a model (lengths, types, metric, limits)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="custom", max_length=MAX_NAME_CHARS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    clean: Annotated[list[Prompt], PerPrompt] = Field(min_length=1)
    corrupted: Annotated[list[Prompt], PerPrompt] = Field(min_length=1)
    correct: Annotated[list[Answer], PerPrompt]
    incorrect: Annotated[list[Answer], PerPrompt]
    metric: str = Field(default="logit_diff", max_length=MAX_NAME_CHARS)
    answer_position: Annotated[int | list[int], AfterValidator(check_positions)] = -1
    prepend_bos: bool = True
    position_names: Annotated[list[PositionName] | None, BeforeValidator(_position_names_cap)] = Field(
        default=None,
        description="a name for each token position of the prompts, for position-aware edges; "
        "the prompts must then all have that many tokens",
    )

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

    @classmethod
    def generated(cls, **fields: Any) -> TaskData:
        """A generator's task: checked as a written one, except for its number of prompts."""
        return cls.model_validate(fields, context={GENERATED: True})

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
    position_names: list[str] | None = None
    """A name for each token position (every prompt has that many tokens), or None."""

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
    names = data.position_names
    for i, (c, k) in enumerate(zip(data.clean, data.corrupted, strict=True)):
        cid = prompt_ids(c, f"clean[{i}]", tokenizer, data.prepend_bos, d_vocab)
        kid = prompt_ids(k, f"corrupted[{i}]", tokenizer, data.prepend_bos, d_vocab)
        if len(cid) != len(kid):
            raise TaskError(
                f"corrupted[{i}]", f"{len(kid)} tokens but clean[{i}] has {len(cid)} tokens"
            )
        if len(cid) > n_ctx:
            raise TaskError(f"clean[{i}]", f"{len(cid)} tokens exceed the model's context {n_ctx}")
        if names is not None and len(cid) != len(names):
            raise TaskError("position_names", f"has {len(names)} names but clean[{i}] has {len(cid)} tokens")
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
    return Task(
        data.name, clean, corrupted, correct, incorrect, answer_pos, data.metric,
        position_names=None if names is None else list(names),
    )
