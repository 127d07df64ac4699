"""Hugging Face checkpoint directories (``save_pretrained``) as ``local:`` models: TransformerLens
converts their config and weights; circuitd's logits match transformers' own, its size from the
config matches the loaded model, EAP, EAP-IG and ACDC agree with an edge patcher written here
on TransformerLens's hooks, sharded checkpoints load (their index naming only files inside the
directory), and hub names load offline from a populated cache."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from circuitd.access import full_access
from circuitd.discover import discover
from circuitd.edges import EdgeGraph
from circuitd.errors import CircuitdError, ModelError
from circuitd.models import registry
from circuitd.models.loading import hf_weight_files
from circuitd.spec import JobSpec

VOCAB = 101
_SIZES: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    vocab_size=VOCAB, max_position_embeddings=64,
)


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64))


def _neox() -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(**_SIZES))  # rotates a quarter of each head, as Pythia does


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_SIZES, num_key_value_heads=2))


def _qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_SIZES, num_key_value_heads=2))


def _gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**_SIZES, num_key_value_heads=2, head_dim=16))


def _mistral() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_SIZES, num_key_value_heads=2))


FAMILIES: dict[str, Callable[[], Any]] = {
    "gpt2": _gpt2, "gpt_neox": _neox, "llama": _llama, "qwen2": _qwen2,
    "gemma2": _gemma2, "mistral": _mistral,
}


@pytest.fixture(autouse=True)
def _own_user() -> Iterator[None]:
    """A checkpoint directory outside any model root: the machine's own user's jobs."""
    with full_access():
        yield
    registry.clear_cache()


def _save(family: str, path: Path) -> Any:
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family: str, tmp_path: Path) -> None:
    hf = _save(family, tmp_path)
    model = registry.load_model(f"local:{tmp_path}")
    assert model.config("original_architecture") == hf.config.architectures[0]
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = model.hooked_transformer(ids)  # the raw forward pass, no BOS
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    n_params = sum(p.numel() for p in model.hooked_transformer.parameters())
    shape = registry.model_shape(f"local:{tmp_path}")  # from config.json alone
    assert shape.n_params == n_params and shape.memory_bytes("float32")[0] == 4 * n_params


def test_the_directory_tokenizer_is_used(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from circuitd.tokenizer import HFTokenizer

    words = ["<bos>", "<unk>", "when", "mary", "and", "john"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")
    hf_tok.save_pretrained(tmp_path)
    _save("llama", tmp_path)
    model = registry.load_model(f"local:{tmp_path}")
    assert isinstance(model.tokenizer, HFTokenizer)
    assert model.tokenizer.encode("when mary and john") == [0, 2, 3, 4, 5]


def test_the_directory_name_does_not_pick_the_architecture(tmp_path: Path) -> None:
    path = tmp_path / "my-llama-gemma-2-finetune"  # TL picks some architectures by name
    _save("gpt2", path)
    assert registry.model_config(f"local:{path}")["original_architecture"] == "GPT2LMHeadModel"


def test_unknown_model_type_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xyz", "architectures": ["XyzModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError) as err:
        registry.model_config(f"local:{tmp_path}")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'config.json'}: model_type: 'xyz' is not supported (supported: gpt2,")
    assert "\n" not in msg


def test_remote_code_is_never_run(tmp_path: Path) -> None:
    cfg = {"model_type": "custom", "architectures": ["Custom"], "auto_map": {"AutoConfig": "x.Custom"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "x.py").write_text("raise SystemExit('ran remote code')\n")
    with pytest.raises(ModelError, match="model_type: 'custom' is not supported"):
        registry.load_model(f"local:{tmp_path}")


LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "rope_theta": 500000.0, "tie_word_embeddings": True,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}


def test_a_1b_config_is_sized_without_weights(
    tmp_path: Path, settings_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory with config.json alone: counted and sized, and each limit refuses it naming
    the number and the setting, before any weights are looked for."""
    from circuitd.cli import main
    from circuitd.settings import get_settings

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_1B))  # no weights at all
    model_id = f"local:{tmp_path}"
    assert main(["edges", "--model", model_id]) == 0
    out = capsys.readouterr().out
    shape = registry.model_shape(model_id)
    n_edges = EdgeGraph(shape).n_edges
    assert shape.n_key_value_heads == 8 and shape.d_mlp == 8192 and shape.d_vocab == 128256
    # Llama-3.2-1B has 1,235,814,400 parameters; TransformerLens holds the unembedding untied,
    # with a bias, and zero biases for q, k, v, o and the MLP (16 layers of 15,360)
    n_params = 1_235_814_400 + 2048 * 128256 + 128256 + 16 * 15_360
    assert shape.n_params == n_params
    assert f"parameters: {n_params} (CIRCUITD_MAX_MODEL_PARAMS=" in out
    assert "memory: about " in out and f"(weights {n_params * 4 / 2**30:.1f} GiB, activations" in out
    assert "(16 layers, 32 heads, d_model 2048)" in out and out.strip().endswith(f"edges: {n_edges}")

    spec = JobSpec.model_validate({"model": model_id, "task": "random", "n_prompts": 2, "method": "eap"})
    for setting, value, number in [
        ("CIRCUITD_MAX_EDGES", 1000, f"has {n_edges} edges ("),
        ("CIRCUITD_MAX_MODEL_PARAMS", 10**9, "has 1.5e+09 parameters,"),
        ("CIRCUITD_MAX_MODEL_BYTES", 2**30, "needs about "),
    ]:
        settings_env.setenv(setting, str(value))
        get_settings.cache_clear()
        with pytest.raises(CircuitdError) as err:
            discover(spec)
        msg = str(err.value)
        assert msg.startswith(f"model: {model_id} {number}") and msg.endswith(f", over {setting}={value}")
        assert setting != "CIRCUITD_MAX_MODEL_BYTES" or " at float32 (weights 5.6 GiB, activations " in msg
        settings_env.delenv(setting)
        get_settings.cache_clear()
    with pytest.raises(ModelError) as err:
        registry.load_model(model_id)  # within every limit: only now are the weights looked for
    assert str(err.value) == (
        f"{model_id}: no weights in {tmp_path} (looked for model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)"
    )


