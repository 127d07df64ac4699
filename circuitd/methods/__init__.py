"""Circuit-discovery methods by name.

The edge methods are ``run(ctx: MethodContext) -> MethodResult`` over one edge graph and a task;
``attribution-graph`` explains one prompt through transcoders and is run by
:func:`circuitd.methods.attribution_graph.run_attribution_graph` (``discover`` dispatches).
"""

from __future__ import annotations

from collections.abc import Callable

from circuitd.methods.base import MethodContext, MethodResult

EDGE_METHODS = ("eap", "eap-ig", "acdc")
METHOD_NAMES = (*EDGE_METHODS, "attribution-graph")


def get_method(name: str) -> Callable[[MethodContext], MethodResult]:
    from circuitd.methods import acdc, eap

    table = {"eap": eap.run_eap, "eap-ig": eap.run_eap_ig, "acdc": acdc.run_acdc}
    if name not in table:
        raise ValueError(f"method: '{name}' is not one of {', '.join(table)}")
    return table[name]
