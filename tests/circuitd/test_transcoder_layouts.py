"""Transcoder sets in circuit-tracer's other layouts: its own cache layout (``layer_{i}`` files
and no file list), hub configs whose ``transcoders`` are ``hf://`` URIs resolved from the local
Hugging Face cache, and every spelling of the MLP input and output hooks."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from circuitd.access import full_access, service_access
from circuitd.attribution import attribute, record
from circuitd.models.registry import load_model
from circuitd.settings import get_settings
from circuitd.transcoders import TranscoderError, TranscoderSet, load, random_transcoders, save
from circuitd.transcoders.sources import default_transcoders

PROMPT = [1, 5, 9, 33, 2, 7]
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _own_user() -> Iterator[None]:
    """These tests load directories outside any model root: the machine's own user."""
    with full_access():
        yield


def _ct_config(directory: Path, **extra: Any) -> None:
    """A config.yaml as circuit-tracer writes it: no shapes, no file list unless given."""
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
        **extra,
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _cache_layout(source: Path, directory: Path, **extra: Any) -> Path:
    """The set in ``source`` (circuitd's layout) re-written in circuit-tracer's cache layout."""
    directory.mkdir(parents=True)
    config = yaml.safe_load((source / "config.yaml").read_text())
    for name in config["files"]:
        shutil.copyfile(source / name, directory / name)
    for key in ("activation", "k"):
        if key in config:
            extra.setdefault(key, config[key])
    _ct_config(directory, **extra)
    return directory


def _same(a: TranscoderSet, b: TranscoderSet) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a.kind, a.activation, a.k, a.has_skip) == (b.kind, b.activation, b.k, b.has_skip)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- cache layout


def test_cache_layout_without_file_list_equals_circuitd_writer(tmp_path: Path) -> None:
    tset = random_transcoders(3, 16, 24, "transcoder", "jumprelu", skip=True, seed=5)
    ours = save(tset, tmp_path / "ours")
    theirs = _cache_layout(ours, tmp_path / "theirs")
    for i in range(3):  # the bare key some circuit-tracer writers use for the threshold
        path = theirs / f"layer_{i}.safetensors"
        tensors = load_file(str(path))
        tensors["threshold"] = tensors.pop("activation_function.threshold")
        save_file(tensors, str(path))
    back = load(theirs)
    _same(back, load(ours))
    _same(back, tset)
    assert back.feature_input_hook == "hook_resid_mid" and back.input_hook(1) == "blocks.1.hook_mlp_in"


def test_cache_layout_needs_contiguous_layer_files(tmp_path: Path) -> None:
    ours = save(random_transcoders(3, 8, 8, seed=1), tmp_path / "ours")
    theirs = _cache_layout(ours, tmp_path / "theirs")
    (theirs / "layer_1.safetensors").unlink()
    with pytest.raises(TranscoderError) as exc:
        load(theirs)
    assert "config.yaml: files: no file list and layer_1.safetensors is missing" in _one_line(exc)
    for name in ("layer_0.safetensors", "layer_2.safetensors"):
        (theirs / name).unlink()
    with pytest.raises(TranscoderError) as exc:
        load(theirs)
    assert "config.yaml: files: no file list and no layer_0.safetensors" in _one_line(exc)


def test_cache_layout_n_layers_must_agree(tmp_path: Path) -> None:
    ours = save(random_transcoders(2, 8, 8, seed=1), tmp_path / "ours")
    theirs = _cache_layout(ours, tmp_path / "theirs", n_layers=3)
    with pytest.raises(TranscoderError) as exc:
        load(theirs)
    assert "n_layers is 3" in _one_line(exc)


# ----------------------------------------------------------------------------- hooks on zoo:synth


@pytest.fixture(scope="module")
def synth() -> tuple[Any, Path, torch.Tensor]:
    """zoo:synth, its shipped transcoders and the adjacency of the graph with them."""
    source = default_transcoders("zoo:synth")
    assert source is not None
    adapter = load_model("zoo:synth")
    with full_access():
        tset = load(source).to(adapter.device, adapter.dtype)
    tokens = torch.tensor(PROMPT)
    return adapter, source, attribute(record(adapter, tset, tokens)).adjacency


