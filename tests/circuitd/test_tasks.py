import json

import pytest

from circuitd.errors import TaskError
from circuitd.tasks import load_task_data, resolve_task, task_data_from_json
from circuitd.tokenizer import WordTokenizer, build_word_tokenizer


@pytest.fixture
def tok(tmp_path):
    build_word_tokenizer(["the", "cat", "dog", "sat", "ran", "on", "mat", "."], tmp_path / "t.json")
    return WordTokenizer(tmp_path / "t.json")


MINIMAL = {
    "clean": ["the cat sat on the", [0, 3, 4, 5]],
    "corrupted": ["the dog sat on the", [0, 4, 4, 5]],
    "correct": ["mat", ["cat", 9]],
    "incorrect": ["dog", "ran"],
    "metric": "logit_diff",
}


def test_minimal_json_resolves(tok, tmp_path) -> None:
    path = tmp_path / "task.json"
    path.write_text(json.dumps(MINIMAL))
    task = resolve_task(load_task_data(str(path), tok, tok.vocab_size), tok, tok.vocab_size, 64)
    assert task.clean[0] == [0, 2, 3, 5, 7, 2] and task.clean[1] == [0, 3, 4, 5]
    assert task.correct == [[8], [3, 9]] and task.incorrect == [[4], [6]]
    assert task.answer_pos == [5, 3]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"corrupted": ["the dog sat", [0, 4, 4, 5]]}, "corrupted[0]"),
        ({"correct": ["mat on", "cat"]}, "correct[0]"),
        ({"incorrect": ["dog", 999]}, "incorrect[1]"),
        ({"clean": ["the cow sat on the", [0, 3, 4, 5]]}, "clean[0]"),
        ({"answer_position": 7}, "answer_position[0]"),
    ],
)
def test_resolution_errors_name_the_field(tok, change, field) -> None:
    data = task_data_from_json({**MINIMAL, **change})
    with pytest.raises(TaskError) as err:
        resolve_task(data, tok, tok.vocab_size, 64)
    assert err.value.field == field


@pytest.mark.parametrize(
    "change,text",
    [
        ({"metric": "accuracy"}, "metric"),
        ({"correct": ["mat"]}, "correct: has 1 entries, clean has 2"),
        ({"corrupted": ["the dog sat on the", [0, 4, 4]]}, "corrupted[1]: 3 tokens but clean[1] has 4"),
        ({"extra": 1}, "extra"),
    ],
)
def test_json_errors_name_the_field(change, text) -> None:
    with pytest.raises(TaskError) as err:
        task_data_from_json({**MINIMAL, **change})
    assert text in str(err.value)


def test_unknown_generator_and_missing_file() -> None:
    with pytest.raises(TaskError, match="unknown generator"):
        load_task_data("nope", None, 10)
    with pytest.raises(TaskError, match="no such task file"):
        load_task_data("missing.json", None, 10)
