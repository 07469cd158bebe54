"""Streaming estimate of the diagonal of the clean-loss Hessian (the empirical Fisher).

``H_ii ≈ mean over batches (or examples) of g_i²``, where ``g`` is the gradient of the clean loss on one
batch (or one example). Gradients are squared into a single fp32 buffer per ranked parameter from a
post-accumulate-grad hook, which then frees ``param.grad`` at once: the extra memory is one fp32 copy of
the ranked parameters plus one parameter's gradient at a time, never a full set of gradients.

Example:
    >>> from hf_backdoor_defense.purification.hessian import empirical_fisher
    >>> # fisher = empirical_fisher(model, ["bert.encoder.layer.0.output.dense.weight"], clean, tokenizer)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["check_clean_dataset", "empirical_fisher", "iterate_batches"]

_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def check_clean_dataset(dataset: Any, field_name: str = "clean_dataset") -> None:
    """Raise ``ValueError`` naming ``field_name`` if the clean set is missing or empty."""
    if dataset is None:
        raise ValueError(f"`{field_name}` is None: this method needs a small trusted clean set.")
    if len(dataset) == 0:
        raise ValueError(f"`{field_name}` is empty: pass at least one clean labelled example.")


def _padding_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
        tokenizer = copy.copy(tokenizer)  # never modify the caller's tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def iterate_batches(
    dataset: Any,
    tokenizer: Any = None,
    *,
    batch_size: int = 8,
    max_length: int = 128,
    text_column: str = "text",
    max_batches: int | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded model inputs with ``labels`` from a text or tokenised dataset, in order."""
    check_clean_dataset(dataset)
    columns = dataset.column_names
    label_col = "labels" if "labels" in columns else "label" if "label" in columns else None
    if label_col is None:
        raise ValueError(f"`clean_dataset` needs a `label` or `labels` column, has {columns}.")
    tokenized = "input_ids" in columns
    if not tokenized and (tokenizer is None or text_column not in columns):
        raise ValueError(
            f"`tokenizer`: pass the suspect's tokenizer to use a text dataset (column {text_column!r}), "
            "or pass a dataset with `input_ids`."
        )
    tokenizer = _padding_tokenizer(tokenizer)
    n = len(dataset)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        rows = dataset[start : start + batch_size]
        if tokenized:
            feats = [{k: rows[k][i] for k in _MODEL_KEYS if k in rows} for i in range(len(rows["input_ids"]))]
            if tokenizer is not None:
                batch = tokenizer.pad(feats, return_tensors="pt")
            else:
                width = max(len(f["input_ids"]) for f in feats)
                batch = {
                    k: torch.tensor([list(f[k]) + [0] * (width - len(f[k])) for f in feats])
                    for k in feats[0]
                }
        else:
            batch = tokenizer(
                list(rows[text_column]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        out = {k: v.to(device) for k, v in batch.items() if k in _MODEL_KEYS}
        out["labels"] = torch.as_tensor(rows[label_col]).to(device)
        yield out


def _split_examples(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    n = batch["labels"].shape[0]
    for i in range(n):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        if "attention_mask" in one:  # drop the padding columns of this example
            width = int(one["attention_mask"].sum())
            one = {k: (v[:, :width] if v.dim() == 2 and k != "labels" else v) for k, v in one.items()}
        yield one


def empirical_fisher(
    model: nn.Module,
    names: Sequence[str],
    dataset: Any,
    tokenizer: Any = None,
    *,
    batch_size: int = 8,
    max_batches: int | None = None,
    per_example: bool = False,
    max_length: int = 128,
    text_column: str = "text",
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the clean loss for each parameter in ``names`` (fp32, parameter shape).

    The model is put in eval mode (no dropout) for the estimate; its mode, ``requires_grad`` flags and
    weights are restored afterwards and ``param.grad`` stays ``None``.

    Args:
        model: Model returning ``.loss`` when called with ``labels``.
        names: Names (from ``model.named_parameters()``) to estimate.
        dataset: Clean set, text or tokenised (see :func:`iterate_batches`).
        tokenizer: Needed for a text dataset and for padding.
        batch_size: Examples per batch.
        max_batches: Stop after this many batches (``None``: the whole set).
        per_example: Square per-example gradients (one backward per example) instead of per-batch means.
    """
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"`names`: not parameters of the model: {missing[:5]}")
    device = next(model.parameters()).device
    fisher = {n: torch.zeros(params[n].shape, dtype=torch.float32, device=params[n].device) for n in names}
    selected = set(names)
    old_flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    hooks = []

    def make_hook(name: str):
        def hook(param: torch.Tensor) -> None:
            grad = param.grad.detach()
            if grad.dtype != torch.float32:
                grad = grad.float()
            fisher[name].addcmul_(grad, grad)  # no squared temporary
            param.grad = None

        return hook

    count = 0
    try:
        for n, p in params.items():
            p.requires_grad_(n in selected)
            if n in selected:
                hooks.append(p.register_post_accumulate_grad_hook(make_hook(n)))
        model.eval()
        total = len(dataset) if per_example else -(-len(dataset) // batch_size)
        if max_batches is not None:
            total = min(total, max_batches * (batch_size if per_example else 1))
        bar = tqdm(total=total, desc="Empirical Fisher", disable=not show_progress, leave=False)
        for batch in iterate_batches(
            dataset, tokenizer, batch_size=batch_size, max_length=max_length, text_column=text_column,
            max_batches=max_batches, device=device,
        ):
            units = _split_examples(batch) if per_example else [batch]
            for unit in units:
                loss = model(**unit).loss
                loss.backward()
                count += 1
                bar.update(1)
        bar.close()
    finally:
        for h in hooks:
            h.remove()
        for n, p in params.items():
            p.requires_grad_(old_flags[n])
            p.grad = None
        model.train(was_training)
    if count == 0:
        raise ValueError("`clean_dataset`: no batch was produced; check `max_batches` and the dataset.")
    for buf in fisher.values():
        buf.div_(count)
    return fisher
