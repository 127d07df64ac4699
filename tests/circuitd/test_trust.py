"""The trust boundary: what a spec from a service client may name (model ids, transcoder sources),
what a model or transcoder config may say, models sized from their config before any weights
load, and the bounded caches of loaded models and transcoder sets."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from circuitd.access import check_model_id, check_transcoders, full_access, has_full_access
from circuitd.cli import main
from circuitd.discover import discover
from circuitd.errors import CircuitdError, ModelError
from circuitd.models import registry
from circuitd.models.ids import TL_NAMES_FILE, ZOO_DIR, parse_model_id
from circuitd.settings import get_settings
from circuitd.spec import JobSpec
from circuitd.transcoders import TranscoderError, load, random_transcoders, save, sources

HUGE = dict(  # about 6e10 parameters: refused by the default CIRCUITD_MAX_MODEL_PARAMS
    n_layers=80, d_model=8192, n_heads=64, d_head=128, d_mlp=28672, n_ctx=4096, d_vocab=32000,
    act_fn="gelu", normalization_type="LN",
)


@pytest.fixture
def env(settings_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return settings_env


def _set(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    get_settings.cache_clear()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection attempt or hub download fails the test."""
    import huggingface_hub

    def connect(*args: object) -> None:
        pytest.fail(f"network connection attempted: {args[1:]}")

    def download(*args: object, **kwargs: object) -> None:
        pytest.fail(f"hub download attempted: {args} {kwargs}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


@pytest.fixture
def synth_copy(tmp_path: Path) -> Path:
    """zoo:synth's files in a directory of their own (a local model)."""
    out = tmp_path / "models" / "synth"
    out.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(ZOO_DIR / "synth" / name, out / name)
    return out


def _local(tmp_path: Path, cfg: Mapping[str, object], name: str = "m") -> Path:
    """A local model directory whose model.safetensors is not a safetensors file at all."""
    out = tmp_path / name
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").write_bytes(b"not weights")
    return out


def _refusal(spec: Mapping[str, object]) -> tuple[str, str]:
    """(field, message) of the first error of an invalid spec."""
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(spec)
    err = info.value.errors()[0]
    return ".".join(map(str, err["loc"])), str(err["msg"])


# ----------------------------------------------------------------------------- model ids


@pytest.mark.parametrize("model_id", ["zoo:../..", "zoo:/etc", "zoo:synth/../synth", "zoo:Synth", "zoo:"])
def test_zoo_names_are_one_component_even_with_full_access(model_id: str) -> None:
    with full_access(), pytest.raises(ModelError, match="a zoo name is lowercase letters"):
        parse_model_id(model_id)


@pytest.mark.parametrize("model_id", ["random:tiny@-1", "random:tiny@4294967296", "random:tiny@1_0",
                                      "random:tiny@ 1", "random:tiny@"])
def test_random_seeds_are_32_bit_integers(model_id: str) -> None:
    with pytest.raises(ModelError, match="must be an integer from 0 to 4294967295"):
        parse_model_id(model_id)
    assert parse_model_id("random:tiny@4294967295").seed == 4294967295


def test_service_rules_are_the_default() -> None:
    assert not has_full_access()
    with full_access():
        assert has_full_access()
    assert not has_full_access()


def test_local_models_only_inside_model_roots(
    env: pytest.MonkeyPatch, synth_copy: Path, tmp_path: Path, no_network: None
) -> None:
    spec = {"model": f"local:{synth_copy}", "task": "random"}
    field, msg = _refusal(spec)
    assert field == "model" and "local files are not allowed here (CIRCUITD_MODEL_ROOTS is empty)" in msg
    assert _refusal({"model": "local:/etc", "task": "random"})[0] == "model"

    _set(env, "CIRCUITD_MODEL_ROOTS", f"/nonexistent, {tmp_path / 'models'}")
    assert JobSpec.model_validate(spec).model == f"local:{synth_copy}"
    refused = "not inside a directory that CIRCUITD_MODEL_ROOTS allows"

    def _refusal_line(spec: dict[str, str]) -> tuple[str, str]:
        field, msg = _refusal(spec)
        return field, msg.removeprefix("Value error, ")

    assert _refusal_line({"model": "local:/etc", "task": "random"}) == ("model", f"local:/etc: {refused}")
    escape = f"local:{tmp_path / 'models'}/../elsewhere"
    assert _refusal_line({"model": escape, "task": "random"}) == ("model", f"{escape}: {refused}")

    outside = tmp_path / "outside"  # a symlink inside a root to a directory outside it
    shutil.copytree(synth_copy, outside)
    (tmp_path / "models" / "link").symlink_to(outside)
    field, msg = _refusal({"model": f"local:{tmp_path / 'models' / 'link'}", "task": "random"})
    assert field == "model" and msg.endswith(refused) and str(outside) not in msg  # no server path told

    for probe in ("/proc/self/cwd", "/proc/self/exe"):  # what the server's paths are is not told either
        probed = {"model": f"local:{probe}", "task": "random"}
        assert _refusal_line(probed) == ("model", f"local:{probe}: {refused}")
    long_name = f"local:{tmp_path / 'models'}/{'a' * 300}"  # the name cannot even be looked up
    field, msg = _refusal({"model": long_name, "task": "random"})
    assert field == "model" and msg.endswith("cannot be read (File name too long)")


def test_hub_model_names_from_the_allowlist(env: pytest.MonkeyPatch, no_network: None) -> None:
    assert JobSpec(model="gpt2-small", task="random").model == "gpt2-small"  # "*tl", the default
    field, msg = _refusal({"model": "evil-org/backdoored-model", "task": "random"})
    assert field == "model"
    assert msg == (
        "Value error, 'evil-org/backdoored-model' is not an allowed hub model "
        "(CIRCUITD_HUB_MODELS lists them; '*tl' allows TransformerLens's model names)"
    )
    assert _refusal({"model": "../../etc", "task": "random"})[0] == "model"
    assert _refusal({"model": "Qwen/Qwen-7B", "task": "random"})[0] == "model"  # needs remote code

    _set(env, "CIRCUITD_HUB_MODELS", "gpt2-small, evil-org/backdoored-model")
    JobSpec(model="GPT2-small", task="random")  # TransformerLens matches names case-blind
    JobSpec(model="evil-org/backdoored-model", task="random")
    assert _refusal({"model": "pythia-70m", "task": "random"})[0] == "model"
    with full_access():  # the machine's own user may name anything
        _set(env, "CIRCUITD_HUB_MODELS", "")
        check_model_id("pythia-70m")


def test_transcoder_sources_from_the_allowlist_and_roots(
    env: pytest.MonkeyPatch, tmp_path: Path, no_network: None
) -> None:
    tc = tmp_path / "tc"
    save(random_transcoders(4, 256, 8), tc)
    base = {"model": "random:small", "method": "attribution-graph", "prompt": [1, 2, 3]}
    for source, needle in [
        ("org/name", "hub repo 'org/name' is not an allowed transcoder source (CIRCUITD_HUB_TRANSCODERS"),
        (str(tc), f"directory '{tc}': local files are not allowed here (CIRCUITD_MODEL_ROOTS is empty)"),
        ("../x", "local files are not allowed here"),
        ("~/x", "local files are not allowed here"),
    ]:
        field, msg = _refusal({**base, "transcoders": source})
        assert field == "params.transcoders" and needle in msg, msg
    JobSpec.model_validate(base)  # None: the model's shipped set, always allowed

    _set(env, "CIRCUITD_HUB_TRANSCODERS", "org/name")
    _set(env, "CIRCUITD_MODEL_ROOTS", str(tmp_path))
    JobSpec.model_validate({**base, "transcoders": "org/name"})
    JobSpec.model_validate({**base, "transcoders": str(tc)})
    field, msg = _refusal({**base, "transcoders": "/etc"})
    assert field == "params.transcoders"
    assert msg.endswith("directory '/etc': not inside a directory that CIRCUITD_MODEL_ROOTS allows")
    with pytest.raises(CircuitdError, match="hub repo 'org/other' is not an allowed"):
        check_transcoders("org/other")
    with full_access():
        check_transcoders("org/other")
        check_transcoders("/etc")


def test_hub_snapshot_fetches_only_the_sets_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[dict[str, object]] = []

    def snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        save(random_transcoders(2, 64, 8), tmp_path / "snap")
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    model = registry.load_model("random:tiny@0")
    tset = sources.load_transcoders("org/name", model)
    assert tset.n_layers == 2
    assert calls == [{
        "repo_id": "org/name", "allow_patterns": ["config.yaml", "*.safetensors"], "ignore_patterns": ["*/*"],
    }]


# ----------------------------------------------------------------------------- config contents


@pytest.mark.parametrize("key,value", [("trust_remote_code", True), ("tokenizer_name", "evil/tok"),
                                       ("from_checkpoint", True), ("device", "cuda")])
def test_model_config_holds_architecture_keys_only(tmp_path: Path, key: str, value: object) -> None:
    folder = _local(tmp_path, {**json.loads((ZOO_DIR / "synth" / "config.json").read_text()), key: value})
    line = f"{folder / 'config.json'}: {key}: not an architecture field a model config may set"
    with full_access():  # the CLI too
        with pytest.raises(ModelError) as info:
            registry.model_config(f"local:{folder}")
        assert str(info.value) == line
        with pytest.raises(ModelError) as info:
            registry.load_model(f"local:{folder}")
        assert str(info.value) == line


def test_every_zoo_config_passes_the_allowlist() -> None:
    for cfg in ZOO_DIR.glob("*/config.json"):
        assert set(json.loads(cfg.read_text())) <= registry.CONFIG_KEYS, cfg


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/passwd", "sub/layer_0.safetensors", ".."])
def test_transcoder_config_names_files_of_its_own_set(tmp_path: Path, name: str) -> None:
    tc = tmp_path / "tc"
    save(random_transcoders(2, 16, 4), tc)
    config = yaml.safe_load((tc / "config.yaml").read_text())
    config["files"][1] = name
    (tc / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(TranscoderError) as info:
        load(tc)
    assert str(info.value) == (
        f"{tc / 'config.yaml'}: files: {name!r} is not a file name inside the set's directory"
    )


def test_a_hub_cache_snapshot_loads_through_its_blob_links(tmp_path: Path) -> None:
    """The hub's cache keeps files in ``blobs/`` and links them from ``snapshots/<rev>/``: those
    links stay inside the repository, so the set loads; a link out of the repository does not."""
    repo = tmp_path / "models--org--name"
    written = tmp_path / "written"
    save(random_transcoders(2, 16, 4), written)
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(written.iterdir())):
        blob = blobs / f"{i:040x}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    assert load(snapshot).n_layers == 2
    (snapshot / "layer_1.safetensors").unlink()
    (snapshot / "layer_1.safetensors").symlink_to(written / "layer_1.safetensors")
    with pytest.raises(TranscoderError, match="'layer_1.safetensors' is not a file name inside"):
        load(snapshot)


def test_transcoder_file_may_not_link_outside_its_set(tmp_path: Path) -> None:
    tc, other = tmp_path / "tc", tmp_path / "other"
    save(random_transcoders(2, 16, 4), tc)
    save(random_transcoders(2, 16, 4, seed=1), other)
    (tc / "layer_1.safetensors").unlink()
    (tc / "layer_1.safetensors").symlink_to(other / "layer_1.safetensors")
    with pytest.raises(TranscoderError, match="files: 'layer_1.safetensors' is not a file name inside"):
        load(tc)
    clt = tmp_path / "clt"
    save(random_transcoders(2, 16, 4, kind="cross_layer_transcoder"), clt)
    (clt / "W_dec_1.safetensors").unlink()
    (clt / "W_dec_1.safetensors").symlink_to(other / "layer_1.safetensors")
    with pytest.raises(TranscoderError, match="'W_dec_1.safetensors' is not a file name inside"):
        load(clt)


# ----------------------------------------------------------------------------- shape before weights


@pytest.fixture
def weights_never_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """safetensors reads, recorded (a test asserts there were none)."""
    import safetensors.torch

    reads: list[str] = []
    real = safetensors.torch.load_file

    def load_file(path: str, device: str | int = "cpu") -> object:
        reads.append(path)
        return real(path, device)

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    return reads


def test_huge_local_model_refused_from_its_config(
    env: pytest.MonkeyPatch, tmp_path: Path, weights_never_read: list[str]
) -> None:
    registry.clear_cache()
    folder = _local(tmp_path, HUGE)
    with full_access(), pytest.raises(ModelError) as info:
        registry.load_model(f"local:{folder}")
    assert str(info.value) == (
        f"model: local:{folder} has 5.96e+10 parameters, over CIRCUITD_MAX_MODEL_PARAMS=3000000000"
    )
    _set(env, "CIRCUITD_MAX_MODEL_BYTES", str(5 * 2**20))
    with pytest.raises(ModelError) as info:
        registry.load_model("zoo:synth", dtype="float64")  # fine by parameters, not by memory here
    assert str(info.value) == (
        "model: zoo:synth needs about 8.9 MiB at float64 (weights 6.7 MiB, activations 2.2 MiB), "
        f"over CIRCUITD_MAX_MODEL_BYTES={5 * 2**20}"
    )
    assert weights_never_read == [] and registry.cached_models() == []


@pytest.mark.slow
def test_parameter_count_matches_transformer_lens() -> None:
    from circuitd.models.adapter import ModelShape

    for model_id in ("random:gpt2-small", "random:tiny-attn-only", "zoo:synth"):
        model = registry.load_model(model_id)
        n = sum(p.numel() for p in model.hooked_transformer.parameters())
        assert registry.model_shape(model_id).n_params == model.shape.n_params == n
    with pytest.raises(ModelError, match="model config: d_model: expected a positive integer, got '1e30'"):
        ModelShape.from_config({**HUGE, "d_model": "1e30"})


def test_hub_model_refused_from_its_config_without_downloading(no_network: None) -> None:
    with pytest.raises(ModelError) as info:
        registry.load_model("llama-7b")  # TransformerLens knows llama's config without the hub
    assert str(info.value) == (
        "model: llama-7b has 6.74e+09 parameters, over CIRCUITD_MAX_MODEL_PARAMS=3000000000"
    )
    with full_access(), pytest.raises(ModelError) as info:
        registry.load_model("Qwen/Qwen-7B")
    assert str(info.value) == (
        "model 'Qwen/Qwen-7B' needs code from the hub to load, which circuitd never runs"
    )


def test_a_models_config_is_read_once_for_sizing_and_loading(
    monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """Every job sizes its model from the config before loading it: a hub config (a network round
    trip) is fetched once per model, not once per job and again for the load."""
    from circuitd.models import loading

    calls: list[str] = []
    real = loading.pretrained_config

    def counted(name: str) -> dict[str, object]:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(loading, "pretrained_config", counted)
    registry.clear_cache()
    for _ in range(3):
        assert registry.model_shape("llama-7b").n_layers == 32
        with pytest.raises(ModelError, match="6.74e"):
            registry.load_model("llama-7b")
    assert calls == ["llama-7b"]
    config = registry.model_config("llama-7b")
    config["n_layers"] = 1  # callers get their own copy
    assert registry.model_config("llama-7b")["n_layers"] == 32


def test_edge_cap_checked_before_the_model_loads(
    env: pytest.MonkeyPatch, tmp_path: Path, weights_never_read: list[str]
) -> None:
    small = {"n_layers": 4, "d_model": 512, "d_head": 64, "n_heads": 8, "d_mlp": 64}
    folder = _local(tmp_path, {**HUGE, **small})
    _set(env, "CIRCUITD_MAX_EDGES", "1000")
    with full_access():
        spec = JobSpec(model=f"local:{folder}", task="random", method="eap", n_prompts=2)
        with pytest.raises(CircuitdError) as info:
            discover(spec)
    assert str(info.value) == (
        f"model: local:{folder} has 1519 edges (split_qkv=True), over CIRCUITD_MAX_EDGES=1000"
    )
    assert weights_never_read == []


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_has_full_access_to_local_models(synth_copy: Path, tmp_path: Path) -> None:
    assert get_settings().model_roots == ""
    out = tmp_path / "c.json"
    code = main(["discover", "--model", f"local:{synth_copy}", "--task", "ioi", "--method", "eap",
                 "--top-n", "10", "--n-prompts", "4", "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["graph"]["model"] == f"local:{synth_copy}"
    assert not has_full_access()  # only while the command runs


def test_cli_serving_commands_run_under_service_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from circuitd.cli import analysis, service

    seen: dict[str, bool] = {}

    def record(name: str) -> Callable[[object], int]:
        def run(args: object) -> int:
            seen[name] = has_full_access()
            return 0

        return run

    for module, name in ((service, "cmd_api"), (service, "cmd_worker"), (analysis, "cmd_edges")):
        monkeypatch.setattr(module, name, record(name))
    assert main(["api"]) == main(["worker"]) == main(["edges", "--model", "random:tiny"]) == 0
    assert seen == {"cmd_api": False, "cmd_worker": False, "cmd_edges": True}


# ----------------------------------------------------------------------------- caches


def test_model_cache_keeps_the_most_recently_used(env: pytest.MonkeyPatch) -> None:
    registry.clear_cache()
    _set(env, "CIRCUITD_MODEL_CACHE_SIZE", "2")
    first = registry.load_model("random:tiny@0")
    registry.load_model("random:tiny@1")
    assert registry.load_model("random:tiny@0") is first  # a hit, now the most recent
    registry.load_model("random:tiny@2")  # evicts @1, the least recently used
    assert [k[0] for k in registry.cached_models()] == ["random:tiny@0", "random:tiny@2"]
    _set(env, "CIRCUITD_MODEL_CACHE_SIZE", "0")
    assert registry.load_model("random:tiny@3") is not registry.load_model("random:tiny@3")
    assert registry.cached_models() == []
    registry.clear_cache()


@pytest.mark.gpu
def test_evicting_a_cuda_model_returns_its_memory(env: pytest.MonkeyPatch) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    registry.clear_cache()
    _set(env, "CIRCUITD_MODEL_CACHE_SIZE", "1")
    registry.load_model("random:small@0", device="cuda")  # no reference kept here: the cache's only
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    registry.load_model("random:tiny@0", device="cuda")  # evicts random:small first
    assert [k[0] for k in registry.cached_models()] == ["random:tiny@0"]
    assert torch.cuda.memory_allocated() < allocated and torch.cuda.memory_reserved() < reserved
    registry.clear_cache()


def test_transcoder_cache_keeps_the_most_recently_used(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sources.clear_cache()
    _set(env, "CIRCUITD_TRANSCODER_CACHE_SIZE", "1")
    model = registry.load_model("random:tiny@0")
    dirs = [save(random_transcoders(2, 64, 8, seed=i), tmp_path / f"tc{i}") for i in range(2)]
    a = sources.load_transcoders(str(dirs[0]), model)
    assert sources.load_transcoders(str(dirs[0]), model) is a
    sources.load_transcoders(str(dirs[1]), model)
    assert [k[0] for k in sources.cached_transcoders()] == [str(dirs[1].resolve())]
    assert sources.load_transcoders(str(dirs[0]), model) is not a  # evicted, loaded again
    sources.clear_cache()


# ----------------------------------------------------------------------------- TransformerLens's names


def test_tl_names_file_matches_transformer_lens() -> None:
    from circuitd.models.loading import tl_model_names

    names = [n for n in TL_NAMES_FILE.read_text().splitlines() if n and not n.startswith("#")]
    assert names == tl_model_names(), "TransformerLens changed: run scripts/tl_names.py"
    assert "gpt2-small" in names and not any(n.startswith("Qwen/Qwen-") for n in names)
