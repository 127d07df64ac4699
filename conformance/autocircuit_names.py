"""auto-circuit's edge names and circuitd's, both ways.

auto-circuit (``separate_qkv=True``) names sources ``Resid Start``, ``A{l}.{h}``, ``MLP {l}``
and destinations ``A{l}.{h}.{Q|K|V}``, ``MLP {l}``, ``Resid End``; an edge is
``{src}->{dest}``. circuitd names them ``input``, ``a{l}.h{h}``, ``m{l}`` and
``a{l}.h{h}<q|k|v>``, ``m{l}``, ``logits`` (:mod:`circuitd.edges`). Pure Python, no torch:
both virtual environments import it.
"""

from __future__ import annotations

import re

_HEAD = re.compile(r"A(\d+)\.(\d+)")
_HEAD_INPUT = re.compile(r"A(\d+)\.(\d+)\.([QKV])")
_MLP = re.compile(r"MLP (\d+)")
_C_HEAD = re.compile(r"a(\d+)\.h(\d+)")
_C_HEAD_INPUT = re.compile(r"a(\d+)\.h(\d+)<([qkv])>")
_C_MLP = re.compile(r"m(\d+)")


def node_to_circuitd(name: str) -> str:
    """circuitd's name of an auto-circuit source or destination node."""
    if name == "Resid Start":
        return "input"
    if name == "Resid End":
        return "logits"
    if m := _HEAD_INPUT.fullmatch(name):
        return f"a{m[1]}.h{m[2]}<{m[3].lower()}>"
    if m := _HEAD.fullmatch(name):
        return f"a{m[1]}.h{m[2]}"
    if m := _MLP.fullmatch(name):
        return f"m{m[1]}"
    raise ValueError(f"auto-circuit node '{name}': not a node name circuitd maps")


def node_to_autocircuit(name: str) -> str:
    """auto-circuit's name of a circuitd node (a source, or a destination input)."""
    if name == "input":
        return "Resid Start"
    if name == "logits":
        return "Resid End"
    if m := _C_HEAD_INPUT.fullmatch(name):
        return f"A{m[1]}.{m[2]}.{m[3].upper()}"
    if m := _C_HEAD.fullmatch(name):
        return f"A{m[1]}.{m[2]}"
    if m := _C_MLP.fullmatch(name):
        return f"MLP {m[1]}"
    raise ValueError(f"circuitd node '{name}': not a node name auto-circuit has")


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
