"""Models shipped with circuitd: one folder each (config.json, model.safetensors,
tokenizer.json, CARD.md, card.json); ``circuitd.models.zoo_train`` rebuilds them."""
