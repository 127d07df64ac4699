"""Transcoder training: it recovers a known sparse map, and the CLI writes a loadable set with a card."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from circuitd.errors import CircuitdError
from circuitd.models.registry import load_model
from circuitd.transcoders import TranscoderSet, load
from circuitd.transcoders.sources import load_transcoders
from circuitd.transcoders.train import TrainSettings, layer_figures, train_layer


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_training_recovers_a_sparse_map(activation):
    """Outputs made by a hidden sparse dictionary plus a linear part: a trained transcoder explains
    nearly all of their variance, with the L0 its activation allows."""
    gen = torch.Generator().manual_seed(0)
    n, d, m = 20_000, 16, 64
    x = torch.randn(n, d, generator=gen)
    enc = torch.randn(m, d, generator=gen)
    enc /= enc.norm(dim=1, keepdim=True)
    codes = torch.relu(x @ enc.T - 1.5)  # sparse: about 4 of 64 directions fire per input
    dec = torch.randn(m, d, generator=gen) / 4
    y = codes @ dec + 0.3 * x @ torch.randn(d, d, generator=gen)
    s = TrainSettings(d_tc=128, activation=activation, k=8, l1=1e-4, steps=1500, batch=1024, lr=3e-3)
    tc = train_layer(x, y, s, log=lambda _: None)
    fig = layer_figures(TranscoderSet([tc]), x[None], y[None])[0]
    assert fig["fve"] >= 0.95, fig
    if activation == "topk":
        assert fig["mean_l0"] <= 8


@pytest.mark.slow
def test_cli_trains_a_loadable_set_with_a_card(tmp_path):
    out = tmp_path / "tc"
    cmd = [sys.executable, "-m", "circuitd.cli", "transcoders", "train", "--model", "zoo:synth",
           "--out", str(out), "--steps", "30", "--n-sequences", "300", "--n-heldout", "100", "--d-tc", "64",
           "--k", "4", "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "variance explained per layer" in run.stdout and "agreement" in run.stdout
    tset = load(out)
    assert (tset.n_layers, tset.d_tc, tset.k, tset.has_skip) == (4, 64, 4, True)
    card = json.loads((out / "card.json").read_text())
    assert card["settings"]["steps"] == 30 and len(card["layers"]) == 4
    assert 0 <= card["replacement_top1_agreement"] <= 1 and (out / "CARD.md").is_file()
    bad = subprocess.run([*cmd[:6], "random:tiny"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--out: required" in bad.stderr


def test_unusable_transcoder_sources_fail_in_one_line(monkeypatch, tmp_path):
    adapter = load_model("random:tiny")
    with pytest.raises(CircuitdError, match="random:tiny@0 ships no transcoders"):
        load_transcoders(None, adapter)
    with pytest.raises(CircuitdError, match="neither a directory nor a hub repo id"):
        load_transcoders(str(tmp_path / "missing" / "dir"), adapter)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CircuitdError, match="cannot fetch hub repo 'nobody/no-such-transcoders'"):
        load_transcoders("nobody/no-such-transcoders", adapter)
