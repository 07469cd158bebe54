"""Choose the purification ratio under a clean-accuracy budget.

For each ratio: purify, fine-tune on the clean training set, measure accuracy on a clean **dev** set
(never the test split). The baseline is the suspect's own dev accuracy (the fine-tuned model's, as in the
papers); the chosen ratio is the largest one whose post-fine-tune dev accuracy is at least
``baseline − budget``. Every ratio tried is reported.

Example:
    >>> from hf_backdoor_defense.purification import FinePurifying, ratio_search
    >>> # search = ratio_search(FinePurifying(), suspect, pretrained, clean_train, dev, budget=0.02,
    >>> #                       ratios=[0.1, 0.3, 0.5, 0.7, 0.9], tokenizer=tokenizer)
    >>> # search.ratio, search.table, search.result.model
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .base import PurificationResult, Purifier, check_ratio
from .hessian import check_clean_dataset

__all__ = ["DEFAULT_RATIOS", "RatioSearchResult", "dev_accuracy", "ratio_search"]

DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""The ratios tried when none are given."""


@dataclass
class RatioSearchResult:
    """Outcome of :func:`ratio_search`.

    Args:
        ratio: The chosen ratio (the most aggressive inside the budget; the least aggressive tried if none is).
        within_budget: Whether the chosen ratio met the budget.
        baseline_accuracy: The suspect's dev accuracy.
        table: One row per ratio: ``ratio``, ``dev_accuracy`` (after the fine-tune), ``delta_acc``,
            ``within_budget``, ``dims_reset_total``, ``seconds``.
        result: The purified and fine-tuned model of the chosen ratio, with its purification report.
    """

    ratio: float
    within_budget: bool
    baseline_accuracy: float
    table: list[dict[str, Any]] = field(default_factory=list)
    result: PurificationResult | None = None


def dev_accuracy(model: nn.Module, tokenizer: Any, dev: Any, *, batch_size: int = 32, max_length: int = 128) -> float:
    """Clean accuracy on ``dev`` (columns ``text``, ``label``) via :mod:`hf_backdoor_defense.metrics`."""
    from ..metrics import clean_accuracy, predict

    preds = predict(model, tokenizer, dev, batch_size=batch_size, max_length=max_length,
                    desc="Dev accuracy", disable_progress_bar=True)
    return float(clean_accuracy(preds, dev["label"]))


def ratio_search(
    purifier: Purifier,
    suspect: nn.Module,
    reference: nn.Module | None,
    clean_train: Any,
    dev: Any,
    budget: float,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    tokenizer: Any,
    finetune: Any = None,
    keep_models: bool = False,
) -> RatioSearchResult:
    """Try every ratio, fine-tune each purified model on ``clean_train``, choose by dev accuracy.

    Args:
        purifier: Any purifier with a ``ratio`` (or a composition whose last ratio-bearing step is searched).
        suspect: The fine-tuned model (or ``PeftModel``); not modified.
        reference: The pre-trained model (``None`` for adapters); not modified.
        clean_train: Clean training set, used for the Hessian (Fine-purifying) and the fine-tune.
        dev: Clean dev set with ``text`` and ``label``; never the test split.
        budget: Allowed clean-accuracy drop ΔACC, a fraction (0.02 = two points).
        ratios: Ratios to try, each in [0, 1].
        tokenizer: The suspect's tokenizer.
        finetune: :class:`~hf_backdoor_defense.trainers.purification.PurificationTrainingArguments`
            (``None``: its defaults; ``num_train_epochs=0`` skips the fine-tune).
        keep_models: Keep every candidate model in memory (``table`` rows get ``model``); default keeps only
            the best so far.
    """
    from ..trainers.purification import PurificationTrainingArguments, finetune_clean

    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"`budget` must be a fraction in [0, 1] (0.02 = two accuracy points), got {budget}.")
    if not ratios:
        raise ValueError("`ratios`: give at least one ratio to try.")
    ratios = sorted({check_ratio(r, "ratios") for r in ratios})
    check_clean_dataset(clean_train, "clean_train")
    check_clean_dataset(dev, "dev")
    args = finetune if finetune is not None else PurificationTrainingArguments()
    baseline = dev_accuracy(suspect, tokenizer, dev, max_length=args.max_length)
    table: list[dict[str, Any]] = []
    best: tuple[float, PurificationResult] | None = None
    fallback: tuple[float, PurificationResult] | None = None
    for ratio in ratios:
        start = time.perf_counter()
        result = purifier.with_ratio(ratio).purify(suspect, reference, clean_train, tokenizer=tokenizer)
        finetune_clean(result.model, clean_train, tokenizer, copy.copy(args))
        acc = dev_accuracy(result.model, tokenizer, dev, max_length=args.max_length)
        ok = acc >= baseline - budget - 1e-12
        row = {
            "ratio": ratio,
            "dev_accuracy": acc,
            "delta_acc": baseline - acc,
            "within_budget": ok,
            "dims_reset_total": result.report.get("dims_reset_total"),
            "seconds": round(time.perf_counter() - start, 3),
        }
        if keep_models:
            row["model"] = result.model
        table.append(row)
        if ok:
            best = (ratio, result)  # ratios ascend: the last one inside the budget is the most aggressive
        elif fallback is None:
            fallback = (ratio, result)
        del result
    chosen = best or fallback
    assert chosen is not None
    chosen[1].report["ratio_search"] = {"baseline_accuracy": baseline, "budget": budget,
                                        "table": [{k: v for k, v in r.items() if k != "model"} for r in table]}
    return RatioSearchResult(ratio=chosen[0], within_budget=best is not None, baseline_accuracy=baseline,
                             table=table, result=chosen[1])
