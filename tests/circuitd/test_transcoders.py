"""Transcoders: the activation maths against hand computations, cross-layer reconstruction
against an explicit loop over layers, and the circuit-tracer file layout (exact names and
keys, bit-exact round trips, one-line errors naming the bad tensor)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from circuitd.transcoders import (
    ACTIVATIONS,
    KINDS,
    CrossLayerTranscoder,
    Transcoder,
    TranscoderSet,
    activate,
    load,
    random_transcoders,
    save,
)

L, D, F = 3, 8, 16  # layers, d_model, d_tc of the random sets


def _hand_transcoder(activation: str = "relu", **kw) -> Transcoder:
    """d_tc=3, d_model=2; on x=[2, -1] the pre-activations are [2, -2, 1.5]."""
    return Transcoder(
        W_enc=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        b_enc=torch.tensor([0.0, -1.0, 0.5]),
        W_dec=torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]),
        b_dec=torch.tensor([0.5, -0.5]),
        activation=activation,
        **kw,
    )


X = torch.tensor([[2.0, -1.0]])


def test_relu_by_hand() -> None:
    tc = _hand_transcoder()
    torch.testing.assert_close(tc.pre_activations(X), torch.tensor([[2.0, -2.0, 1.5]]))
    torch.testing.assert_close(tc.encode(X), torch.tensor([[2.0, 0.0, 1.5]]))
    # 2*[1, 0] + 1.5*[2, 2] + [0.5, -0.5]
    torch.testing.assert_close(tc(X), torch.tensor([[5.5, 2.5]]))


def test_jumprelu_by_hand() -> None:
    # pre 2 is not above threshold 2 (strict), -2 is above -3 and kept as -2, 1.5 > 1 kept
    tc = _hand_transcoder("jumprelu", threshold=torch.tensor([2.0, -3.0, 1.0]))
    torch.testing.assert_close(tc.encode(X), torch.tensor([[0.0, -2.0, 1.5]]))
    # -2*[0, 1] + 1.5*[2, 2] + [0.5, -0.5]
    torch.testing.assert_close(tc(X), torch.tensor([[3.5, 0.5]]))


def test_topk_by_hand() -> None:
    pre = torch.tensor([[3.0, -1.0, 0.5, 2.0, -4.0], [-1.0, 0.2, -3.0, -0.5, -2.0]])
    expected = torch.tensor([[3.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.2, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(activate(pre, "topk", k=2), expected)
    tc = _hand_transcoder("topk", k=1)
    torch.testing.assert_close(tc.encode(X), torch.tensor([[2.0, 0.0, 0.0]]))
    torch.testing.assert_close(tc(X), torch.tensor([[2.5, -0.5]]))


def test_topk_keeps_exactly_k_largest() -> None:
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(4, 64, 32, generator=gen) + 5.0  # all positive: ReLU removes none
    acts = activate(pre, "topk", k=5)
    assert torch.equal((acts != 0).sum(-1), torch.full((4, 64), 5))
    kept = acts != 0
    assert torch.equal(acts[kept], pre[kept])
    assert (
        pre.masked_fill(~kept, float("inf")).amin(-1) > pre.masked_fill(kept, -float("inf")).amax(-1)
    ).all()
    ties = activate(torch.ones(3, 10), "topk", k=4)
    assert torch.equal((ties != 0).sum(-1), torch.full((3,), 4))


def test_skip_is_x_times_w_skip_transposed() -> None:
    tc = _hand_transcoder(W_skip=torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    # x @ W_skip.T = [-1, 4] on top of the relu reconstruction [5.5, 2.5]
    torch.testing.assert_close(tc.skip(X), torch.tensor([[-1.0, 4.0]]))
    torch.testing.assert_close(tc(X), torch.tensor([[4.5, 6.5]]))


def test_bad_construction_names_the_tensor() -> None:
    with pytest.raises(ValueError, match="'W_dec'"):
        Transcoder(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="threshold"):
        Transcoder(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, 3), torch.zeros(3), "jumprelu")
    with pytest.raises(ValueError, match="k"):
        Transcoder(torch.zeros(4, 3), torch.zeros(4), torch.zeros(4, 3), torch.zeros(3), "topk", k=5)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_on_any_leading_dims(kind: str) -> None:
    tset = random_transcoders(L, D, F, kind, "relu", skip=True, seed=1)
    assert (tset.n_layers, tset.d_model, tset.d_tc, tset.kind) == (L, D, F, kind)
    xs = torch.randn(L, 2, 3, D)
    for layer in range(L):
        assert tset.pre_activations(layer, xs[layer]).shape == (2, 3, F)
        assert tset.encode(layer, xs[layer]).shape == (2, 3, F)
        assert tset.encode(layer, xs[layer, 0, 0]).shape == (F,)
    assert tset.reconstruct_all(xs).shape == (L, 2, 3, D)
    assert tset.reconstruct(1, list(xs)).shape == (2, 3, D)
    if kind == "transcoder":
        tc = tset.transcoder(0)
        assert tc.decode(tc.encode(xs[0])).shape == (2, 3, D)
        assert tset.reconstruct(0, xs[0]).shape == (2, 3, D)
    else:
        assert tset.clt is not None
        assert tset.clt.encode_all(xs).shape == (L, 2, 3, F)
        assert tset.clt.decode(tset.clt.encode_all(xs)).shape == (L, 2, 3, D)


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cross_layer_reconstruction_is_sum_over_earlier_layers(activation: str, skip: bool) -> None:
    tset = random_transcoders(L, D, F, "cross_layer_transcoder", activation, skip, seed=2)
    clt = tset.clt
    assert clt is not None
    xs = torch.randn(L, 5, D, generator=torch.Generator().manual_seed(3))
    expected = []
    for j in range(L):
        out = clt.b_dec[j].expand(5, D).clone()
        for i in range(j + 1):
            acts = clt.encode(i, xs[i])
            for f in range(F):
                out += acts[:, f : f + 1] * clt.W_dec[i][f, j - i]
        if skip:
            out += xs[j] @ clt.W_skip[j].T
        expected.append(out)
    expected_t = torch.stack(expected)
    assert expected_t.abs().mean() > 0.1
    torch.testing.assert_close(tset.reconstruct_all(xs), expected_t, rtol=1e-5, atol=1e-5)
    for j in range(L):
        torch.testing.assert_close(tset.reconstruct(j, xs[: j + 1]), expected_t[j], rtol=1e-5, atol=1e-5)
    # layer 0 reads only its own input
    later = xs.clone()
    later[1:] += 10.0
    torch.testing.assert_close(tset.reconstruct(0, later), expected_t[0])


def test_per_layer_set_matches_its_transcoders() -> None:
    tset = random_transcoders(L, D, F, "transcoder", "jumprelu", skip=True, seed=4)
    xs = torch.randn(L, 6, D)
    for j in range(L):
        tc = tset.transcoder(j)
        want = tc.decode(tc.encode(xs[j])) + xs[j] @ tc.W_skip.T
        torch.testing.assert_close(tset.reconstruct(j, xs[j]), want)
        torch.testing.assert_close(tset.reconstruct_all(xs)[j], want)


def test_random_sets_are_seeded_and_sparse() -> None:
    a = random_transcoders(2, 32, 64, "transcoder", "relu", seed=5)
    b = random_transcoders(2, 32, 64, "transcoder", "relu", seed=5)
    c = random_transcoders(2, 32, 64, "transcoder", "relu", seed=6)
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.transcoder(0).W_enc, c.transcoder(0).W_enc)
    x = torch.randn(512, 32, generator=torch.Generator().manual_seed(7))
    relu_frac = (a.encode(0, x) > 0).float().mean().item()
    assert 0.3 < relu_frac < 0.6
    jump = random_transcoders(2, 32, 64, "transcoder", "jumprelu", seed=5)
    pre, acts = jump.pre_activations(0, x), jump.encode(0, x)
    jump_frac = (acts != 0).float().mean().item()
    assert 0.1 < jump_frac < relu_frac
    below = (pre > 0) & (pre <= jump.transcoder(0).threshold)
    assert below.float().mean().item() > 0.05  # positive but under threshold: off
    assert (acts[below] == 0).all()
    topk = random_transcoders(2, 32, 64, "cross_layer_transcoder", "topk", seed=5)
    assert topk.k == 8
    out = topk.reconstruct_all(x.expand(2, -1, -1))
    assert 0.2 < out.std().item() < 3.0


def test_hooks_and_to() -> None:
    tset = random_transcoders(L, D, F, "cross_layer_transcoder", "jumprelu", skip=True, seed=8)
    assert (tset.feature_input_hook, tset.feature_output_hook) == ("hook_mlp_in", "hook_mlp_out")
    assert (tset.input_hook(2), tset.output_hook(2)) == ("blocks.2.hook_mlp_in", "blocks.2.hook_mlp_out")
    xs = torch.randn(L, 4, D)
    before = tset.reconstruct_all(xs)
    assert tset.to("cpu", torch.float64) is tset
    assert tset.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in tset.parameters())
    torch.testing.assert_close(tset.reconstruct_all(xs.double()).float(), before, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- files

VARIANTS = [(kind, act, skip) for kind in KINDS for act in ACTIVATIONS for skip in (False, True)]


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def _expected_layout(kind: str, activation: str, skip: bool) -> dict[str, set[str]]:
    files: dict[str, set[str]] = {}
    for i in range(L):
        if kind == "transcoder":
            keys = {"W_enc", "W_dec", "b_enc", "b_dec"}
            keys |= {"activation_function.threshold"} if activation == "jumprelu" else set()
            keys |= {"W_skip"} if skip else set()
            files[f"layer_{i}.safetensors"] = keys
        else:
            keys = {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"}
            keys |= {f"threshold_{i}"} if activation == "jumprelu" else set()
            keys |= {f"W_skip_{i}"} if skip else set()
            files[f"W_enc_{i}.safetensors"] = keys
            files[f"W_dec_{i}.safetensors"] = {f"W_dec_{i}"}
    return files


@pytest.mark.parametrize(("kind", "activation", "skip"), VARIANTS)
def test_round_trip_is_bit_exact(tmp_path: Path, kind: str, activation: str, skip: bool) -> None:
    tset = random_transcoders(L, D, F, kind, activation, skip, seed=9)
    save(tset, tmp_path)
    layout = _expected_layout(kind, activation, skip)
    assert {p.name for p in tmp_path.iterdir()} == set(layout) | {"config.yaml"}
    for name, keys in layout.items():
        assert _keys(tmp_path / name) == keys, name
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["kind"] == kind
    assert config["model_kind"] == {"transcoder": "transcoder_set"}.get(kind, kind)
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("hook_mlp_in", "hook_mlp_out")
    assert config["activation"] == activation
    assert config.get("k") == (F // 8 if activation == "topk" else None)
    assert (config["n_layers"], config["d_model"], config["d_tc"], config["skip"]) == (L, D, F, skip)
    assert sorted(config["files"]) == sorted(layout)

    back = load(tmp_path)
    assert (back.kind, back.activation, back.k, back.has_skip) == (kind, activation, tset.k, skip)
    want, got = tset.state_dict(), back.state_dict()
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    xs = torch.randn(L, 4, D)
    assert torch.equal(back.reconstruct_all(xs), tset.reconstruct_all(xs))


def test_round_trip_keeps_bf16_and_hooks(tmp_path: Path) -> None:
    tset = random_transcoders(
        L,
        D,
        F,
        "transcoder",
        "jumprelu",
        True,
        seed=10,
        dtype=torch.bfloat16,
        feature_input_hook="hook_resid_mid",
    )
    back = load(save(tset, tmp_path))
    assert back.dtype == torch.bfloat16 and back.feature_input_hook == "hook_resid_mid"
    assert all(torch.equal(a, b) for a, b in zip(tset.parameters(), back.parameters(), strict=True))
    assert load(tmp_path, dtype=torch.float32).dtype == torch.float32


def _corrupt(path: Path, name: str, value: torch.Tensor | None) -> None:
    tensors = load_file(str(path))
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    save_file(tensors, str(path))


@pytest.mark.parametrize(
    ("kind", "file", "tensor", "value", "message"),
    [
        (
            "transcoder",
            "layer_1.safetensors",
            "W_dec",
            torch.zeros(F, D - 1),
            f"layer_1.safetensors: tensor 'W_dec' has shape [{F}, {D - 1}], expected [{F}, {D}]",
        ),
        (
            "transcoder",
            "layer_0.safetensors",
            "W_enc",
            torch.zeros(F, D + 1),
            f"layer_0.safetensors: tensor 'W_enc' has shape [{F}, {D + 1}], expected [{F}, {D}]",
        ),
        (
            "transcoder",
            "layer_2.safetensors",
            "activation_function.threshold",
            torch.zeros(F + 1),
            "layer_2.safetensors: tensor 'activation_function.threshold' has shape",
        ),
        ("transcoder", "layer_2.safetensors", "b_enc", None, "layer_2.safetensors: missing tensor 'b_enc'"),
        (
            "cross_layer_transcoder",
            "W_dec_1.safetensors",
            "W_dec_1",
            torch.zeros(F, L, D),
            f"W_dec_1.safetensors: tensor 'W_dec_1' has shape [{F}, {L}, {D}], expected [{F}, {L - 1}, {D}]",
        ),
        (
            "cross_layer_transcoder",
            "W_enc_2.safetensors",
            "W_skip_2",
            torch.zeros(D, 2),
            "W_enc_2.safetensors: tensor 'W_skip_2' has shape",
        ),
        (
            "cross_layer_transcoder",
            "W_enc_0.safetensors",
            "b_dec_0",
            None,
            "W_enc_0.safetensors: missing tensor 'b_dec_0'",
        ),
    ],
)
def test_bad_tensor_fails_with_one_line_naming_it(
    tmp_path: Path, kind: str, file: str, tensor: str, value: torch.Tensor | None, message: str
) -> None:
    save(random_transcoders(L, D, F, kind, "jumprelu", True, seed=11), tmp_path)
    _corrupt(tmp_path / file, tensor, value)
    with pytest.raises(ValueError) as info:
        load(tmp_path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_directories_fail_with_one_line(tmp_path: Path) -> None:
    def fails(directory: Path, message: str) -> None:
        with pytest.raises(ValueError) as info:
            load(directory)
        assert message in str(info.value) and "\n" not in str(info.value)

    fails(tmp_path / "nowhere", "not a directory")
    fails(tmp_path, "config.yaml: missing file")
    save(random_transcoders(L, D, F, "transcoder", "topk", seed=12), tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())

    def with_config(**changes) -> None:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({**config, **changes}))

    with_config(kind="sparse_autoencoder")
    fails(tmp_path, "kind: expected one of transcoder, cross_layer_transcoder, got 'sparse_autoencoder'")
    with_config(k=None)
    fails(tmp_path, "k: topk needs an integer k")
    with_config(activation="gelu")
    fails(tmp_path, "activation: unknown 'gelu'")
    with_config(n_layers=4)
    fails(tmp_path, "n_layers is 4 but files lists 3")
    with_config()
    (tmp_path / "layer_2.safetensors").unlink()
    fails(tmp_path, "layer_2.safetensors: missing file")
    (tmp_path / "layer_2.safetensors").write_bytes(b"not safetensors")
    fails(tmp_path, "layer_2.safetensors: not a readable safetensors file")
    (tmp_path / "config.yaml").write_text("kind: [unclosed")
    fails(tmp_path, "config.yaml: not valid YAML")


def test_reads_circuit_tracer_style_configs(tmp_path: Path) -> None:
    """circuit-tracer's configs name the kind ``model_kind``, list per-layer files under
    ``transcoders`` and say nothing about shapes; the activation follows the tensors."""
    per_layer = random_transcoders(L, D, F, "transcoder", "jumprelu", seed=13)
    a = tmp_path / "a"
    save(per_layer, a)
    (a / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "feature_input_hook": "hook_resid_mid",
                "feature_output_hook": "hook_mlp_out",
                "transcoders": [f"layer_{i}.safetensors" for i in range(L)],
            }
        )
    )
    back = load(a)
    assert (back.kind, back.activation, back.feature_input_hook) == (
        "transcoder",
        "jumprelu",
        "hook_resid_mid",
    )
    assert torch.equal(back.transcoder(2).threshold, per_layer.transcoder(2).threshold)

    cross = random_transcoders(L, D, F, "cross_layer_transcoder", "relu", seed=14)
    b = tmp_path / "b"
    save(cross, b)
    (b / "config.yaml").write_text(yaml.safe_dump({"model_kind": "cross_layer_transcoder"}))
    enc = load_file(str(b / "W_enc_1.safetensors"))  # b_dec_1 moved next to its decoder
    save_file(
        {"W_dec_1": load_file(str(b / "W_dec_1.safetensors"))["W_dec_1"], "b_dec_1": enc.pop("b_dec_1")},
        str(b / "W_dec_1.safetensors"),
    )
    save_file(enc, str(b / "W_enc_1.safetensors"))
    back = load(b)
    assert back.kind == "cross_layer_transcoder" and back.n_layers == L
    assert all(torch.equal(p, q) for p, q in zip(cross.parameters(), back.parameters(), strict=True))


def test_set_rejects_mismatched_layers() -> None:
    a = random_transcoders(1, D, F, seed=15).transcoder(0)
    b = random_transcoders(1, D, F * 2, seed=15).transcoder(0)
    with pytest.raises(ValueError, match="layer 1"):
        TranscoderSet([a, b])
    assert isinstance(random_transcoders(2, D, F, "cross_layer_transcoder").clt, CrossLayerTranscoder)
