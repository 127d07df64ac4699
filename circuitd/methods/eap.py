"""Edge attribution patching (EAP) and EAP-IG with interpolated inputs: their parameters and
registry entries. The scores are computed in :mod:`circuitd.methods.eap_scores`."""

from __future__ import annotations

from circuitd.methods.contract import EdgeMethod, EdgeParams, IGSteps


class EAPParams(EdgeParams):
    """EAP has no options of its own: one gradient at the clean input."""


class EAPIGParams(EdgeParams, IGSteps):
    """EAP-IG: gradients averaged along the inputs' interpolation from corrupted to clean."""


EAP = EdgeMethod(
    "eap", "edge attribution patching: one gradient per edge", EAPParams,
    "circuitd.methods.eap_scores:score_eap",
)
EAP_IG = EdgeMethod(
    "eap-ig", "EAP with integrated gradients over interpolated inputs", EAPIGParams,
    "circuitd.methods.eap_scores:score_eap_ig",
)
