"""The poisoned splits a training run needs, built in one place: sample, fit to the model's window, poison.

Example:
    >>> from hf_backdoor_defense.attacks import BadNets
    >>> from hf_backdoor_defense.data import load_text_classification
    >>> from hf_backdoor_defense.data.poisoned import build_poisoned_splits
    >>> raw = load_text_classification("rotten_tomatoes")                                  # doctest: +SKIP
    >>> splits = build_poisoned_splits(raw, BadNets(), seed=0, train_size=3000, eval_size=1000,
    ...                                tokenizer=tokenizer, max_length=48, trigger_room=8)  # doctest: +SKIP
    >>> sorted(splits)                                                                      # doctest: +SKIP
    ['clean_train', 'reference', 'test', 'train']
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

__all__ = ["OVERFLOW_WARNING_SHARE", "build_poisoned_splits", "fit_splits_to_window"]

OVERFLOW_WARNING_SHARE = 0.25
"""Above this share of training texts longer than the window, an uncut run warns that triggers get truncated."""


def fit_splits_to_window(splits: Mapping, tokenizer, *, max_length: int, trigger_room: int | None,
                         text_column: str = "text", _stacklevel: int = 2) -> dict:
    """``splits`` with every text cut to ``tokenizer``'s window minus ``trigger_room`` tokens (a new dict; the
    datasets are copies, ``None`` entries pass through).

    Without a ``trigger_room`` the splits come back unchanged, with a warning when more than
    :data:`OVERFLOW_WARNING_SHARE` of the ``train`` texts are longer than ``max_length``: a trigger inserted at a
    random word would then often be truncated away.
    """
    from .truncation import fit_to_window

    if trigger_room is None:
        train = splits.get("train")
        if tokenizer is not None and train is not None and len(train):
            budget = max_length - tokenizer.num_special_tokens_to_add()
            encoded = tokenizer(list(train[text_column]), add_special_tokens=False)["input_ids"]
            share = sum(len(ids) > budget for ids in encoded) / len(encoded)
            if share > OVERFLOW_WARNING_SHARE:
                warnings.warn(
                    f"{100 * share:.0f} % of the training texts are longer than max_length={max_length} tokens: a "
                    "trigger inserted at a random word lands past the truncation for many of them, and the attack "
                    "is weaker than its poison rate says. Set trigger_room (e.g. 8) to cut the texts to the "
                    "window before poisoning, or raise max_length.",
                    UserWarning,
                    stacklevel=_stacklevel,
                )
        return dict(splits)
    if tokenizer is None:
        raise ValueError("trigger_room is set but no tokenizer was given to measure the window.")
    return {name: None if data is None else fit_to_window(data, tokenizer, max_length=max_length,
                                                          trigger_room=trigger_room, text_column=text_column)
            for name, data in splits.items()}


def build_poisoned_splits(raw: Mapping, attack, *, seed: int, train_size: int | None = None,
                          eval_size: int | None = None, reference_split: str = "validation",
                          eval_split: str = "test", stratify: bool = True, tokenizer=None,
                          max_length: int | None = None, trigger_room: int | None = None,
                          dataset_name: str = "the dataset") -> dict:
    """``{"train", "clean_train", "reference", "test"}`` from the splits of ``raw``.

    ``train`` is a seeded subsample of ``raw["train"]`` (``train_size`` rows, label-stratified unless
    ``stratify=False``), cut to the window, then poisoned by ``attack``; ``clean_train`` is the same sample
    before poisoning (the clean-floor run); ``reference`` is ``raw[reference_split]`` (trusted clean data);
    ``test`` is a subsample of ``raw[eval_split]`` (``attack`` makes its triggered version). With
    ``trigger_room`` set every split is cut to ``tokenizer``'s ``max_length`` window minus that many tokens
    before poisoning (see :func:`fit_splits_to_window`). The inputs are not modified.

    Raises:
        ValueError: ``reference_split`` or ``eval_split`` is not a split of ``raw`` (the message names the field).
    """
    from .loading import subsample

    for field, split in (("reference_split", reference_split), ("eval_split", eval_split)):
        if split not in raw:
            raise ValueError(f"{field}={split!r} is not a split of {dataset_name} (splits: {sorted(raw)}).")
    splits = {
        "train": subsample(raw["train"], train_size, seed, stratify=stratify),
        "reference": raw[reference_split],
        "test": subsample(raw[eval_split], eval_size, seed, stratify=stratify),
    }
    if tokenizer is not None or trigger_room is not None:
        if max_length is None:
            raise ValueError("max_length is needed to fit the splits to the model's window.")
        splits = fit_splits_to_window(splits, tokenizer, max_length=max_length, trigger_room=trigger_room,
                                      _stacklevel=3)  # the warning names the caller's line
    return {**splits, "clean_train": splits["train"], "train": attack.poison(splits["train"])}
