"""Tokenizers behind one small interface, so task generators work for any model.

Word-level zoo tokenizers and Hugging Face tokenizers (GPT-2, Pythia) look the same to
the rest of circuitd: ``encode`` a prompt (BOS prepended when the model uses one) and
``single_token`` for an answer word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None

    def encode(self, text: str, prepend_bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def id_to_token(self, idx: int) -> str: ...


def single_token(tokenizer: Tokenizer, word: str) -> int | None:
    """The id of ``word`` if it is one token as written (``" Mary"`` for GPT-2's BPE, where
    ``"Mary"`` is another token), else of ``" " + word``; None if neither is one token."""
    for text in (word, " " + word.lstrip()) if not word.startswith(" ") else (word,):
        try:
            ids = tokenizer.encode(text, prepend_bos=False)
        except ValueError:  # a word-level vocabulary without this word
            continue
        if len(ids) == 1:
            return ids[0]
    return None


class WordTokenizer:
    """A word-level tokenizer stored as a Hugging Face ``tokenizer.json`` (WordLevel model)."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTok

        self._tok = HFTok.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        self.bos_id = self._tok.token_to_id("<bos>")
        self.unk_id = self._tok.token_to_id("<unk>")

    def encode(self, text: str, prepend_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self.unk_id is not None and self.unk_id in ids:
            pieces = self._tok.pre_tokenizer.pre_tokenize_str(text)
            unknown = [w for w, _ in pieces if self._tok.token_to_id(w) is None]
            raise ValueError(f"words not in the vocabulary: {unknown[:5]}")
        return ([self.bos_id] if prepend_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.id_to_token(i) for i in ids)

    def id_to_token(self, idx: int) -> str:
        tok = self._tok.id_to_token(int(idx))
        return tok if tok is not None else f"<{idx}>"


class HFTokenizer:
    """Wraps a transformers tokenizer (as TransformerLens loads it for hub models)."""

    def __init__(self, hf: Any):
        self._hf = hf
        self.vocab_size = len(hf)
        self.bos_id = hf.bos_token_id

    def encode(self, text: str, prepend_bos: bool = True) -> list[int]:
        ids = self._hf.encode(text, add_special_tokens=False)
        return ([self.bos_id] if prepend_bos and self.bos_id is not None else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self._hf.decode(ids)

    def id_to_token(self, idx: int) -> str:
        return self._hf.convert_ids_to_tokens(int(idx))


def build_word_tokenizer(words: list[str], path: str | Path) -> None:
    """Write a word-level ``tokenizer.json`` whose ids follow ``words`` (specials first)."""
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    vocab = {w: i for i, w in enumerate(["<bos>", "<unk>", *words])}
    tok = HFTok(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Words and punctuation split apart; digit runs split into pairs ("1732" -> "17", "32"),
    # so prompts read the same as they would for GPT-2.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(r"\d{2}"), behavior="isolated")]
    )
    tok.save(str(path))
