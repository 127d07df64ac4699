"""Models: one adapter over TransformerLens, a registry of model ids, and the shipped zoo."""
