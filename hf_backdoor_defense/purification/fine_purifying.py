"""Fine-purifying: reset the dimensions that moved far although the clean loss is flat along them.

From "Diffusion Theory as a Scalpel: Detecting and Purifying Poisonous Dimensions in Pre-trained Language
Models Caused by Backdoor or Bias" (Findings of ACL 2023): ``r_i = δ_i² / (H_ii + ε)`` with
``δ = θ_B − θ₀`` and ``H`` the diagonal of the clean-loss Hessian; the ``ratio`` fraction with the largest
``r_i`` is reset to ``θ₀``, then the model is fine-tuned on the clean set.

Example:
    >>> from hf_backdoor_defense.purification import FinePurifying
    >>> purifier = FinePurifying(ratio=0.3, scope="global", estimator="batch", batch_size=8)
    >>> # result = purifier.purify(suspect, pretrained, clean_dataset, tokenizer=tokenizer)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import (
    HEAD_MODES,
    SCOPES,
    ParameterPlan,
    Purifier,
    apply_masks,
    check_choice,
    check_ratio,
    head_report,
    select_top,
)
from .hessian import check_clean_dataset, empirical_fisher

__all__ = ["FinePurifying"]

ESTIMATORS = ("batch", "example")


@dataclass
class FinePurifying(Purifier):
    """Diffusion-theory purification with an empirical-Fisher diagonal Hessian.

    Args:
        ratio: Fraction of the ranked dimensions reset to the reference (largest ``r_i`` first), in [0, 1].
        scope: ``"global"`` ranks all tensors together; ``"per_tensor"`` resets ``ratio`` of each tensor.
        estimator: ``"batch"`` squares the mean gradient of each batch; ``"example"`` squares each
            example's gradient (one backward per example: slower, the textbook empirical Fisher).
        epsilon: Added to ``H_ii``, in units of the mean of ``H`` over the ranked dimensions (scale-free;
            ``ε_abs = epsilon · mean(H)``).
        batch_size: Examples per batch of the Hessian estimate.
        max_batches: Use at most this many batches (``None``: the whole clean set).
        max_length: Truncation length when tokenising a text dataset.
        text_column: Text column of a text dataset.
        head: Head parameters: ``"keep"`` (default), ``"reinit"`` or ``"purify"``.
        head_names: Extra name substrings marking head parameters.
        show_progress: Show a progress bar during the Hessian estimate.
    """

    ratio: float = field(default=0.5, metadata={"help": "Fraction of dimensions with the largest r_i reset to the pre-trained value."})
    scope: str = field(default="global", metadata={"help": "'global' or 'per_tensor' ranking."})
    estimator: str = field(default="batch", metadata={"help": "Empirical Fisher from per-'batch' or per-'example' gradients."})
    epsilon: float = field(default=1e-3, metadata={"help": "Damping added to H_ii, relative to mean(H)."})
    batch_size: int = field(default=8, metadata={"help": "Batch size of the Hessian estimate."})
    max_batches: int | None = field(default=None, metadata={"help": "At most this many batches (None: all)."})
    max_length: int = field(default=128, metadata={"help": "Truncation length for text data."})
    text_column: str = field(default="text", metadata={"help": "Text column of a text dataset."})
    head: str = field(default="keep", metadata={"help": "Head treatment: 'keep', 'reinit' or 'purify'."})
    head_names: tuple[str, ...] = field(default=(), metadata={"help": "Extra name substrings marking head parameters."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bar for the Hessian estimate."})

    method = "fine-purifying"

    def __post_init__(self) -> None:
        self.ratio = check_ratio(self.ratio)
        check_choice(self.scope, "scope", SCOPES)
        check_choice(self.estimator, "estimator", ESTIMATORS)
        check_choice(self.head, "head", HEAD_MODES)
        if not self.epsilon >= 0:
            raise ValueError(f"`epsilon` must be >= 0, got {self.epsilon}.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}.")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"`max_batches` must be >= 1 or None, got {self.max_batches}.")
        self.head_names = tuple(self.head_names)

    def _purify(self, plan: ParameterPlan, clean_dataset: Any, tokenizer: Any) -> tuple[torch.nn.Module, dict]:
        check_clean_dataset(clean_dataset)
        names = plan.body + [n for n in plan.head if self.head == "purify" and plan.reference_value(n) is not None]
        t0 = time.perf_counter()
        scores = empirical_fisher(
            plan._owner, names, clean_dataset, tokenizer,  # type: ignore[attr-defined]
            batch_size=self.batch_size, max_batches=self.max_batches, per_example=self.estimator == "example",
            max_length=self.max_length, text_column=self.text_column, show_progress=self.show_progress,
        )
        t1 = time.perf_counter()
        total = sum(s.numel() for s in scores.values())
        mean_h = sum(float(s.sum(dtype=torch.float64)) for s in scores.values()) / max(total, 1)
        eps = self.epsilon * mean_h if mean_h > 0 else max(self.epsilon, 1e-30)
        hessian_bytes = sum(s.numel() * s.element_size() for s in scores.values())
        for n, buf in scores.items():  # in place: the Hessian buffer becomes the score buffer
            delta_sq = plan.delta(n).pow_(2)
            buf.add_(eps)
            torch.div(delta_sq, buf, out=buf)
            del delta_sq
        masks = select_top(scores, self.ratio, self.scope)
        del scores
        t2 = time.perf_counter()
        model, counts = apply_masks(plan, masks, self.head)
        param_bytes = sum(plan.suspect_params[n].numel() * plan.suspect_params[n].element_size() for n in names)
        report = {
            "ratio": self.ratio,
            "config": self.config_dict(),
            "dims_reset": counts,
            "dims_reset_total": sum(counts.values()),
            "dims_total": total,
            "tokens_reset": [],
            "head": head_report(plan, self.head),
            "hessian": {"mean": mean_h, "epsilon_abs": eps, "buffer_bytes": hessian_bytes, "ranked_param_bytes": param_bytes},
            "timings": {
                "hessian_s": round(t1 - t0, 4),
                "score_s": round(t2 - t1, 4),
                "apply_s": round(time.perf_counter() - t2, 4),
            },
        }
        return model, report
