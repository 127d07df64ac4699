"""Hugging Face checkpoint directories (``save_pretrained``) as ``local:`` models: TransformerLens
converts their config and weights; circuitd's logits match transformers' own."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from circuitd.access import full_access
from circuitd.discover import discover
from circuitd.errors import ModelError
from circuitd.methods.edge_run import check_edge_cap
from circuitd.models import registry
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
        got = model._tl(ids)  # pyright: ignore[reportPrivateUsage] -- the raw forward pass, no BOS
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_discover_on_a_checkpoint(family: str, method: str, tmp_path: Path) -> None:
    _save(family, tmp_path)
    spec = JobSpec.model_validate(
        {"model": f"local:{tmp_path}", "task": "random", "n_prompts": 4, "method": method, "top_n": 5}
    )
    result = discover(spec)
    assert result.scores is not None and torch.isfinite(result.scores).all()
    assert result.scores.numel() == result.metrics["n_edges_total"]
    assert 0 < result.metrics["n_edges"] <= 5  # the top 5, less any left dangling


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from circuitd.cli import main
    from circuitd.models import loading

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_1B))
    (tmp_path / "model.safetensors").write_bytes(b"not weights: opening this fails")

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were read")

    monkeypatch.setattr(loading, "load_hf_dir", no_weights)
    monkeypatch.setattr("safetensors.torch.load_file", no_weights)
    model_id = f"local:{tmp_path}"
    assert main(["edges", "--model", model_id]) == 0
    out = capsys.readouterr().out
    assert "(16 layers, 32 heads, d_model 2048)" in out and "edges: 386713" in out
    shape = registry.model_shape(model_id)
    assert shape.n_key_value_heads == 8 and shape.d_mlp == 8192 and shape.d_vocab == 128256
    registry.check_model_size(model_id, "float32", shape)
    spec = JobSpec.model_validate({"model": model_id, "task": "random", "method": "eap-ig"})
    check_edge_cap(spec.model, shape, split_qkv=True)  # default CIRCUITD_MAX_EDGES admits it
