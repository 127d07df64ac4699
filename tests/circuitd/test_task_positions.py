"""Position names for position-aware edges: the task field's bounds, the names the generators
give on zoo:synth (each slot's name checked against the tokens at its position), and the names
derived from shared tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from circuitd.errors import TaskError
from circuitd.models.adapter import ModelAdapter
from circuitd.models.registry import load_model
from circuitd.settings import get_settings
from circuitd.spec import JobSpec, spec_error_line
from circuitd.tasks import Task, TaskData, load_task_data, resolve_task, task_data_from_json
from circuitd.tasks.base import MAX_POSITION_NAME_CHARS
from circuitd.tasks.positions import common_names, shared_position_names, template_position_names
from circuitd.tokenizer import HFTokenizer, Tokenizer, WordTokenizer, build_word_tokenizer

TASK = {
    "clean": ["the cat sat on the", "the dog sat on the"],
    "corrupted": ["the dog sat on the", "the cat sat on the"],
    "correct": ["mat", "mat"],
    "incorrect": ["dog", "cat"],
}
NAMES = ["BOS", "the", "ANIMAL", "sat", "on", "END"]
IOI_TEMPLATE_0 = [
    "BOS", "When", "IO", "and", "S1", "went", "to", "the", "PLACE", ",", "S2", "gave", "a", "OBJECT", "END",
]


@pytest.fixture(autouse=True)
def default_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shipped limits, whatever the environment says."""
    monkeypatch.delenv("CIRCUITD_MAX_TOKENS", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def tok(tmp_path) -> WordTokenizer:
    build_word_tokenizer(["the", "cat", "dog", "sat", "ran", "on", "mat", "."], tmp_path / "t.json")
    return WordTokenizer(tmp_path / "t.json")


@pytest.fixture(scope="module")
def synth() -> ModelAdapter:
    return load_model("zoo:synth")


def _generate(model: ModelAdapter, name: str, n: int = 24, **params: Any) -> tuple[TaskData, Task]:
    data = load_task_data(name, model.tokenizer, model.shape.d_vocab, n=n, seed=0, **params)
    return data, resolve_task(data, model.tokenizer, model.shape.d_vocab, model.shape.n_ctx)


def _tok(model: ModelAdapter) -> Tokenizer:
    assert model.tokenizer is not None
    return model.tokenizer


def _spec_line(task: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"model": "random:tiny", "task": task})
    return spec_error_line(info.value)


# The field: bounds, errors that name it, and what keeps it.


def test_names_reach_the_resolved_task_and_survive_head(tok: WordTokenizer) -> None:
    data = task_data_from_json({**TASK, "position_names": NAMES})
    assert data.head(1).position_names == NAMES
    task = resolve_task(data, tok, tok.vocab_size, 64)
    assert task.position_names == NAMES and task.head(1).position_names == NAMES
    assert resolve_task(task_data_from_json(TASK), tok, tok.vocab_size, 64).position_names is None


@pytest.mark.parametrize(
    "names,line",
    [
        (["BOS", "x" * 33], "task.position_names.1: 33 characters, a position name has 1 to 32"),
        ([""], "task.position_names.0: 0 characters, a position name has 1 to 32"),
        (["p"] * 513, "task.position_names: 513 entries exceed the limit of 512 (CIRCUITD_MAX_TOKENS)"),
        ("BOS", "task.position_names: Input should be a valid list"),
    ],
)
def test_the_field_is_bounded(names: Any, line: str) -> None:
    assert MAX_POSITION_NAME_CHARS == 32
    assert _spec_line({**TASK, "position_names": names}) == line
    with pytest.raises(TaskError) as err:
        task_data_from_json({**TASK, "position_names": names})
    assert str(err.value) == line


def test_the_names_limit_follows_max_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUITD_MAX_TOKENS", "6")
    get_settings.cache_clear()
    assert task_data_from_json({**TASK, "position_names": NAMES}).position_names == NAMES
    assert _spec_line({**TASK, "position_names": [*NAMES, "x"]}) == (
        "task.position_names: 7 entries exceed the limit of 6 (CIRCUITD_MAX_TOKENS)"
    )


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"position_names": NAMES[:5]}, "has 5 names but clean[0] has 6 tokens"),
        ({"clean": [TASK["clean"][0], [0, 2, 3, 5, 7]], "corrupted": [TASK["corrupted"][0], [0, 3, 3, 5, 7]],
          "position_names": NAMES}, "has 6 names but clean[1] has 5 tokens"),
        ({"prepend_bos": False, "position_names": NAMES}, "has 6 names but clean[0] has 5 tokens"),
    ],
)
def test_names_must_match_every_prompts_tokens(tok: WordTokenizer, change: dict, reason: str) -> None:
    data = task_data_from_json({**TASK, **change})
    with pytest.raises(TaskError) as err:
        resolve_task(data, tok, tok.vocab_size, 64)
    assert (err.value.field, err.value.reason) == ("position_names", reason)


