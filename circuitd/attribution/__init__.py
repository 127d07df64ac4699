"""Attribution graphs on a local replacement model (Ameisen et al. 2025).

* :mod:`~circuitd.attribution.replacement`: one real forward pass recorded, and the local
  replacement model (frozen attention patterns and LayerNorm scales, MLPs as transcoders plus
  errors) built on it;
* :mod:`~circuitd.attribution.attribute`: the graph's nodes and its full adjacency, by batched
  backward passes through that model;
* :mod:`~circuitd.attribution.interventions`: predicted against measured effects of scaling nodes.
"""

from circuitd.attribution.attribute import (
    Attribution,
    active_features,
    attribute,
    build_nodes,
    select_logits,
    source_vectors,
    target_readouts,
)
from circuitd.attribution.interventions import (
    InterventionCheck,
    check_interventions,
    intervene,
    predict_change,
)
from circuitd.attribution.replacement import (
    AttributionError,
    FeatureMode,
    FrozenRun,
    ReplacementContext,
    check_supported,
    record,
)

__all__ = [
    "Attribution",
    "AttributionError",
    "FeatureMode",
    "FrozenRun",
    "InterventionCheck",
    "ReplacementContext",
    "active_features",
    "attribute",
    "build_nodes",
    "check_interventions",
    "check_supported",
    "intervene",
    "predict_change",
    "record",
    "select_logits",
    "source_vectors",
    "target_readouts",
]
