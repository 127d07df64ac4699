"""Edge attribution patching (EAP), EAP-IG with interpolated inputs and EAP-IG over
activations: their parameters and registry entries. The scores are computed in
:mod:`circuitd.methods.eap_scores` and :mod:`circuitd.methods.eap_ig_act_scores`."""

from __future__ import annotations

from typing import ClassVar

from circuitd.methods.contract import EdgeMethod, EdgeParams, IGSteps, NodeScoring


class EAPParams(EdgeParams):
    """EAP has no options of its own: one gradient at the clean input."""

    node_scoring: ClassVar[NodeScoring | None] = "sum"  # first-order scores add up over a node
    neuron_level: ClassVar[bool] = True
    position_aware: ClassVar[bool] = True


class EAPIGParams(EdgeParams, IGSteps):
    """EAP-IG: gradients averaged along the inputs' interpolation from corrupted to clean."""

    node_scoring: ClassVar[NodeScoring | None] = "sum"
    neuron_level: ClassVar[bool] = True
    position_aware: ClassVar[bool] = True


class EAPIGActParams(EdgeParams, IGSteps):
    """EAP-IG over activations: gradients averaged along each layer's source activations
    interpolated from ablated to clean, the rest of the model computed from them."""

    node_scoring: ClassVar[NodeScoring | None] = "sum"  # a node's out-edges share its interpolation
    position_aware: ClassVar[bool] = True


EAP = EdgeMethod(
    "eap", "edge attribution patching: one gradient per edge", EAPParams,
    "circuitd.methods.eap_scores:score_eap",
)
EAP_IG = EdgeMethod(
    "eap-ig", "EAP with integrated gradients over interpolated inputs", EAPIGParams,
    "circuitd.methods.eap_scores:score_eap_ig",
)
EAP_IG_ACT = EdgeMethod(
    "eap-ig-act", "EAP with integrated gradients over each layer's interpolated activations", EAPIGActParams,
    "circuitd.methods.eap_ig_act_scores:score_eap_ig_act",
)