# The generators on zoo:synth.


def _at(task: Task, name: str) -> list[int]:
    """The token at the position called ``name`` in every clean prompt."""
    assert task.position_names is not None
    pos = task.position_names.index(name)
    return [prompt[pos] for prompt in task.clean]


def test_induction_names_both_copies(synth: ModelAdapter) -> None:
    data, task = _generate(synth, "induction", seq_len=4, prefix_len=2)
    assert data.position_names == ["BOS", "A0", "A1", "A2", "A3", "B0", "B1"]
    assert _at(task, "BOS") == [_tok(synth).bos_id] * 24
    # The repeat copies the first copy, and the answer (at B1, the last) is A2.
    assert _at(task, "B0") == _at(task, "A0") and _at(task, "B1") == _at(task, "A1")
    assert _at(task, "A2") == [c[0] for c in task.correct]
    assert task.answer_pos == [6] * 24
    default, _ = _generate(synth, "induction")
    assert default.position_names == ["BOS", *(f"A{i}" for i in range(10)), *(f"B{i}" for i in range(5))]


def test_ioi_one_template_one_order_names_the_roles(synth: ModelAdapter) -> None:
    data, task = _generate(synth, "ioi", template=0, templates="ABBA")
    assert data.position_names == IOI_TEMPLATE_0
    tok = _tok(synth)
    assert _at(task, "IO") == [c[0] for c in task.correct]
    assert _at(task, "S2") == [i[0] for i in task.incorrect] == _at(task, "S1")
    assert task.answer_pos == [len(IOI_TEMPLATE_0) - 1] * 24
    assert {tok.id_to_token(t) for t in _at(task, "END")} == {"to"}
    for name in ("When", "went", ","):
        assert {tok.id_to_token(t) for t in _at(task, name)} == {name}
    assert len(set(_at(task, "PLACE"))) > 1 and len(set(_at(task, "OBJECT"))) > 1


def test_ioi_baba_and_both_orders(synth: ModelAdapter) -> None:
    baba, task = _generate(synth, "ioi", template=0, templates="BABA")
    assert baba.position_names == ["BOS", "When", "S1", "and", "IO", *IOI_TEMPLATE_0[5:]]
    assert _at(task, "IO") == [c[0] for c in task.correct] and _at(task, "S1") == _at(task, "S2")
    both, task = _generate(synth, "ioi", template=0)
    assert both.position_names == ["BOS", "When", "A", "and", "B", *IOI_TEMPLATE_0[5:]]
    io = [c[0] for c in task.correct]
    slots = zip(io, _at(task, "A"), _at(task, "B"), strict=True)
    slot = ["A" if i == a else "B" if i == b else "?" for i, a, b in slots]
    assert set(slot) == {"A", "B"}  # the answer is in either slot: the roles vary by prompt
    assert both.description == "indirect object identification (both, template 0), ABC corruption"


def test_ioi_with_several_templates_has_no_names(synth: ModelAdapter) -> None:
    data, task = _generate(synth, "ioi", templates="ABBA")
    assert len({len(c) for c in task.clean}) > 1 and data.position_names is None


def test_ioi_template_parameter_is_bounded(synth: ModelAdapter) -> None:
    text, _ = _generate(synth, "ioi", n=2, template="0", templates="ABBA")  # as --task-param gives it
    assert text.position_names == IOI_TEMPLATE_0
    with pytest.raises(TaskError) as err:
        _generate(synth, "ioi", template=8)
    assert (err.value.field, err.value.reason) == ("template", "Input should be less than or equal to 7")
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"model": "zoo:synth", "task": "ioi", "task_params": {"template": -1}})
    assert spec_error_line(info.value) == "task_params.template: Input should be greater than or equal to 0"


