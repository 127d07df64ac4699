"""Who is asking: the trust boundary between the machine's own user and the service's clients.

A spec that arrives over the API (and the job a worker runs from it) is checked under the
service's rules: it may name only the files, hub repositories and code the operator allowed
(``CIRCUITD_MODEL_ROOTS``, ``CIRCUITD_HUB_MODELS``, ``CIRCUITD_HUB_TRANSCODERS``). The CLI,
run by the machine's own user, has full access. The default is the service's rules, so code
that forgets to choose is refused rather than trusted. Imports no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

from circuitd.errors import CircuitdError, ModelError
from circuitd.models.ids import TL_NAMES_FILE, parse_model_id
from circuitd.settings import get_settings

ALL_TL = "*tl"
"""In ``CIRCUITD_HUB_MODELS``: every TransformerLens model name and alias (:data:`TL_NAMES_FILE`)."""

HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")

_FULL_ACCESS: ContextVar[bool] = ContextVar("circuitd_full_access", default=False)


def has_full_access() -> bool:
    """True inside :func:`full_access` (the CLI); False for the service and by default."""
    return _FULL_ACCESS.get()


@contextmanager
def full_access() -> Iterator[None]:
    """The machine's own user: any local directory, any hub name."""
    token = _FULL_ACCESS.set(True)
    try:
        yield
    finally:
        _FULL_ACCESS.reset(token)


@contextmanager
def service_access() -> Iterator[None]:
    """A client of the service: only what the operator allowed (also the default)."""
    token = _FULL_ACCESS.set(False)
    try:
        yield
    finally:
        _FULL_ACCESS.reset(token)


def _entries(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def is_hub_repo(source: str) -> bool:
    """``org/name``, nothing that reads as a path (``..``, a leading ``.``, ``/`` or ``~``)."""
    return bool(HUB_REPO.fullmatch(source)) and ".." not in source


def _is_dir(path: str) -> bool:
    """``Path.is_dir`` that answers False where the name cannot even be looked up (too long, unreadable)."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def model_roots() -> list[Path]:
    """The directories of ``CIRCUITD_MODEL_ROOTS``, as real paths (symlinks resolved)."""
    return [Path(os.path.realpath(Path(r).expanduser())) for r in _entries(get_settings().model_roots)]


def _under_roots(path: str, what: str, error: type[CircuitdError] = CircuitdError) -> None:
    """Refuse ``path`` unless its real path (symlinks resolved) lies inside a model root; nothing
    under ``path`` is looked at before that."""
    roots = model_roots()
    if not roots:
        raise error(f"{what}: local files are not allowed here (CIRCUITD_MODEL_ROOTS is empty)")
    real = Path(os.path.realpath(Path(path).expanduser()))
    if not any(real.is_relative_to(root) for root in roots):
        raise error(f"{what}: not inside a directory that CIRCUITD_MODEL_ROOTS allows")  # no server paths


@lru_cache
def tl_names() -> frozenset[str]:
    """TransformerLens's model names and aliases, lowercased (TransformerLens matches them so)."""
    lines = TL_NAMES_FILE.read_text().splitlines()
    return frozenset(n.strip().lower() for n in lines if n.strip() and not n.startswith("#"))


def _hub_model_allowed(name: str) -> bool:
    allowed = {e.lower() for e in _entries(get_settings().hub_models)}
    return name.lower() in allowed or (ALL_TL in allowed and name.lower() in tl_names())


def check_model_id(model_id: str) -> None:
    """Refuse a model id the caller may not use (a :class:`ModelError` in one line).

    Full access: every id :func:`parse_model_id` accepts. Service rules: ``local:`` directories
    inside ``CIRCUITD_MODEL_ROOTS`` (checked before the directory is looked at), zoo and random
    ids, and hub names that ``CIRCUITD_HUB_MODELS`` lists.
    """
    if has_full_access():
        parse_model_id(model_id)
        return
    kind, sep, rest = model_id.strip().partition(":")
    if sep and kind == "local":
        _under_roots(rest, f"local:{rest}", ModelError)
    ref = parse_model_id(model_id)
    if ref.kind == "tl" and not _hub_model_allowed(ref.name):
        raise ModelError(
            f"'{ref.name}' is not an allowed hub model (CIRCUITD_HUB_MODELS lists them; "
            f"'{ALL_TL}' allows TransformerLens's model names)"
        )


def check_transcoders(source: str | None) -> None:
    """Refuse a transcoder source the caller may not use (a :class:`CircuitdError` in one line).

    None (the zoo model's shipped set) is always allowed, and under full access everything is.
    Service rules: a hub repo id that ``CIRCUITD_HUB_TRANSCODERS`` lists, or a directory inside
    ``CIRCUITD_MODEL_ROOTS``. A source is a directory when one exists by that name, else a hub id
    when it reads as one: the order :func:`circuitd.transcoders.sources.load_transcoders` uses.
    """
    if source is None or has_full_access():
        return
    if is_hub_repo(source) and not _is_dir(source):
        if source not in _entries(get_settings().hub_transcoders):
            raise CircuitdError(
                f"hub repo '{source}' is not an allowed transcoder source "
                "(CIRCUITD_HUB_TRANSCODERS lists them)"
            )
        return
    _under_roots(source, f"directory '{source}'")


def check_hub_transcoder_uri(repo_id: str, uri: str) -> None:
    """Refuse an ``hf://`` entry of a transcoder config whose repository the caller may not use:
    under the service's rules the repository must be listed in ``CIRCUITD_HUB_TRANSCODERS``, as
    for a hub source (:func:`check_transcoders`). Full access allows every repository."""
    if has_full_access():
        return
    if not is_hub_repo(repo_id) or repo_id not in _entries(get_settings().hub_transcoders):
        raise CircuitdError(
            f"{uri}: hub repo '{repo_id}' is not an allowed transcoder source "
            "(CIRCUITD_HUB_TRANSCODERS lists them)"
        )