def _bin_shards(model: Any, folder: Path, shard_bytes: int = 100_000) -> None:
    """``model`` saved as transformers 4 writes ``save_pretrained(max_shard_size=...,
    safe_serialization=False)``: ``pytorch_model-0000i-of-0000n.bin`` and their index."""
    model.config.save_pretrained(folder)
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, tensor in model.state_dict().items():
        if shards[-1] and sum(t.numel() * t.element_size() for t in shards[-1].values()) > shard_bytes:
            shards.append({})
        shards[-1][name] = tensor.clone()
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, folder / file)
        weight_map.update(dict.fromkeys(shard, file))
        total += sum(t.numel() * t.element_size() for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
@pytest.mark.parametrize("fmt", ["model.safetensors", "pytorch_model.bin"])
def test_sharded_checkpoints_load(fmt: str, family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = FAMILIES[family]().eval()
    if fmt == "model.safetensors":
        hf.save_pretrained(tmp_path, max_shard_size="100KB")
    else:
        _bin_shards(hf, tmp_path)
    index = json.loads((tmp_path / f"{fmt}.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / fmt).exists()
    files, safetensors = hf_weight_files(tmp_path, "x")
    assert files == [tmp_path / s for s in shards] and safetensors == (fmt == "model.safetensors")
    model = registry.load_model(f"local:{tmp_path}")
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.hooked_transformer(ids), hf(ids).logits, atol=1e-4, rtol=0)


@contextmanager
def _forbidden(owner: Any, name: str) -> Iterator[None]:
    """``owner.name`` fails the test when called (nothing may be read)."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} was called")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(owner, name, fail)
        yield


@pytest.mark.parametrize(
    "entry,reason",
    [
        ("../outside.safetensors", "is not a relative file name inside"),
        ("ABSOLUTE", "is not a relative file name inside"),
        ("link.safetensors", "leads outside"),
        ("model-00009-of-00009.safetensors", "is not a file in"),
    ],
)
def test_an_index_reads_only_files_inside_the_directory(entry: str, reason: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "ckpt"
    torch.manual_seed(0)
    FAMILIES["llama"]().save_pretrained(folder, max_shard_size="100KB")
    index = folder / "model.safetensors.index.json"
    doc = json.loads(index.read_text())
    first = sorted(set(doc["weight_map"].values()))[0]
    outside = tmp_path / "outside.safetensors"  # a real shard, but not the directory's
    shutil.copyfile(folder / first, outside)
    (folder / "link.safetensors").symlink_to(outside)
    entry = str(outside) if entry == "ABSOLUTE" else entry
    doc["weight_map"] = {k: entry if v == first else v for k, v in doc["weight_map"].items()}
    index.write_text(json.dumps(doc))
    with pytest.raises(ModelError) as err, _forbidden(AutoModelForCausalLM, "from_pretrained"):
        registry.load_model(f"local:{folder}")
    msg = str(err.value)
    assert msg.startswith(f"{index}: weight_map: '{entry}' {reason}") and "\n" not in msg


def test_a_single_weights_file_linked_from_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    _save("gpt2", folder)
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (folder / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelError) as err:
        registry.load_model(f"local:{folder}")
    assert str(err.value) == f"local:{folder}: 'model.safetensors' leads outside {folder} (a symbolic link)"


REV = "0123456789abcdef0123456789abcdef01234567"
_OFFLINE_LOAD = """
import json, sys, torch
from circuitd.access import full_access
from circuitd.models import registry
with full_access():
    model = registry.load_model("gpt2")
    torch.save(model.hooked_transformer(torch.tensor(json.loads(sys.argv[1]))), sys.argv[2])
    shape = registry.model_shape("gpt2")
    print(json.dumps({"tokens": model.tokenizer.encode("w1 w2"), "n_params": shape.n_params}))
"""


def _hub_gpt2(src: Path) -> Any:
    """A tiny model with the files of the hub's ``gpt2`` repository: its config (which keeps
    ``n_ctx``, as the hub's does), weights and a tokenizer of words ``w0 .. w99``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    hf = _save("gpt2", src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "n_ctx": cfg["n_positions"]}))
    eos = "<|endoftext|>"
    words = [eos] + [f"w{i}" for i in range(VOCAB - 1)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=eos))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos)
    fast.save_pretrained(src)
    return hf


def _hub_cache(cache: Path, repo_id: str, src: Path) -> Path:
    """``src``'s files laid out as huggingface_hub caches ``repo_id`` (blobs, snapshot links,
    refs/main); returns the snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REV)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / REV
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(src.iterdir())):
        shutil.copyfile(file, repo / "blobs" / f"{i:040x}")
        (snapshot / file.name).symlink_to(Path("../../blobs") / f"{i:040x}")
    return snapshot


@pytest.mark.slow
def test_a_hub_name_loads_offline_from_the_cache(tmp_path: Path) -> None:
    """``gpt2`` by its hub name with HF_HUB_OFFLINE=1 and the repository in HF_HOME's cache
    (a fresh process: the hub client reads both when imported); the snapshot directory loads
    as ``local:`` too, its links into the cache's blobs allowed."""
    hf = _hub_gpt2(tmp_path / "src")
    snapshot = _hub_cache(tmp_path / "hf" / "hub", "gpt2", tmp_path / "src")
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = tmp_path / "logits.pt"
    run = subprocess.run(
        [sys.executable, "-c", _OFFLINE_LOAD, json.dumps(ids.tolist()), str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    untied_unembed = 64 * VOCAB + VOCAB  # TransformerLens's W_U and b_U; transformers ties W_U to W_E
    n_params = sum(p.numel() for p in hf.parameters()) + untied_unembed
    assert report == {"tokens": [0, 2, 3], "n_params": n_params}
    with torch.no_grad():
        expected = hf(ids).logits.log_softmax(-1)  # TransformerLens centres the unembedding of hub models
        torch.testing.assert_close(torch.load(out).log_softmax(-1), expected, atol=1e-4, rtol=0)
        local = registry.load_model(f"local:{snapshot}")
        torch.testing.assert_close(local.hooked_transformer(ids), hf(ids).logits, atol=1e-4, rtol=0)


# ------------------------------------------------------------------ edge methods on every family
# An independent edge patcher, written on TransformerLens's own hooks and the edge names alone:
# a destination's input gains alpha * (ablated - reference) of each source an edge brings it,
# where a source is the embeddings ("input"), one head's z @ W_O ("a{l}.h{h}") or an MLP's
# output ("m{l}"), and a destination a head's q/k/v input (per query head "a{l}.h{h}<x>", or per
# key/value head "a{l}.kv{g}<x>"), an MLP's input ("m{l}") or the final residual ("logits").

_DEST = re.compile(r"a(\d+)\.(h|kv)(\d+)<([qkv])>")


def _dest_hook(name: str, n_layers: int) -> tuple[str, int | None]:
    """(hook point, index on its head axis) of a destination name."""
    if name == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post", None
    if name.startswith("m"):
        return f"blocks.{int(name[1:])}.hook_mlp_in", None
    m = _DEST.fullmatch(name)
    assert m, f"unexpected destination {name}"
    return f"blocks.{m[1]}.hook_{m[4]}_input", int(m[3])


def _patched_logits(
    tl: Any,
    names: list[str],
    tokens: torch.Tensor,
    ablated: dict[str, torch.Tensor] | None = None,
    alpha: torch.Tensor | None = None,
    reference: dict[str, torch.Tensor] | None = None,
    embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and source outputs of one pass. ``alpha [n_edges]`` scales each edge's
    ``ablated - reference`` (``reference``: the sources of this very pass when None) added at
    its destination; ``embed`` replaces the input embeddings (interpolated inputs)."""
    cfg = tl.cfg
    grouped = any(".kv" in n for n in names)
    seen: dict[str, torch.Tensor] = {}
    by_hook: dict[str, list[tuple[int | None, str, int]]] = {}
    if alpha is not None:
        for e, name in enumerate(names):
            src, dst = name.split("->")
            hook, idx = _dest_hook(dst, cfg.n_layers)
            by_hook.setdefault(hook, []).append((idx, src, e))

    def input_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["input"] = act if embed is None else embed
        return seen["input"]

    def z_hook(z: torch.Tensor, hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        for h in range(cfg.n_heads):
            seen[f"a{layer}.h{h}"] = z[:, :, h] @ tl.blocks[layer].attn.W_O[h]

    def mlp_hook(act: torch.Tensor, hook: Any) -> None:
        seen[f"m{hook.name.split('.')[1]}"] = act

    def dest(act: torch.Tensor, hook: Any) -> torch.Tensor:
        assert ablated is not None and alpha is not None
        delta = torch.zeros_like(act)
        for idx, src, e in by_hook[hook.name]:
            assert src in seen, f"{src} is read before it is computed"
            diff = alpha[e] * (ablated[src] - (reference or seen)[src])
            if idx is None:
                delta = delta + diff
            else:
                delta[:, :, idx] = delta[:, :, idx] + diff
        return act + delta

    hooks: list[tuple[str, Callable[..., Any]]] = [("blocks.0.hook_resid_pre", input_hook)]
    for layer in range(cfg.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_z", z_hook), (f"blocks.{layer}.hook_mlp_out", mlp_hook)]
    hooks += [(hook, dest) for hook in by_hook]
    tl.set_use_split_qkv_input(True)
    tl.set_use_hook_mlp_in(True)
    before = cfg.ungroup_grouped_query_attention
    if cfg.n_key_value_heads:  # k/v inputs per key/value head exactly when the names are
        tl.set_ungroup_grouped_query_attention(not grouped)
    try:
        logits = tl.run_with_hooks(tokens, fwd_hooks=hooks)
    finally:
        tl.set_ungroup_grouped_query_attention(before)
    return logits, seen


N_PROMPTS, N_POS = 4, 7
_GEN = torch.Generator().manual_seed(5)
CLEAN = torch.randint(0, VOCAB, (N_PROMPTS, N_POS), generator=_GEN)
CORRUPTED = CLEAN.clone()
CORRUPTED[:, 2:5] = torch.randint(0, VOCAB, (N_PROMPTS, 3), generator=_GEN)  # a few positions differ
CORRECT, INCORRECT = [7, 19, 23, 42], [61, 3, 88, 15]
TASK = {
    "clean": CLEAN.tolist(), "corrupted": CORRUPTED.tolist(), "correct": CORRECT,
    "incorrect": INCORRECT, "metric": "logit_diff",
}


def _logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of correct minus incorrect logit at the last position."""
    last = logits[:, -1].double()
    rows = torch.arange(N_PROMPTS)
    return (last[rows, CORRECT] - last[rows, INCORRECT]).mean()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved checkpoint per family, shared by the method tests."""
    out = {}
    for family in FAMILIES:
        out[family] = tmp_path_factory.mktemp("hf") / family
        _save(family, out[family])
    return out


def _names(folder: Path) -> list[str]:
    """The edge names of a checkpoint's graph, in the order of a method's scores."""
    return EdgeGraph(registry.model_shape(f"local:{folder}")).edge_names


def _discover(folder: Path, method: str, **params: Any) -> Any:
    spec = {"model": f"local:{folder}", "task": TASK, "method": method, "curve": False,
            "dtype": "float64", **params}
    return discover(JobSpec.model_validate(spec))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_eap_and_eap_ig_scores_are_autograd_gradients(family: str, checkpoints: dict[str, Path]) -> None:
    """Every edge's EAP score is d metric / d alpha of the patcher above; EAP-IG's is the mean
    over inputs interpolated from the corrupted to the clean embeddings (t = 1/3, 2/3, 1) of
    the gradient, times the ablated - clean difference of the clean run; one step is EAP."""
    folder = checkpoints[family]
    eap = _discover(folder, "eap", top_n=20)
    ig1 = _discover(folder, "eap-ig", top_n=20, ig_steps=1)
    ig3 = _discover(folder, "eap-ig", top_n=20, ig_steps=3)
    tl = registry.load_model(f"local:{folder}", dtype="float64").hooked_transformer
    names = _names(folder)
    _, ablated = _patched_logits(tl, names, CORRUPTED)
    _, clean = _patched_logits(tl, names, CLEAN)
    expected = []
    for steps in (1, 3):
        total = torch.zeros(len(names), dtype=torch.float64)
        for k in range(1, steps + 1):
            t = k / steps
            embed = ablated["input"] + t * (clean["input"] - ablated["input"])
            alpha = torch.zeros(len(names), dtype=torch.float64, requires_grad=True)
            logits, _ = _patched_logits(tl, names, CLEAN, ablated, alpha, clean, embed)
            _logit_diff(logits).backward()
            assert alpha.grad is not None
            total += alpha.grad
        expected.append(total / steps)
    assert 0 < eap.metrics["n_edges"] <= 20  # the top 20, less any left dangling
    scale = float(expected[0].abs().max())
    assert scale > 1e-3  # the task separates something
    atol = 1e-6 * scale  # scores are reported as float32
    torch.testing.assert_close(eap.scores.double(), expected[0], atol=atol, rtol=1e-5)
    torch.testing.assert_close(ig1.scores, eap.scores, atol=0, rtol=0)
    torch.testing.assert_close(ig3.scores.double(), expected[1], atol=atol, rtol=1e-5)
    assert (ig3.scores - eap.scores).abs().max() > 1e-3 * scale  # more steps do change the scores


@pytest.mark.parametrize("family", list(FAMILIES))
def test_acdc_circuit_metric_matches_hook_patching(family: str, checkpoints: dict[str, Path]) -> None:
    """ACDC's kept circuit, patched by the hooks above (every pruned edge carries its corrupted
    value), has the metric circuitd reports; the full model's metric is transformers' own."""
    from transformers import AutoModelForCausalLM

    folder = checkpoints[family]
    tl = registry.load_model(f"local:{folder}", dtype="float64").hooked_transformer
    result = _discover(folder, "acdc", tau=1e-5)  # keeps 16 to 42 of 82 to 110 edges here
    names = _names(folder)
    keep = result.keep
    assert 0 < int(keep.sum()) < len(names)  # ACDC pruned some edges and kept others
    _, ablated = _patched_logits(tl, names, CORRUPTED)
    m = result.metrics
    for mask, reported in ((keep, m["metric_circuit"]), (torch.zeros_like(keep), m["metric_empty"])):
        logits, _ = _patched_logits(tl, names, CLEAN, ablated, (~mask).double())
        assert float(_logit_diff(logits)) == pytest.approx(reported, rel=1e-5, abs=1e-6)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    with torch.no_grad():
        assert float(_logit_diff(hf(CLEAN).logits)) == pytest.approx(m["metric_full"], rel=1e-5, abs=1e-6)