@pytest.mark.parametrize(
    ("input_hook", "output_hook", "sites"),
    [
        ("hook_resid_mid", "hook_mlp_out", ("hook_mlp_in", "hook_mlp_out")),
        ("hook_mlp_in", "hook_mlp_out", ("hook_mlp_in", "hook_mlp_out")),
        # the MLP's own output is hook_mlp_out where no norm follows the MLP (zoo:synth)
        ("hook_mlp_in", "mlp.hook_out", ("hook_mlp_in", "mlp.hook_out")),
    ],
)
def test_each_spelling_of_the_same_tensors_gives_the_same_graph(
    synth: tuple[Any, Path, torch.Tensor],
    tmp_path: Path,
    input_hook: str,
    output_hook: str,
    sites: tuple[str, str],
) -> None:
    adapter, source, adjacency = synth
    theirs = _cache_layout(
        source, tmp_path / "theirs", feature_input_hook=input_hook, feature_output_hook=output_hook
    )
    tset = load(theirs)
    assert (tset.feature_input_hook, tset.feature_output_hook) == (input_hook, output_hook)
    assert (tset.input_site, tset.output_site) == sites
    got = attribute(record(adapter, tset.to(adapter.device, adapter.dtype), torch.tensor(PROMPT))).adjacency
    assert got.shape == adjacency.shape
    torch.testing.assert_close(got, adjacency, atol=1e-5, rtol=0.0)


