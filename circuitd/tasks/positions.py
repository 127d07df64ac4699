"""Names of token positions, for position-aware edges (``--positions``).

Position-aware edges split every edge by token position, which only means something when all
prompts share one layout (a template): position 7 must be the same slot in every prompt. A
generator names the positions of its template (:func:`template_position_names`); for any other
task of one prompt length, :func:`shared_position_names` derives names from the tokens that all
prompts share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from string import Formatter

from circuitd.errors import TaskError
from circuitd.tasks.base import MAX_POSITION_NAME_CHARS, Task
from circuitd.tokenizer import Tokenizer

BOS_NAME = "BOS"


def _fit(text: str, fallback: str) -> str:
    """A name within the limit; ``fallback`` for a token that is only whitespace."""
    return text.strip()[:MAX_POSITION_NAME_CHARS] or fallback


def token_name(tokenizer: Tokenizer | None, token: int, pos: int) -> str:
    """A token's text as a position name ("#<id>" without a tokenizer)."""
    if tokenizer is None:
        return f"#{token}"
    if pos == 0 and token == tokenizer.bos_id:
        return BOS_NAME
    return _fit(tokenizer.decode([token]), f"p{pos}")


def template_position_names(
    tokenizer: Tokenizer, template: str, values: Mapping[str, str], roles: Mapping[str, str],
    bos: bool = True, last: str | None = None,
) -> list[str] | None:
    """Names of the positions of ``template.format(**values)``: each ``{slot}`` is named by its
    role, each token of the fixed text by its text, the first by "BOS" when one is prepended
    and the last by ``last`` if given. None when the tokenization does not follow the template
    (a slot that is not exactly one token, or tokens merging across a slot's edge), since the
    positions would then not line up across prompts."""
    pieces: list[tuple[str, str | None]] = []
    for literal, slot, _, _ in Formatter().parse(template):
        pieces.append((literal, None))
        if slot is not None:
            pieces.append((values[slot], roles[slot]))
    text = "".join(p for p, _ in pieces)
    try:
        full = tokenizer.encode(text, prepend_bos=False)
        names = [BOS_NAME] if bos and tokenizer.bos_id is not None else []
        offset = len(names)
        chars, stop, end = 0, 0, 0  # the pieces' characters so far, the boundary, its tokens
        for piece, role in pieces:
            chars += len(piece)
            # A piece ends before the spaces that end it: BPE tokenizers attach a space to the
            # word after it (" Mary"), so a prefix ending in a space is not a prefix of the tokens.
            stop = max(stop, len(text[:chars].rstrip()))
            ids = full if stop == len(text) else tokenizer.encode(text[:stop], prepend_bos=False)
            if full[: len(ids)] != ids or len(ids) < end:
                return None
            if role is not None:
                if len(ids) - end != 1:
                    return None
                names.append(role)
            else:
                names += [token_name(tokenizer, full[t], offset + t) for t in range(end, len(ids))]
            end = len(ids)
    except ValueError:  # a word-level tokenizer without one of the words
        return None
    if end != len(full):  # the text ends in spaces that no piece took
        return None
    if last is not None and names:
        names[-1] = last
    return names


def common_names(per_prompt: Iterable[list[str] | None]) -> list[str] | None:
    """The names if every prompt has the same ones, else None (the positions do not line up)."""
    first: list[str] | None = None
    for names in per_prompt:
        if names is None or (first is not None and names != first):
            return None
        first = first or names
    return first


def _one_length(prompts: list[list[int]], which: str) -> int:
    lengths = {len(p) for p in prompts}
    if len(lengths) > 1:
        raise TaskError(
            "params.positions", "position-aware edges need prompts of one length (a shared template): "
            f"{which} prompts have {min(lengths)} to {max(lengths)} tokens",
        )
    return lengths.pop()


def shared_position_names(task: Task, tokenizer: Tokenizer | None) -> list[str]:
    """The names to use for position-aware edges: the task's own, else for each position the
    token that every clean prompt has there (its text) or ``p{i}`` where the prompts differ.
    Raises TaskError when the prompts do not all have one length."""
    if task.position_names is not None:
        return list(task.position_names)
    if not task.clean:
        return []
    n = _one_length(task.clean, "clean")
    if task.corrupted:
        _one_length(task.clean + task.corrupted, "clean and corrupted")
    names = []
    for pos in range(n):
        tokens = {prompt[pos] for prompt in task.clean}
        names.append(token_name(tokenizer, tokens.pop(), pos) if len(tokens) == 1 else f"p{pos}")
    return names
