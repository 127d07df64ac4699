"""compose.yaml as Docker Compose reads it, for tests without Compose: the file parsed with
PyYAML, ``.env`` files read, and variables interpolated by Compose's rules (``${VAR}``, ``$VAR``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``,
``${VAR+alt}``, and ``$$`` for a literal ``$``)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"

# $$ | ${NAME[op arg]} | $NAME
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """Required variables that are unset (or empty, for ``:?``), each with Compose's message."""

    def __init__(self, missing: dict[str, str]):
        self.missing = missing
        super().__init__("; ".join(f"required variable {k} is missing a value: {msg}"
                                   for k, msg in missing.items()))


def load(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        assert eq, f"{path}: not KEY=VALUE: {raw!r}"
        values[key.strip()] = value.strip()
    return values


def references(text: str) -> Iterator[tuple[str, str]]:
    """(variable, operator) for each reference in a string; the operator is '' for plain ones."""
    for m in VARIABLE.finditer(text):
        if m["escaped"] is None:
            yield (m["braced"] or m["named"]), (m["op"] or "")


def _substitute(text: str, env: Mapping[str, str], missing: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m["escaped"] is not None:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"] or "", m["arg"] or ""
        value = env.get(name)
        present = bool(value) if op.startswith(":") else value is not None  # ':' also rejects ''
        kind = op.lstrip(":")
        if kind == "-" and not present:
            return arg
        if kind == "?" and not present:
            missing.setdefault(name, arg)
            return ""
        if kind == "+":
            return arg if present else ""
        return value or ""

    return VARIABLE.sub(one, text)


def interpolate(data: Any, env: Mapping[str, str]) -> Any:
    """The values of a parsed compose file with variables substituted (keys are left as they are);
    raises InterpolationError naming every required variable without a value."""
    missing: dict[str, str] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _substitute(node, env, missing)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(data)
    if missing:
        raise InterpolationError(missing)
    return out


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed compose file."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, from either of Compose's forms (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [str(item).partition("=") for item in env]
        return {key: value for key, _, value in pairs}
    return {str(k): str(v) for k, v in env.items()}


def command_text(service: Mapping[str, Any]) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else str(command)
