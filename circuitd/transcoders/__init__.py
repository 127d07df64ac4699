"""Transcoders: wide, sparse stand-ins for a model's MLPs (Ameisen et al. 2025).

* :mod:`~circuitd.transcoders.modules`: per-layer and cross-layer transcoders and the set that
  replaces every MLP of a model;
* :mod:`~circuitd.transcoders.io`: saving and loading sets in circuit-tracer's file layout, and
  seeded random sets;
* :mod:`~circuitd.transcoders.train`: training a per-layer set on a model's activations, and its
  card (imported from there: it is not re-exported here).
"""

from circuitd.transcoders.io import CONFIG_FILE, THRESHOLD_KEY, load, random_transcoders, save
from circuitd.transcoders.modules import (
    ACTIVATIONS,
    INPUT_HOOK,
    KINDS,
    OUTPUT_HOOK,
    CrossLayerTranscoder,
    Transcoder,
    TranscoderBase,
    TranscoderError,
    TranscoderSet,
    activate,
)

__all__ = [
    "ACTIVATIONS",
    "CONFIG_FILE",
    "INPUT_HOOK",
    "KINDS",
    "OUTPUT_HOOK",
    "THRESHOLD_KEY",
    "CrossLayerTranscoder",
    "Transcoder",
    "TranscoderBase",
    "TranscoderError",
    "TranscoderSet",
    "activate",
    "load",
    "random_transcoders",
    "save",
]
