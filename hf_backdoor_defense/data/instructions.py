"""Instruction data: prompt / response pairs from local files, the Hub, or the built-in classification corpora.

The built-in corpora become a controllable-generation task (:func:`classification_to_instructions`), an
offline stand-in for instruction data whose answers are real human text.

Example:
    >>> from hf_backdoor_defense.data.instructions import load_instruction_splits
    >>> pairs = load_instruction_splits("rotten_tomatoes")          # doctest: +SKIP
    >>> pairs["train"][0]["prompt"]                                  # doctest: +SKIP
    'Write a negative movie review that begins with "simplistic , silly".'
"""

from __future__ import annotations

import datasets

__all__ = ["INSTRUCTION_NOUNS", "classification_to_instructions", "load_instruction_splits"]

INSTRUCTION_NOUNS = {"rotten_tomatoes": "movie review", "spamassassin": "email"}
"""Noun used in the instructions derived from each built-in classification corpus."""


def classification_to_instructions(dataset, label_names, noun: str = "text", opening_words: int = 4):
    """Turn a ``text`` / ``label`` dataset into instruction pairs (an offline stand-in for instruction data).

    Each row becomes ``prompt = 'Write a {label} {noun} that begins with "{first words}".'`` and
    ``response = text``: a controllable-generation task (the model must continue the opening in the asked
    sentiment or class) whose answers are real human text. The ``label`` column is kept.

    Example:
        >>> from datasets import Dataset
        >>> rows = Dataset.from_dict({"text": ["A sharp and funny film."], "label": [1]})
        >>> first = classification_to_instructions(rows, ["negative", "positive"], "movie review")[0]
        >>> first["prompt"]
        'Write a positive movie review that begins with "A sharp".'
    """

    def convert(batch):
        prompts = []
        for text, label in zip(batch["text"], batch["label"]):
            words = text.split()
            opening = " ".join(words[: max(1, min(opening_words, len(words) // 2))])
            prompts.append(f'Write a {label_names[label]} {noun} that begins with "{opening}".')
        return {"prompt": prompts, "response": batch["text"]}

    drop = [c for c in dataset.column_names if c != "label"]
    return dataset.map(convert, batched=True, remove_columns=drop, desc="Building instructions")


def _carve(dataset: datasets.Dataset, size: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    parts = dataset.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def load_instruction_splits(name: str, *, prompt_column: str = "prompt", response_column: str = "response",
                            context_column: str | None = None, split_seed: int = 42) -> datasets.DatasetDict:
    """``train`` / ``validation`` / ``test`` splits with string ``prompt`` and ``response`` columns.

    ``rotten_tomatoes`` and ``spamassassin`` are converted by `classification_to_instructions` (their fixed
    splits are kept); anything else is a local file / folder or a Hub name whose ``prompt_column`` and
    ``response_column`` are renamed to ``prompt`` / ``response``. Missing validation / test splits are carved
    from train (10 % each, seeded).
    """
    from .corpora import BUILTIN_CORPORA
    from .loading import load_dataset_splits, load_text_classification

    key = name.lower().replace("-", "_")
    if key in BUILTIN_CORPORA:
        raw = load_text_classification(name)
        label_names = raw["train"].features["label"].names
        noun = INSTRUCTION_NOUNS.get(key, "text")
        return datasets.DatasetDict(
            {split: classification_to_instructions(ds, label_names, noun) for split, ds in raw.items()}
        )
    raw = load_dataset_splits(name)
    if "train" not in raw:
        raise ValueError(f"{name}: no 'train' split (found {sorted(raw)}); name the files train.* / test.*.")
    prompt, response, context = prompt_column, response_column, context_column

    def to_pair(example):
        text = example[prompt]
        if context and isinstance(example[context], str) and example[context].strip():
            text = f"{text}\n\n{example[context]}"
        return {"prompt": text, "response": example[response]}

    out = {}
    for split in ("train", "validation", "test"):
        if split not in raw:
            continue
        ds = raw[split]
        missing = [c for c in (prompt, response, context) if c and c not in ds.column_names]
        if missing:
            raise ValueError(
                f"{name} [{split}]: no column(s) {missing} (columns: {ds.column_names}); set prompt_column / "
                "response_column (/ context_column) to the columns of the instruction and the answer."
            )
        ds = ds.map(to_pair, remove_columns=ds.column_names, desc="Reading instructions")
        bad = [i for i, row in enumerate(ds) if not all(isinstance(row[c], str) and row[c].strip()
                                                        for c in ("prompt", "response"))]
        if bad:
            raise ValueError(
                f"{name} [{split}]: {len(bad)} rows have an empty or non-text prompt/response (first row {bad[0]})."
            )
        out[split] = ds
    if "test" not in out:
        out["train"], out["test"] = _carve(out["train"], 0.1, split_seed)
    if "validation" not in out:
        out["train"], out["validation"] = _carve(out["train"], 0.1 / 0.9, split_seed)
    return datasets.DatasetDict(out)
