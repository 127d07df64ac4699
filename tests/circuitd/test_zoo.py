"""zoo:synth as shipped: it loads, it solves its three tasks on held-out prompts, its card
tells the truth, and its weights stay small."""

from __future__ import annotations

import json

import pytest

from circuitd.models.ids import ZOO_DIR
from circuitd.models.registry import load_model
from circuitd.models.zoo_train import heldout_accuracy, is_heldout, vocabulary

SYNTH = ZOO_DIR / "synth"


@pytest.fixture(scope="module")
def adapter():
    return load_model("zoo:synth")


@pytest.fixture(scope="module")
def accuracy(adapter) -> dict[str, float]:
    return heldout_accuracy(adapter)


def test_files_and_size() -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "CARD.md", "card.json"):
        assert (SYNTH / name).is_file(), name
    assert (SYNTH / "model.safetensors").stat().st_size <= 10 * 1024 * 1024


def test_shape_matches_tokenizer(adapter) -> None:
    cfg = json.loads((SYNTH / "config.json").read_text())
    assert adapter.shape.d_vocab == adapter.tokenizer.vocab_size == cfg["d_vocab"]
    assert len(vocabulary()) + 2 == cfg["d_vocab"]  # the training vocabulary, plus specials
    assert (adapter.shape.n_layers, adapter.shape.n_heads, adapter.shape.d_model) == (4, 8, 128)


@pytest.mark.parametrize("task", ["ioi", "greater_than", "induction"])
def test_heldout_top1(accuracy: dict[str, float], task: str) -> None:
    assert accuracy[task] >= 0.9


def test_card_agrees(accuracy: dict[str, float]) -> None:
    card = json.loads((SYNTH / "card.json").read_text())
    for task, value in accuracy.items():
        assert abs(card["heldout_top1"][task] - value) <= 0.03, task
        assert f"| {task} |" in (SYNTH / "CARD.md").read_text()


def test_heldout_split_is_a_tenth() -> None:
    keys = [f"prompt {i}" for i in range(5000)]
    share = sum(map(is_heldout, keys)) / len(keys)
    assert 0.08 < share < 0.12
