"""Fine-mixing: mix the fine-tuned weights with the pre-trained ones, then fine-tune on clean data.

From "Fine-mixing: Mitigating Backdoors in Fine-tuned Language Models" (Findings of EMNLP 2022):
``θ_mix = θ₀ + m ⊙ (θ_B − θ₀)``. Here ``ratio`` is the fraction of dimensions **reset** to ``θ₀``
(``1 − ρ`` in the paper's notation, where ρ is the fraction kept), so that a larger ratio is always the
more aggressive purification, for every purifier of this package.

Example:
    >>> from hf_backdoor_defense.purification import FineMixing
    >>> purifier = FineMixing(ratio=0.5, mask="random", seed=0)
    >>> # result = purifier.purify(suspect, pretrained)
    >>> # result.model is the mixed model; fine-tune it on the clean set afterwards
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..options import HEAD_MODES, MASKS, RATIO_BASES, SCOPES, check_choice
from .base import (
    ParameterPlan,
    Purifier,
    apply_masks,
    check_ratio,
    moved_masks,
    reset_report,
    select_top,
)

__all__ = ["FineMixing"]



@dataclass
class FineMixing(Purifier):
    """Reset a fraction of the fine-tuned dimensions to their pre-trained values.

    Args:
        ratio: Fraction of the ranked dimensions reset to the reference, in [0, 1] (paper: 1 − ρ).
        ratio_of: ``"moved"`` (the ratio counts the dimensions with ``δ ≠ 0``: resetting the others changes
            nothing) or ``"all"``. A random mask resets the same weights either way; only the count it
            reports differs. A magnitude mask ranks only the moved dimensions with ``"moved"``.
        mask: ``"random"`` (the paper's main method: a seeded Bernoulli(ratio) mask) or ``"magnitude"``
            (the selective variant: keep the ``1 − ratio`` dimensions with the largest ``|θ_B − θ₀|``,
            reset the rest).
        scope: ``"global"`` ranks all tensors together, ``"per_tensor"`` resets ``ratio`` of each tensor
            (``"magnitude"`` only; a random mask is the same either way).
        head: Head parameters (no pre-trained value): ``"keep"`` (default), ``"reinit"`` (take the
            reference's freshly initialised head) or ``"purify"`` (mix them like the rest, against the
            reference's random head).
        head_names: Extra name substrings to treat as head parameters.
        seed: Seed of the random mask.
    """

    ratio: float = field(default=0.5, metadata={"help": "Fraction of dimensions reset to the pre-trained value (paper: 1 - rho)."})
    ratio_of: str = field(default="moved", metadata={"help": "The ratio counts the dimensions that 'moved' or 'all'."})
    mask: str = field(default="random", metadata={"help": "'random' (seeded) or 'magnitude' (keep the largest |delta|)."})
    scope: str = field(default="global", metadata={"help": "'global' or 'per_tensor' ranking (magnitude mask)."})
    head: str = field(default="keep", metadata={"help": "Head treatment: 'keep', 'reinit' or 'purify'."})
    head_names: tuple[str, ...] = field(default=(), metadata={"help": "Extra name substrings marking head parameters."})
    seed: int = field(default=0, metadata={"help": "Seed of the random mask."})

    method = "fine-mixing"

    def __post_init__(self) -> None:
        self.ratio = check_ratio(self.ratio)
        check_choice(self.mask, "mask", MASKS)
        check_choice(self.ratio_of, "ratio_of", RATIO_BASES)
        check_choice(self.scope, "scope", SCOPES)
        check_choice(self.head, "head", HEAD_MODES)
        self.head_names = tuple(self.head_names)

    def _purify(self, plan: ParameterPlan, clean_dataset: Any, tokenizer: Any) -> tuple[torch.nn.Module, dict]:
        t0 = time.perf_counter()
        names = plan.body + (plan.head if self.head == "purify" else [])
        names = [n for n in names if n in plan.body or plan.reference_value(n) is not None]
        if self.mask == "random":
            moved = moved_masks(plan, names)
            gen = torch.Generator().manual_seed(self.seed)
            masks = {n: torch.rand(plan.suspect_params[n].shape, generator=gen) < self.ratio for n in names}
            if self.ratio_of == "moved":
                masks = {n: m & moved[n].to(m.device) for n, m in masks.items()}
        else:
            # Reset the dimensions that moved least: rank by -|delta| (largest = smallest move).
            scores = {n: plan.delta(n).abs_().neg_() for n in names}
            moved = {n: s != 0 for n, s in scores.items()}  # the same pass gives what moved
            masks = select_top(scores, self.ratio, self.scope, moved if self.ratio_of == "moved" else None)
            del scores
        dims_moved = sum(int(m.sum()) for m in moved.values())
        del moved
        t1 = time.perf_counter()
        model, counts = apply_masks(plan, masks, self.head)
        total = sum(plan.suspect_params[n].numel() for n in names)
        return model, reset_report(self, plan, counts, dims_total=total, dims_moved=dims_moved,
                                   timings={"score_s": round(t1 - t0, 4),
                                            "apply_s": round(time.perf_counter() - t1, 4)})
