"""Circuit-discovery methods by name; each is ``run(ctx: MethodContext) -> MethodResult``."""

from __future__ import annotations

from collections.abc import Callable

from circuitd.methods.base import MethodContext, MethodResult

METHOD_NAMES = ("eap", "eap-ig", "acdc")


def get_method(name: str) -> Callable[[MethodContext], MethodResult]:
    from circuitd.methods import acdc, eap

    table = {"eap": eap.run_eap, "eap-ig": eap.run_eap_ig, "acdc": acdc.run_acdc}
    if name not in table:
        raise ValueError(f"method: '{name}' is not one of {', '.join(table)}")
    return table[name]
