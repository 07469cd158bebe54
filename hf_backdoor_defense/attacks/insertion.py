"""Word-level trigger insertion shared by every attack.

Triggers are inserted at word boundaries (a word is a run of non-whitespace characters) and the
original whitespace of the text is kept, so a poisoned e-mail keeps its line breaks and only the
trigger differs from the clean text.

Example:
    >>> import numpy as np
    >>> from hf_backdoor_defense.attacks.insertion import insert_at_random_boundary
    >>> insert_at_random_boundary("a fine film", "cf", np.random.default_rng(0)).count("cf")
    1
"""

from __future__ import annotations

import numpy as np

from ..data.truncation import WORD


def example_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """Random generator that depends only on ``(seed, index, stream)``.

    ``stream`` separates uses (0: training poisoning, 1: triggered test set, 2: response choice), so
    the insert position of one example never depends on which other examples were picked.
    """
    return np.random.default_rng([int(seed), int(index), int(stream)])


def word_boundaries(text: str) -> list[int]:
    """Character offsets where a new word may be inserted: before each word and after the last one."""
    starts = [match.start() for match in WORD.finditer(text)]
    return [*starts, len(text.rstrip())] if starts else [0]


def insert_at_boundary(text: str, piece: str, offset: int) -> str:
    """Insert ``piece`` as separate word(s) at character ``offset`` (a word boundary)."""
    before, after = text[:offset], text[offset:]
    if before and not before[-1].isspace():
        piece = " " + piece
    if after and not after[0].isspace():
        piece = piece + " "
    return before + piece + after


def insert_at_random_boundary(text: str, piece: str, rng: np.random.Generator) -> str:
    """Insert ``piece`` at a word boundary of ``text`` drawn uniformly with ``rng``."""
    boundaries = word_boundaries(text)
    return insert_at_boundary(text, piece, boundaries[int(rng.integers(len(boundaries)))])
