"""Bounds on what a spec may ask for, checked before any work is done. Imports no torch.

A hostile or mistaken spec must fail at validation with a message naming the field, never in a
worker (out of memory, or a late ``TypeError``). Limits that deployments tune are settings
(:mod:`circuitd.settings`): their messages name the ``CIRCUITD_*`` variable that raises them.
Limits that no deployment needs to tune are the constants below.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from circuitd.settings import get_settings

MAX_SEED = 2**32 - 1
"""Seeds are 32-bit: what every random number generator the engine seeds accepts."""

TOKEN_ID_LIMIT = 2**31
"""Token ids are int32 values; a model's own vocabulary bound is checked when the task is resolved."""

CHARS_PER_TOKEN = 32
"""Text prompts hold at most this many characters per token of ``CIRCUITD_MAX_TOKENS``."""

MAX_TOKEN_CHARS = 256
"""A single token written as text (an answer, a target token)."""

MAX_ANSWER_TOKENS = 1024
"""Tokens in one answer list (greater_than's answers are up to 98)."""

MAX_NAME_CHARS = 128
"""A task's name."""

MAX_DESCRIPTION_CHARS = 4096
"""A task's description."""

MAX_TAUS = 64
"""Thresholds of one ACDC sweep: every tau is a branch of the run."""

MAX_VALIDATE_NODES = 256
"""Nodes one attribution-graph job scales to check its graph."""

MAX_NODE_ID_CHARS = 64
"""A node id such as ``f3.1234@5`` or ``logit.42``."""

MAX_SCALE = 1e3
"""``validate_scale``'s magnitude: scaling a node by more than this only measures overflow."""


def setting_limit(setting: str) -> int:
    """The current value of the setting ``setting`` (read per call: tests change the environment)."""
    return int(getattr(get_settings(), setting))


def env_name(setting: str) -> str:
    return f"CIRCUITD_{setting.upper()}"


def check_at_most(value: float, setting: str) -> None:
    """Refuse ``value`` above the setting, naming the variable that raises the limit."""
    limit = setting_limit(setting)
    if value > limit:
        raise PydanticCustomError(
            "less_than_equal", "{value} exceeds the limit of {limit} ({env})",
            {"value": value, "limit": limit, "env": env_name(setting)},
        )


def at_most(setting: str) -> AfterValidator:
    """A field's bound from the settings (``Annotated[int, at_most("max_batch_size")]``); None passes."""

    def check(value: Any) -> Any:
        if value is not None:
            check_at_most(value, setting)
        return value

    return AfterValidator(check)


def check_entries(value: Sized, limit: int, env: str | None = None) -> None:
    """Refuse a collection longer than ``limit``; ``env`` names the setting when it is one."""
    if len(value) > limit:
        where = f" ({env})" if env else ""
        raise PydanticCustomError(
            "too_long", "{n} entries exceed the limit of {limit}{where}",
            {"n": len(value), "limit": limit, "where": where},
        )


def entries_at_most(setting: str) -> BeforeValidator:
    """A list's length bound from the settings, checked before its entries are validated."""

    def check(value: Any) -> Any:
        if isinstance(value, list | tuple):
            check_entries(value, setting_limit(setting), env_name(setting))
        return value

    return BeforeValidator(check)
