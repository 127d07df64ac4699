"""auto-circuit's edge names and circuitd's, both ways.

auto-circuit (``separate_qkv=True``) names sources ``Resid Start``, ``A{l}.{h}``, ``MLP {l}``
and destinations ``A{l}.{h}.{Q|K|V}``, ``MLP {l}``, ``Resid End``; an edge is
``{src}->{dest}``. circuitd names them ``input``, ``a{l}.h{h}``, ``m{l}`` and
``a{l}.h{h}<q|k|v>``, ``m{l}``, ``logits`` (:mod:`circuitd.edges`). Pure Python, no torch:
both virtual environments import it.
"""

from __future__ import annotations

import re

_FORMS: tuple[tuple[str, str], ...] = (
    ("Resid Start", "input"),
    ("Resid End", "logits"),
    ("A{l}.{h}.{x}", "a{l}.h{h}<{x}>"),
    ("A{l}.{h}", "a{l}.h{h}"),
    ("MLP {l}", "m{l}"),
)
"""Each node's name in auto-circuit's vocabulary and in circuitd's: ``{l}`` a layer, ``{h}`` a
head, ``{x}`` q/k/v (upper case in auto-circuit, lower case in circuitd)."""


def _pattern(form: str, qkv: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[lhx]\})", form)
    fields = {"{l}": r"(?P<l>\d+)", "{h}": r"(?P<h>\d+)", "{x}": f"(?P<x>[{qkv}])"}
    return re.compile("".join(fields.get(part, re.escape(part)) for part in parts))


_AUTOCIRCUIT = [(_pattern(a, "QKV"), c) for a, c in _FORMS]
_CIRCUITD = [(_pattern(c, "qkv"), a) for a, c in _FORMS]


def _translate(name: str, rules: list[tuple[re.Pattern[str], str]], upper: bool, what: str) -> str:
    for pattern, form in rules:
        if m := pattern.fullmatch(name):
            groups = m.groupdict()
            if groups.get("x"):
                groups["x"] = groups["x"].upper() if upper else groups["x"].lower()
            return form.format(**groups)
    raise ValueError(f"{what} node '{name}': not a node name the other side has")


def node_to_circuitd(name: str) -> str:
    """circuitd's name of an auto-circuit source or destination node."""
    return _translate(name, _AUTOCIRCUIT, upper=False, what="auto-circuit")


def node_to_autocircuit(name: str) -> str:
    """auto-circuit's name of a circuitd node (a source, or a destination input)."""
    return _translate(name, _CIRCUITD, upper=True, what="circuitd")


def _split(edge: str) -> tuple[str, str]:
    src, sep, dest = edge.partition("->")
    if not sep or not src or not dest:
        raise ValueError(f"edge '{edge}': expected 'source->destination'")
    return src, dest


def edge_to_circuitd(edge: str) -> str:
    """``Resid Start->A0.1.Q`` -> ``input->a0.h1<q>``."""
    src, dest = _split(edge)
    return f"{node_to_circuitd(src)}->{node_to_circuitd(dest)}"


def edge_to_autocircuit(edge: str) -> str:
    """``input->a0.h1<q>`` -> ``Resid Start->A0.1.Q``."""
    src, dest = _split(edge)
    return f"{node_to_autocircuit(src)}->{node_to_autocircuit(dest)}"
