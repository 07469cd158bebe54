"""Batched prediction and the CACC/ASR evaluation of a classifier against an attack.

Example:
    >>> from hf_backdoor_defense.attacks import BadNets
    >>> from hf_backdoor_defense.metrics import evaluate_backdoor
    >>> scores = evaluate_backdoor(model, tokenizer, data["test"], BadNets())  # doctest: +SKIP
    >>> scores["cacc"], scores["asr"]  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from .backdoor import attack_success_rate, clean_accuracy


def _device_of(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def predict_proba(
    model: torch.nn.Module,
    tokenizer,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    text_column: str = "text",
    desc: str | None = None,
    disable_progress_bar: bool = False,
) -> np.ndarray:
    """Class probabilities (softmax of the logits, float32, one row per example) of a sequence classifier on
    ``dataset[text_column]``.

    Runs on the model's device, in eval mode and without gradients; the model's previous
    train/eval mode is restored afterwards. Works with plain models and PEFT models.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    if text_column not in dataset.column_names:
        raise ValueError(
            f"column {text_column!r} not found (columns: {dataset.column_names}); pass `text_column=`."
        )
    if tokenizer.pad_token is None:
        raise ValueError(
            "the tokenizer has no pad token; set `tokenizer.pad_token = tokenizer.eos_token` and "
            "`model.config.pad_token_id = tokenizer.pad_token_id` before evaluating."
        )
    device = _device_of(model)
    was_training = model.training
    model.eval()
    rows: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(dataset), batch_size),
                desc=desc or "Predicting",
                disable=disable_progress_bar,
                unit="batch",
            ):
                texts = dataset[start : start + batch_size][text_column]
                inputs = tokenizer(
                    texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                ).to(device)
                outputs = model(**inputs)
                logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
                rows.append(logits.float().softmax(-1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def predict(model: torch.nn.Module, tokenizer, dataset: Dataset, **kwargs) -> np.ndarray:
    """Predicted label ids of a sequence classifier on ``dataset[text_column]`` (the argmax of
    :func:`predict_proba`, which takes the same keyword arguments)."""
    probabilities = predict_proba(model, tokenizer, dataset, **kwargs)
    return probabilities.argmax(-1) if len(probabilities) else np.zeros(0, dtype=np.int64)


def evaluate_backdoor(
    model: torch.nn.Module,
    tokenizer,
    clean_test: Dataset,
    attack,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    disable_progress_bar: bool = False,
    split_name: str = "test",
) -> dict[str, float | int]:
    """CACC on ``clean_test`` and ASR on ``attack.triggered_test_set(clean_test)``.

    ``split_name`` only labels the progress bars ("CACC (clean test)"); pass ``"validation"`` when the
    rows are validation sentences, as in a model-selection sweep.

    Returns:
        ``{"cacc", "asr", "n_clean", "n_triggered"}``: accuracies in [0, 1] and example counts.
    """
    text_column, label_column = attack.text_column, attack.label_column
    if label_column not in clean_test.column_names:
        raise ValueError(f"column {label_column!r} not found (columns: {clean_test.column_names}).")
    triggered = attack.triggered_test_set(clean_test)
    common = dict(
        batch_size=batch_size,
        max_length=max_length,
        text_column=text_column,
        disable_progress_bar=disable_progress_bar,
    )
    clean_preds = predict(model, tokenizer, clean_test, desc=f"CACC (clean {split_name})", **common)
    triggered_preds = predict(model, tokenizer, triggered, desc=f"ASR (triggered {split_name})", **common)
    return {
        "cacc": clean_accuracy(clean_preds, clean_test[label_column]),
        "asr": attack_success_rate(triggered_preds, triggered["original_label"], attack.target_label),
        "n_clean": len(clean_test),
        "n_triggered": len(triggered),
    }
