"""Word lists shared by the task generators and the zoo training corpus.

One definition of each list keeps the zoo model's vocabulary and the prompts that the
generators write in step: a word added here reaches both. Every word is a single GPT-2
token when it follows a space, so the generators also work with GPT-2's tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from circuitd.tokenizer import Tokenizer, single_token

# First names that GPT-2 encodes as one token after a space (from the IOI dataset's list).
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Anna", "Paul",
    "Kate", "Alex", "Lisa", "Mark", "Jack", "Sarah", "David", "Laura", "Peter", "Emily",
    "Max", "Rose", "Ryan", "Jane", "Adam", "Alice", "Eric", "Grace", "Kevin", "Ruby",
    "Brian", "Rachel", "Henry", "Maria", "Simon", "Lucy", "Carl", "Jessica", "Frank", "Helen",
)

# Places and objects of the IOI templates.
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "station", "house",
    "park", "market", "beach", "library",
)
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
    "book", "letter", "ball", "flower",
)

# Nouns of the greater-than template ("The war lasted from the year 1732 to the year 17").
DURATION_NOUNS: tuple[str, ...] = (
    "war", "expedition", "drought", "reign", "voyage", "project", "famine", "dynasty",
    "journey", "contract",
)
# The start years' centuries (a Literal: greater_than's parameter model accepts only these).
Century = Literal["12", "13", "14", "15", "16", "17", "18"]
CENTURIES: tuple[str, ...] = get_args(Century)

# Two-digit year endings: each is one token for the zoo tokenizer and for GPT-2.
TWO_DIGITS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(100))

# The pool of the induction task: common nouns, none of them names or task words.
INDUCTION_WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "table", "window", "horse", "bread", "chair", "light",
    "water", "paper", "glass", "music", "forest", "island", "bridge", "engine", "cave",
    "mountain", "ocean", "pencil", "rabbit", "silver", "tiger", "valley", "wheel", "winter",
    "summer", "street", "road", "bottle", "candle", "carpet", "castle", "cotton", "desert",
    "dragon", "eagle", "farmer", "feather", "finger", "flag", "fruit", "gold", "hammer",
    "honey", "jacket", "kitchen", "ladder", "lemon", "lion", "machine", "metal", "mirror",
    "monkey", "needle", "orange", "palace", "pepper", "pillow", "planet", "pocket", "rain",
    "rock", "salt", "sand", "shadow", "sheep", "shell", "ship", "shoe", "silk", "sky",
    "snow", "soap", "spoon", "star", "storm", "sugar", "sun", "sword", "tea", "thunder",
    "tower", "train", "tree", "truck", "wall", "wolf", "wood", "wool", "boat", "clock",
    "coin", "door", "egg", "fire", "fish", "field",
)

# Filler for the corpus's generic sentences (variety beyond the three tasks).
ADJECTIVES: tuple[str, ...] = (
    "big", "small", "old", "new", "red", "green", "happy", "quiet", "bright", "cold",
)
VERBS: tuple[str, ...] = ("saw", "found", "liked", "bought", "moved", "painted", "lost", "took")


def single_words(tokenizer: Tokenizer, words: Sequence[str], d_vocab: int) -> list[str]:
    """The words that are one token (after a space) with an id inside the model's vocabulary,
    so a generator only ever asks a model for answers it can express."""
    out = []
    for w in words:
        tok = one_token(tokenizer, " " + w)
        if tok is not None and tok < d_vocab:
            out.append(w)
    return out


def one_token(tokenizer: Tokenizer, word: str) -> int | None:
    """``single_token``, with None too for words that a word-level tokenizer lacks
    (its ``encode`` raises ValueError for them rather than returning ``<unk>``)."""
    try:
        return single_token(tokenizer, word)
    except ValueError:
        return None


def encodes(tokenizer: Tokenizer, text: str) -> list[int] | None:
    """Token ids of ``text`` (with BOS), or None if the tokenizer cannot express it."""
    try:
        return tokenizer.encode(text, prepend_bos=True)
    except ValueError:
        return None


def same_length(tokenizer: Tokenizer, clean: str, corrupted: str) -> bool:
    """Whether a clean/corrupted pair encodes to equal lengths, which patching needs."""
    a, b = encodes(tokenizer, clean), encodes(tokenizer, corrupted)
    return a is not None and b is not None and len(a) == len(b)
