"""The vocabularies a spec may name, each written once: metrics, ablations, dtypes, attribution
conventions.

Methods are named by the registry (:data:`circuitd.methods.METHODS`). Imports no torch: the spec,
the API catalog and the CLI read these names without loading the engine.
"""

from __future__ import annotations

from typing import Literal, get_args

MetricName = Literal["logit_diff", "prob_diff", "kl", "nll"]
AblationName = Literal["resample", "zero", "mean"]
DTypeName = Literal["float32", "float64", "bfloat16", "float16"]
AttributionConvention = Literal["circuitd", "circuit-tracer"]
"""How attribution graphs define token and error nodes (:mod:`circuitd.attribution.attribute`)."""

METRICS: tuple[str, ...] = get_args(MetricName)
ABLATIONS: tuple[str, ...] = get_args(AblationName)
DTYPES: tuple[str, ...] = get_args(DTypeName)
ATTRIBUTION_CONVENTIONS: tuple[str, ...] = get_args(AttributionConvention)
