"""Circuit-discovery methods by name: the registry every caller reads.

Each entry is a :class:`~circuitd.methods.contract.Method`: a name, a summary, a typed
parameter model and ``run(ctx, params) -> Result``, whose computation is named by an import
string. The spec validates ``params`` with the entry's model, the CLI derives its flags from
it, the API's catalog publishes its schema and ``discover`` calls ``run``. Adding a method is
its module (parameters and ``Method``), the module its entry names, and one line here. Imports
no torch: the engine is imported when a method runs.
"""

from __future__ import annotations

from circuitd.methods.acdc import ACDC
from circuitd.methods.attribution_graph import ATTRIBUTION_GRAPH
from circuitd.methods.contract import Method
from circuitd.methods.eap import EAP, EAP_IG, EAP_IG_ACT
from circuitd.methods.edge_patching import PATCHING
from circuitd.methods.edge_pruning import EDGE_PRUNING

METHODS: dict[str, Method] = {
    m.name: m for m in (EAP, EAP_IG, EAP_IG_ACT, PATCHING, EDGE_PRUNING, ACDC, ATTRIBUTION_GRAPH)
}


def param_owners(name: str) -> list[str]:
    """The methods that have a parameter called ``name`` (for errors that name them)."""
    return [m.name for m in METHODS.values() if name in m.params.model_fields]


__all__ = ["METHODS", "Method", "param_owners"]
