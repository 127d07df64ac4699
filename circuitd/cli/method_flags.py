"""``discover``'s method flags, derived from the registry's parameter models.

Each parameter of every method becomes one flag (``ig_steps`` -> ``--ig-steps``; a field may
name its own flag with ``json_schema_extra={"cli_flag": ...}``): its type, choices, default
and help come from the model, so the CLI cannot drift from the spec. A parameter that several
methods share is one flag. Flags left out are not passed, so the model's defaults apply.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import Any, Literal

from pydantic.fields import FieldInfo

from circuitd.errors import CircuitdError
from circuitd.methods import METHODS, param_owners


def flag_of(name: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("cli_flag"), str):
        return str(extra["cli_flag"])
    return "--" + name.replace("_", "-")


def _members(annotation: Any) -> list[Any]:
    """The types of a union (``X | None`` -> ``[X]``), or ``[annotation]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _text_or_ids(value: str) -> str | list[int]:
    """A prompt: text, or a JSON list of token ids (``[0, 42, 54]``)."""
    if value.lstrip().startswith("["):
        try:
            ids = json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON list of token ids: {exc}") from exc
        if not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
            raise argparse.ArgumentTypeError("a JSON list must hold token ids (integers)")
        return ids
    return value


def _scalar(annotation: Any) -> dict[str, Any]:
    """argparse keywords for one value of ``annotation``."""
    if typing.get_origin(annotation) is Literal:
        return {"choices": list(typing.get_args(annotation))}
    if annotation in (int, float):
        return {"type": annotation}
    return {}


def _keywords(info: FieldInfo) -> dict[str, Any]:
    """argparse keywords (type, choices, nargs or action) for a parameter."""
    members = _members(info.annotation)
    lists = [m for m in members if typing.get_origin(m) is list]
    if bool in members:
        return {"action": argparse.BooleanOptionalAction}
    if str in members and lists:  # text or token ids
        return {"type": _text_or_ids}
    if lists:
        item = _members(typing.get_args(lists[0])[0])[0]
        sizes = {m.min_length for m in info.metadata if hasattr(m, "min_length")}
        sizes &= {m.max_length for m in info.metadata if hasattr(m, "max_length")}
        shape = {"nargs": sizes.pop()} if sizes else {"action": "append"}
        return {**shape, **_scalar(item)}
    return _scalar(members[0])


def _help(info: FieldInfo, repeat: bool) -> str:
    text = info.description or ""
    default = info.get_default(call_default_factory=True)
    if default is not None and not isinstance(default, bool):
        text += f" (default {default})"
    return (text + (" (repeat for more)" if repeat else "")).replace("%", "%%")


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per method parameter, in help groups named after the methods that read them."""
    groups: dict[str, Any] = {}
    seen: set[str] = set()
    for method in METHODS.values():
        for name, info in method.params.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            title = ", ".join(param_owners(name))
            if title not in groups:
                groups[title] = parser.add_argument_group(f"parameters of {title}")
            kw = _keywords(info)
            if "choices" not in kw and kw.get("action") is not argparse.BooleanOptionalAction:
                kw["metavar"] = name.upper()
            groups[title].add_argument(
                flag_of(name, info), dest=f"param_{name}", default=argparse.SUPPRESS,
                help=_help(info, kw.get("action") == "append"), **kw,
            )


def method_params(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The method flags given on the command line, as ``params`` of ``method``; a flag of
    another method is an error naming it."""
    params: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith("param_"):
            continue
        name = dest.removeprefix("param_")
        if name not in METHODS[method].params.model_fields:
            owners = param_owners(name)
            flag = flag_of(name, METHODS[owners[0]].params.model_fields[name])
            raise CircuitdError(f"{flag}: only for {', '.join(owners)}, not {method}")
        params[name] = value
    return params