def test_greater_than_names_the_template(synth: ModelAdapter) -> None:
    data, task = _generate(synth, "greater_than")
    assert data.position_names == [
        "BOS", "The", "NOUN", "lasted", "from", "the", "year", "CC", "YY", "to", "the", "year", "END",
    ]
    tok = _tok(synth)
    assert _at(task, "CC") == _at(task, "END")
    yy = [int(tok.id_to_token(t)) for t in _at(task, "YY")]
    # The correct endings are exactly those greater than the YY at the YY position.
    for correct, start in zip(task.correct, yy, strict=True):
        assert set(correct) == {tok.encode(f"{y:02d}", prepend_bos=False)[0] for y in range(start + 1, 100)}
    assert len(set(yy)) > 1


def test_random_names_its_positions(synth: ModelAdapter) -> None:
    data, task = _generate(synth, "random", length=3)
    assert data.position_names == task.position_names == ["t0", "t1", "t2"]


# The template helper on a tokenizer that attaches spaces to words (GPT-2's byte-level BPE).


def _bpe() -> Tokenizer:
    """Whole words with their leading space ("Ġ") as tokens, as GPT-2 has them (unknown words
    are "<unk>", one token like any other)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<unk>", "When", "Ġand", "Ġwent", "Ġto", "Ġthe", ",", "ĠMary", "ĠJohn", "Ġstore"]
    tk = HFTok(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>"))


def test_template_names_with_leading_space_tokens() -> None:
    tok = _bpe()
    template = "When {A} and {B} went to the {place}, {C}"
    values = {"A": "Mary", "B": "John", "C": "John", "place": "store"}
    roles = {"A": "IO", "B": "S1", "C": "S2", "place": "PLACE"}
    assert [tok.decode([t]) for t in tok.encode(template.format(**values))] == [
        "<bos>", "When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John",
    ]
    assert template_position_names(tok, template, values, roles, last="END") == [
        "BOS", "When", "IO", "and", "S1", "went", "to", "the", "PLACE", ",", "END",
    ]
    assert template_position_names(tok, template, values, roles, bos=False) == [
        "When", "IO", "and", "S1", "went", "to", "the", "PLACE", ",", "S2",
    ]
    # A slot value of two tokens (" Mary John"), or none: no names.
    assert template_position_names(tok, template, {**values, "A": "Mary John"}, roles) is None
    assert template_position_names(tok, template, {**values, "place": ""}, roles) is None


def test_common_names_need_every_prompt_to_agree() -> None:
    assert common_names([["a", "b"], ["a", "b"]]) == ["a", "b"]
    assert common_names([["a", "b"], ["a", "c"]]) is None
    assert common_names([["a", "b"], None]) is None
    assert common_names([]) is None


# Names for any task of one length.


def test_shared_names_prefer_the_tasks_own(tok: WordTokenizer) -> None:
    task = resolve_task(task_data_from_json({**TASK, "position_names": NAMES}), tok, tok.vocab_size, 64)
    assert shared_position_names(task, tok) == NAMES


def test_shared_names_are_the_shared_tokens(tok: WordTokenizer) -> None:
    task = resolve_task(task_data_from_json(TASK), tok, tok.vocab_size, 64)
    assert shared_position_names(task, tok) == ["BOS", "the", "p2", "sat", "on", "the"]
    ids = task_data_from_json(
        {"clean": [[5, 1, 7], [5, 2, 7]], "corrupted": [[5, 2, 7], [5, 1, 7]],
         "correct": [3, 3], "incorrect": [4, 4]}
    )
    assert shared_position_names(resolve_task(ids, None, 10, 64), None) == ["#5", "p1", "#7"]


def test_shared_names_need_one_length(tok: WordTokenizer, synth: ModelAdapter) -> None:
    _, task = _generate(synth, "ioi", n=64, templates="ABBA")
    lengths = [len(c) for c in task.clean]
    with pytest.raises(TaskError) as err:
        shared_position_names(task, synth.tokenizer)
    assert err.value.field == "params.positions"
    assert err.value.reason == (
        "position-aware edges need prompts of one length (a shared template): "
        f"clean prompts have {min(lengths)} to {max(lengths)} tokens"
    )
    assert (min(lengths), max(lengths)) == (15, 18)
    odd = Task("t", [[1, 2], [3, 4]], [[1, 2], [3, 4, 5]], [[1], [1]], [[2], [2]], [1, 1])
    with pytest.raises(TaskError, match="clean and corrupted prompts have 2 to 3 tokens"):
        shared_position_names(odd, None)
