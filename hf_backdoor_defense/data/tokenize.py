"""Turn a ``text`` / ``label`` dataset into model inputs, the same way for every trainer."""

from __future__ import annotations

import datasets


def tokenize_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict,
    tokenizer,
    *,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    padding: bool | str = False,
):
    """Add ``input_ids``, ``attention_mask`` and ``labels`` (a copy of ``label``) and keep every other column.

    Pad later with :class:`transformers.DataCollatorWithPadding` (``padding=False``, the default).
    Decoder tokenizers without a pad token get ``pad_token = eos_token`` on a copy of nothing:
    set ``tokenizer.pad_token`` yourself beforehand if you need another choice.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from hf_backdoor_defense.data import load_text_classification, tokenize_dataset
        >>> rt = load_text_classification("rotten_tomatoes")                      # doctest: +SKIP
        >>> tok = AutoTokenizer.from_pretrained("bert-base-uncased")              # doctest: +SKIP
        >>> encoded = tokenize_dataset(rt, tok, max_length=64)                     # doctest: +SKIP
    """
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(
            {
                split: tokenize_dataset(ds, tokenizer, max_length=max_length, text_column=text_column,
                                        label_column=label_column, padding=padding)
                for split, ds in dataset.items()
            }
        )
    if text_column not in dataset.column_names:
        raise ValueError(
            f"tokenize_dataset: no column {text_column!r} (columns: {dataset.column_names}); pass text_column=."
        )
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}.")
    has_label = label_column in dataset.column_names

    def encode(batch):
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length, padding=padding)
        out = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if has_label:
            out["labels"] = list(batch[label_column])
        return out

    return dataset.map(encode, batched=True, desc="Tokenizing")


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
"""The columns a sequence classifier's forward pass takes (``token_type_ids`` only for BERT-like tokenizers)."""


def model_inputs(dataset: datasets.Dataset, keep=()) -> datasets.Dataset:
    """``dataset`` (tokenised) with only :data:`MODEL_INPUTS` and the columns in ``keep`` (e.g. the attacks'
    ``is_poisoned``, which the Gradient Control trainer reads)."""
    wanted = set(MODEL_INPUTS) | set(keep)
    return dataset.remove_columns([c for c in dataset.column_names if c not in wanted])