def _ln2(adapter: Any, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ln2``'s output at ``x`` before and after its gain and shift, by TransformerLens's own
    (unfused) LayerNorm with its ``hook_normalized`` read."""
    from transformer_lens.components.layer_norm import LayerNorm

    ln2 = adapter.hooked_transformer.blocks[layer].ln2
    assert isinstance(ln2, LayerNorm)
    seen: list[torch.Tensor] = []
    handle = ln2.hook_normalized.register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        after = LayerNorm.forward(ln2, x)
    finally:
        handle.remove()
    return seen[0], after


@pytest.mark.parametrize("input_hook", ["ln2.hook_normalized", "mlp.hook_in"])
def test_post_norm_inputs_read_ln2s_output(
    synth: tuple[Any, Path, torch.Tensor], tmp_path: Path, input_hook: str
) -> None:
    """A set reading after ``ln2`` is loaded as written and fed ``ln2``'s output: its recorded
    activations are ``encode`` of TransformerLens's tensor at that hook, not of the residual
    stream. On this LayerNorm model both hooks read ``ln2``'s output after its gain and shift:
    ``mlp.hook_in`` by definition, ``ln2.hook_normalized`` where circuit-tracer's TransformerLens
    2.x fires it (3.x fires it before the gain: ``normalized`` here, which must differ)."""
    adapter, source, _ = synth
    tset = load(_cache_layout(source, tmp_path / "theirs", feature_input_hook=input_hook))
    assert tset.input_site == input_hook
    tset = tset.to(adapter.device, adapter.dtype)
    ctx = record(adapter, tset, torch.tensor(PROMPT))
    for layer in range(ctx.n_layers):
        normalized, after = _ln2(adapter, layer, ctx.mlp_resid[layer])
        expected = after
        torch.testing.assert_close(ctx.mlp_in[layer], expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ctx.mlp_in[layer], normalized, atol=1e-3)  # the gain is applied
        torch.testing.assert_close(ctx.activations[layer], tset.encode(layer, expected), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(ctx.mlp_in[layer], ctx.mlp_resid[layer], atol=1e-2)
    torch.testing.assert_close(ctx.forward("frozen").logits, ctx.logits, atol=1e-4, rtol=0.0)


def test_replacement_hooks_refuse_post_norm_inputs() -> None:
    from circuitd.transcoders.train import replacement_hooks

    adapter = load_model("random:tiny@0")
    tset = random_transcoders(2, adapter.shape.d_model, 8, feature_input_hook="mlp.hook_in")
    with pytest.raises(TranscoderError) as exc:
        replacement_hooks(adapter, tset)
    assert "the set reads mlp.hook_in and writes hook_mlp_out" in _one_line(exc)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("feature_input_hook", "hook_resid_pre", "is not an MLP input"),
        ("feature_output_hook", "hook_resid_post", "is not an MLP output"),
        ("feature_input_hook", 3, "expected a hook name"),
    ],
)
def test_unusable_hooks_are_one_line(tmp_path: Path, field: str, value: Any, says: str) -> None:
    ours = save(random_transcoders(2, 8, 8, seed=1), tmp_path / "ours")
    theirs = _cache_layout(ours, tmp_path / "theirs", **{field: value})
    with pytest.raises(TranscoderError) as exc:
        load(theirs)
    line = _one_line(exc)
    assert f"config.yaml: {field}: " in line and says in line


# ----------------------------------------------------------------------------- hf:// entries


def _fake_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay out ``repo_id`` in a hub cache as huggingface_hub does (blobs, snapshots, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    for i, (name, src) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        link = repo / "snapshots" / REV / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / blob.name)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, TranscoderSet]:
    """A set laid out under ``org/tcs`` in a fake local hub cache, the hub cache in use."""
    tset = random_transcoders(3, 16, 24, "transcoder", "relu", skip=True, seed=9)
    ours = save(tset, tmp_path / "ours")
    cache = tmp_path / "hf" / "hub"
    _fake_hub_cache(
        cache, "org/tcs", {f"plt/layer_{i}.safetensors": ours / f"layer_{i}.safetensors" for i in range(3)}
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path, tset


def _hub_config(directory: Path, uris: list[str]) -> Path:
    directory.mkdir()
    _ct_config(directory, transcoders=uris)
    return directory


def test_hf_uris_resolve_from_the_local_cache(hub: tuple[Path, TranscoderSet]) -> None:
    root, tset = hub
    uris = [f"hf://org/tcs/plt/layer_{i}.safetensors" for i in range(2)]
    uris.append(f"hf://org/tcs/plt/layer_2.safetensors?revision={REV}")
    _same(load(_hub_config(root / "cfg", uris)), tset)


def test_hf_uri_not_cached_is_one_line(hub: tuple[Path, TranscoderSet]) -> None:
    root, _ = hub
    missing = "hf://org/tcs/plt/layer_7.safetensors"
    uris = [f"hf://org/tcs/plt/layer_{i}.safetensors" for i in range(2)] + [missing]
    with pytest.raises(TranscoderError) as exc:
        load(_hub_config(root / "cfg", uris))
    line = _one_line(exc)
    assert (
        "config.yaml: transcoders: " in line and f"{missing} is not in the local Hugging Face cache" in line
    )
    with pytest.raises(TranscoderError) as exc:
        load(_hub_config(root / "cfg2", ["hf://org/other/layer_0.safetensors"]))
    assert "is not in the local Hugging Face cache" in _one_line(exc)


def test_hf_uris_follow_the_service_rules(
    hub: tuple[Path, TranscoderSet], settings_env: pytest.MonkeyPatch
) -> None:
    root, tset = hub
    cfg = _hub_config(root / "cfg", [f"hf://org/tcs/plt/layer_{i}.safetensors" for i in range(3)])
    with service_access():
        with pytest.raises(TranscoderError) as exc:
            load(cfg)
        assert "hub repo 'org/tcs' is not an allowed transcoder source" in _one_line(exc)
        settings_env.setenv("CIRCUITD_HUB_TRANSCODERS", "org/tcs")
        get_settings.cache_clear()
        _same(load(cfg), tset)


def test_plain_names_stay_inside_the_directory(hub: tuple[Path, TranscoderSet]) -> None:
    root, _ = hub
    with pytest.raises(TranscoderError) as exc:
        load(_hub_config(root / "cfg", ["../ours/layer_0.safetensors"]))
    assert "is not a file name inside the set's directory" in _one_line(exc)
    with pytest.raises(TranscoderError) as exc:
        load(_hub_config(root / "cfg2", ["hf://org/tcs/../x/layer_0.safetensors"]))
    assert "is not an hf://org/repo/path URI" in _one_line(exc)
