"""Fine-purifying: reset the dimensions that moved far although the clean loss is flat along them.

From "Diffusion Theory as a Scalpel: Detecting and Purifying Poisonous Dimensions in Pre-trained Language
Models Caused by Backdoor or Bias" (Findings of ACL 2023): ``r_i = δ_i² / (H_ii + ε)`` with
``δ = θ_B − θ₀`` and ``H`` the diagonal of the clean-loss Hessian; the ``ratio`` fraction with the largest
``r_i`` is reset to ``θ₀``, then the model is fine-tuned on the clean set.

Choices this implementation makes, each an option:

* The ratio counts the dimensions that moved (``ratio_of="moved"``); ``"all"`` counts every ranked dimension.
* The word embeddings are not ranked (``embeddings="exclude"``): a row of a token absent from the clean set
  has ``H = 0`` and, if it moved, a score of ``δ²/ε`` that puts it ahead of everything else, so ranking the
  embeddings spends the budget on rows the clean set says nothing about. E-PUR ranks those rows by their
  frequency instead; ``compose(EmbeddingPurification(...), FinePurifying(...))`` does both. Any other
  dimension the clean set never exercises (``H = 0``) is ranked that way on purpose: it moved, and the clean
  loss does not need it.
* ``H`` is the per-example empirical Fisher (``estimator="example"``), the mean of squared per-example
  gradients that the diffusion argument is about; ``"batch"`` squares batch means (faster, but adds the squared
  mean gradient, which dominates when the suspect fits the clean set poorly).
* ``alpha`` generalises the score to ``δ² / (H + ε)^α``: the paper's rule is ``α = 1``; a smaller ``α`` leans
  on the drift. It exists for suspects trained with Adam, which moves every weight by about one learning rate
  per step whatever its curvature, so that ``δ²`` alone carries little signal and ``1/H`` decides the ranking.

Example:
    >>> from hf_backdoor_defense.purification import FinePurifying
    >>> purifier = FinePurifying(ratio=0.3, scope="global", estimator="example", batch_size=8)
    >>> # result = purifier.purify(suspect, pretrained, clean_dataset, tokenizer=tokenizer)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..options import EMBEDDING_MODES, ESTIMATORS, HEAD_MODES, RATIO_BASES, SCOPES, check_choice
from .base import (
    ParameterPlan,
    Purifier,
    apply_masks,
    check_ratio,
    input_embedding_names,
    reset_report,
    select_top,
)
from .hessian import check_clean_dataset, empirical_fisher

__all__ = ["FinePurifying"]



@dataclass
class FinePurifying(Purifier):
    """Diffusion-theory purification with an empirical-Fisher diagonal Hessian.

    Args:
        ratio: Fraction of the ranked dimensions reset to the reference (largest ``r_i`` first), in [0, 1].
        ratio_of: ``"moved"`` (the ratio counts the ranked dimensions with ``δ ≠ 0``) or ``"all"``.
        embeddings: ``"exclude"`` (the input embeddings are not ranked; see the module docstring) or
            ``"include"``.
        alpha: Exponent of the curvature in ``δ² / (H + ε)^α`` (1: the paper; 0: drift alone).
        scope: ``"global"`` ranks all tensors together; ``"per_tensor"`` resets ``ratio`` of each tensor.
        estimator: ``"example"`` squares each example's gradient (one backward per example, the empirical
            Fisher of the theory); ``"batch"`` squares the mean gradient of each batch (faster).
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
    ratio_of: str = field(default="moved", metadata={"help": "The ratio counts the dimensions that 'moved' or 'all'."})
    embeddings: str = field(default="exclude", metadata={"help": "'exclude' or 'include' the input embeddings."})
    alpha: float = field(default=1.0, metadata={"help": "Exponent of H + eps in the score (1: the paper)."})
    scope: str = field(default="global", metadata={"help": "'global' or 'per_tensor' ranking."})
    estimator: str = field(default="example", metadata={"help": "Empirical Fisher from per-'example' or per-'batch' gradients."})
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
        check_choice(self.ratio_of, "ratio_of", RATIO_BASES)
        check_choice(self.embeddings, "embeddings", EMBEDDING_MODES)
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ValueError(f"`alpha` must be a number >= 0 (1 is the paper's score), got {self.alpha!r}.")
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
        excluded = input_embedding_names(plan) if self.embeddings == "exclude" else []
        names = [n for n in names if n not in excluded]
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
        moved = {}
        for n, buf in scores.items():  # in place: the Hessian buffer becomes the score buffer
            delta_sq = plan.delta(n)
            moved[n] = delta_sq != 0
            delta_sq.pow_(2)
            buf.add_(eps)
            if self.alpha != 1:
                buf.pow_(self.alpha)
            torch.div(delta_sq, buf, out=buf)
            del delta_sq
        dims_moved = sum(int(m.sum()) for m in moved.values())
        masks = select_top(scores, self.ratio, self.scope, moved if self.ratio_of == "moved" else None)
        del scores, moved
        t2 = time.perf_counter()
        model, counts = apply_masks(plan, masks, self.head)
        param_bytes = sum(plan.suspect_params[n].numel() * plan.suspect_params[n].element_size() for n in names)
        timings = {"hessian_s": round(t1 - t0, 4), "score_s": round(t2 - t1, 4),
                   "apply_s": round(time.perf_counter() - t2, 4)}
        return model, reset_report(
            self, plan, counts, dims_total=total, dims_moved=dims_moved, timings=timings, excluded=excluded,
            hessian={"mean": mean_h, "epsilon_abs": eps, "buffer_bytes": hessian_bytes,
                     "ranked_param_bytes": param_bytes})
