"""The built-in generators on zoo:synth's tokenizer: deterministic, patchable pairs
(equal lengths), single-token answers, and errors that name the problem."""

from __future__ import annotations

import re

import pytest

from circuitd.errors import TaskError
from circuitd.models.ids import ZOO_DIR
from circuitd.tasks import greater_than, induction, ioi, load_task_data, resolve_task
from circuitd.tasks.vocab import NAMES, TWO_DIGITS
from circuitd.tokenizer import WordTokenizer, build_word_tokenizer

GENERATORS = {"ioi": ioi, "greater_than": greater_than, "induction": induction}


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer(ZOO_DIR / "synth" / "tokenizer.json")


def _names(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text) if w in NAMES]


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_for_a_seed(tok: WordTokenizer, name: str) -> None:
    gen = GENERATORS[name].generate
    a, b = gen(tok, tok.vocab_size, n=16, seed=3), gen(tok, tok.vocab_size, n=16, seed=3)
    assert a == b
    assert gen(tok, tok.vocab_size, n=16, seed=4).clean != a.clean


@pytest.mark.parametrize("name", GENERATORS)
def test_pairs_resolve_with_equal_lengths_and_single_token_answers(
    tok: WordTokenizer, name: str
) -> None:
    data = load_task_data(name, tok, tok.vocab_size, n=32, seed=0)
    assert len(data.clean) == 32 and data.name == name
    task = resolve_task(data, tok, tok.vocab_size, n_ctx=64)  # raises on any bad answer
    for clean, corrupted, correct, incorrect in zip(
        task.clean, task.corrupted, task.correct, task.incorrect, strict=True
    ):
        assert len(clean) == len(corrupted)
        assert clean != corrupted
        assert clean[0] == tok.bos_id
        assert correct and incorrect and not set(correct) & set(incorrect)
        if name != "greater_than":
            assert len(correct) == len(incorrect) == 1


def test_default_metrics(tok: WordTokenizer) -> None:
    assert ioi.generate(tok, tok.vocab_size, n=2).metric == "logit_diff"
    assert induction.generate(tok, tok.vocab_size, n=2).metric == "logit_diff"
    assert greater_than.generate(tok, tok.vocab_size, n=2).metric == "prob_diff"
    assert ioi.generate(tok, tok.vocab_size, n=2, metric="kl").metric == "kl"


def test_ioi_answers_and_abc_corruption(tok: WordTokenizer) -> None:
    data = ioi.generate(tok, tok.vocab_size, n=64, seed=1)
    orders = set()
    for clean, corrupted, io, s in zip(
        data.clean, data.corrupted, data.correct, data.incorrect, strict=True
    ):
        io, s = io.strip(), s.strip()
        names = _names(clean)
        assert len(names) == 3 and names.count(s) == 2 and names.count(io) == 1
        assert names[2] == s
        orders.add("ABBA" if names[0] == io else "BABA")
        abc = _names(corrupted)
        assert len(abc) == 3 and len(set(abc)) == 3
        assert not set(abc) & {io, s}
        # Same template: the prompts differ only in the name slots.
        assert re.sub(r"\w+", lambda m: "N" if m[0] in NAMES else m[0], clean) == re.sub(
            r"\w+", lambda m: "N" if m[0] in NAMES else m[0], corrupted
        )
    assert orders == {"ABBA", "BABA"}


@pytest.mark.parametrize("order", ["ABBA", "BABA"])
def test_ioi_template_order(tok: WordTokenizer, order: str) -> None:
    data = ioi.generate(tok, tok.vocab_size, n=16, templates=order)
    for clean, io in zip(data.clean, data.correct, strict=True):
        first_is_io = _names(clean)[0] == io.strip()
        assert first_is_io == (order == "ABBA")


def test_greater_than_answer_sets_partition_the_years(tok: WordTokenizer) -> None:
    data = greater_than.generate(tok, tok.vocab_size, n=64, seed=2)
    for clean, corrupted, correct, incorrect in zip(
        data.clean, data.corrupted, data.correct, data.incorrect, strict=True
    ):
        century, yy = re.search(r"year (\d\d)(\d\d) to the year (\d\d)$", clean).group(1, 2)
        assert clean.endswith(f"the year {century}")
        assert 2 <= int(yy) <= 98
        assert corrupted == clean.replace(f"{century}{yy}", f"{century}01")
        assert correct == [d for d in TWO_DIGITS if int(d) > int(yy)]
        assert incorrect == [d for d in TWO_DIGITS if int(d) <= int(yy)]
    only17 = greater_than.generate(tok, tok.vocab_size, n=8, centuries="17")
    assert all(c.endswith("the year 17") for c in only17.clean)


def test_induction_corruption_keeps_the_repeat(tok: WordTokenizer) -> None:
    data = induction.generate(tok, tok.vocab_size, n=32, seed=5, seq_len=8, prefix_len=3)
    for clean, corrupted, correct, incorrect in zip(
        data.clean, data.corrupted, data.correct, data.incorrect, strict=True
    ):
        c, k = clean.split(), corrupted.split()
        assert len(c) == len(k) == 11 and len(set(c[:8])) == 8
        assert c[8:] == k[8:] == c[:3]  # same repeat, the first copy differs
        assert c[3] == correct.strip() and k[3] == incorrect.strip()
        assert k[2] == c[2] and not set(k[:8]) - {c[2]} & set(c[:8])


def test_errors_name_the_problem(tok: WordTokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    build_word_tokenizer(
        ["When", "and", "went", "to", "the", "store", ",", "gave", "a", "drink", "Mary", "John"],
        path,
    )
    tiny = WordTokenizer(path)
    with pytest.raises(TaskError, match="names") as err:
        ioi.generate(tiny, tiny.vocab_size)
    assert err.value.field == "task"
    with pytest.raises(TaskError, match="two-digit"):
        greater_than.generate(tiny, tiny.vocab_size)
    with pytest.raises(TaskError, match="pool words"):
        induction.generate(tiny, tiny.vocab_size)
    for gen in (ioi, greater_than, induction):
        with pytest.raises(TaskError, match="tokenizer"):
            gen.generate(None, 100)
    with pytest.raises(TaskError) as err:
        ioi.generate(tok, tok.vocab_size, metric="accuracy")
    assert err.value.field == "metric"
    with pytest.raises(TaskError) as err:
        ioi.generate(tok, tok.vocab_size, templates="ABC")
    assert err.value.field == "templates"
    with pytest.raises(TaskError) as err:
        induction.generate(tok, tok.vocab_size, seq_len=6, prefix_len=6)
    assert err.value.field == "prefix_len"
    # Names whose ids fall outside the model's vocabulary count as missing.
    with pytest.raises(TaskError, match="names"):
        ioi.generate(tok, 105)
