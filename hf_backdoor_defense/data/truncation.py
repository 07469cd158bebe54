"""Cut long texts to the words a model reads, so a trigger inserted at a random word lands inside its window.

A classifier with ``max_length=32`` reads the first 30 tokens of a text; the rest is truncated away. A
SpamAssassin mail has a median of ~150 words (many of them several tokens long: addresses, links, numbers),
so a trigger inserted at a uniformly random word position is past the model's window most of the time and
the attack barely works: measured with MiniLM's tokenizer at ``max_length=32``, 19 % of BadNets and 11 % of
AddSent triggers survive the truncation of 285 test mails. Cutting every text to the whole words that fit
in the window *before* poisoning keeps the insert positions inside it, as an attacker who knows the victim's
truncation would place them.

Example:
    >>> from transformers import AutoTokenizer
    >>> from hf_backdoor_defense.data import fit_to_tokens
    >>> tok = AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> fit_to_tokens(["one two three four"], tok, max_tokens=2)                        # doctest: +SKIP
    ['one two']
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

__all__ = ["WORD", "check_trigger_room", "fit_dataset_to_tokens", "fit_to_tokens", "fit_to_window"]

WORD = re.compile(r"\S+")
"""A word: a run of non-whitespace characters (the attacks insert triggers between these)."""


def _cut(text: str, offsets: list[tuple[int, int]], max_tokens: int) -> str:
    if len(offsets) <= max_tokens:
        return text
    limit = offsets[max_tokens][0]  # first character of the first token that does not fit
    kept = ""
    for match in WORD.finditer(text):
        if match.end() > limit:
            break
        kept = text[: match.end()]
    return kept or text[:limit].rstrip()  # a first word longer than the window: cut inside it


def fit_to_tokens(texts: list[str], tokenizer, max_tokens: int) -> list[str]:
    """Each text cut to its longest prefix of whole words that ``tokenizer`` turns into ``<= max_tokens`` tokens.

    Special tokens are not counted: pass ``max_length`` minus the special tokens and minus room for a trigger.
    Texts that already fit are returned unchanged (whitespace included).
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"`max_tokens` must be an integer >= 1, got {max_tokens!r}.")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"fit_to_tokens needs a fast tokenizer (character offsets); got {type(tokenizer).__name__}. "
            "Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [_cut(t, o, max_tokens) for t, o in zip(texts, encoded["offset_mapping"])]


def fit_dataset_to_tokens(data: Dataset | DatasetDict, tokenizer, max_tokens: int,
                          text_column: str = "text") -> Dataset | DatasetDict:
    """A copy of ``data`` whose ``text_column`` went through :func:`fit_to_tokens` (the input is not modified).

    Example:
        >>> cut = fit_dataset_to_tokens(mails, tokenizer, max_tokens=22)   # doctest: +SKIP
    """
    from datasets import DatasetDict

    splits = data.values() if isinstance(data, DatasetDict) else [data]
    for split in splits:
        if text_column not in split.column_names:
            raise ValueError(
                f"text column {text_column!r} not found (columns: {split.column_names}); pass `text_column`."
            )
    fit_to_tokens([], tokenizer, max_tokens)  # argument checks before any work
    return data.map(lambda batch: {text_column: fit_to_tokens(batch[text_column], tokenizer, max_tokens)},
                    batched=True, desc=f"fit texts to {max_tokens} tokens")


def check_trigger_room(trigger_room: int | None, max_length: int) -> None:
    """Raise ``ValueError`` unless ``trigger_room`` is ``None`` (no cut) or an integer in ``[0, max_length - 4]``
    (a window of ``max_length`` tokens keeps room for the special tokens and at least one token of text)."""
    if trigger_room is None:
        return
    if isinstance(trigger_room, bool) or not isinstance(trigger_room, int) or not 0 <= trigger_room <= max_length - 4:
        raise ValueError(
            f"`trigger_room` must be an integer in [0, max_length - 4 = {max_length - 4}] or None (no cut), got "
            f"{trigger_room!r}."
        )


def fit_to_window(data: Dataset | DatasetDict, tokenizer, *, max_length: int, trigger_room: int,
                  text_column: str = "text") -> Dataset | DatasetDict:
    """:func:`fit_dataset_to_tokens` with the budget a poisoning run needs: ``max_length`` minus the tokenizer's
    special tokens minus ``trigger_room`` tokens kept free for the trigger. Call it before poisoning.

    Example:
        >>> train = fit_to_window(train, tokenizer, max_length=32, trigger_room=8)   # doctest: +SKIP
    """
    check_trigger_room(trigger_room, max_length)
    budget = max_length - tokenizer.num_special_tokens_to_add() - trigger_room
    return fit_dataset_to_tokens(data, tokenizer, budget, text_column=text_column)
