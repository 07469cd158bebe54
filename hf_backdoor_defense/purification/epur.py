"""E-PUR: reset the embeddings of tokens that drifted far more than their frequency explains.

From "Fine-mixing: Mitigating Backdoors in Fine-tuned Language Models" (Findings of EMNLP 2022): trigger
words are rare in clean text yet their embeddings move a lot during poisoned fine-tuning. For every
vocabulary token ``w``: drift ``d_w = ||e_w(θ_B) − e_w(θ₀)||``, frequency ``f_w`` in the clean text,
score ``d_w / g(f_w)`` with ``g`` increasing; the ``num_tokens`` top-scored rows are reset to ``θ₀``.

Example:
    >>> from hf_backdoor_defense.purification import EmbeddingPurification
    >>> epur = EmbeddingPurification(num_tokens=50)
    >>> # result = epur.purify(suspect, pretrained, clean_dataset, tokenizer=tokenizer)
    >>> # result.report["tokens_reset"][0] -> {"token_id": ..., "token": "cf", "drift": ..., ...}
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..options import HEAD_MODES, check_choice
from .base import ParameterPlan, Purifier, apply_masks, head_report
from .hessian import check_clean_dataset

__all__ = ["EmbeddingPurification", "log_frequency_weight", "token_frequencies"]


def log_frequency_weight(frequency: torch.Tensor) -> torch.Tensor:
    """Default ``g(f) = log(1 + f) + 1``: 1 for an unseen token, growing slowly with its count."""
    return torch.log1p(frequency.float()) + 1.0


def token_frequencies(dataset: Any, tokenizer: Any, vocab_size: int, *, text_column: str = "text") -> torch.Tensor:
    """Count of each token id when the clean texts are tokenised (with special tokens, no truncation)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    if "input_ids" in dataset.column_names:
        rows = dataset["input_ids"]
    else:
        if tokenizer is None or text_column not in dataset.column_names:
            raise ValueError("`tokenizer`: E-PUR needs the suspect's tokenizer to count token frequencies in the clean text.")
        rows = tokenizer(list(dataset[text_column]), add_special_tokens=True)["input_ids"]
    for ids in rows:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        counts += np.bincount(ids, minlength=vocab_size)
    return torch.from_numpy(counts)


@dataclass
class EmbeddingPurification(Purifier):
    """E-PUR: reset the input-embedding rows of the top-N tokens by drift relative to frequency.

    Args:
        num_tokens: How many token rows to reset (the paper's top-N).
        frequency_weight: ``g``, an increasing function of the token counts (a tensor) returning the
            divisor of the drift; default :func:`log_frequency_weight` (``log(1 + f) + 1``).
        text_column: Text column of the clean set.
        head: Head parameters are never touched by E-PUR except with ``"reinit"``.
        head_names: Extra name substrings marking head parameters.
    """

    num_tokens: int = field(default=200, metadata={"help": "Number of embedding rows (tokens) reset to the pre-trained value."})
    frequency_weight: Callable[[torch.Tensor], torch.Tensor] = field(
        default=log_frequency_weight, metadata={"help": "Increasing g(f) dividing the drift; default log(1+f)+1."}
    )
    text_column: str = field(default="text", metadata={"help": "Text column of the clean set."})
    head: str = field(default="keep", metadata={"help": "Head treatment: 'keep' or 'reinit' ('purify' acts as 'keep')."})
    head_names: tuple[str, ...] = field(default=(), metadata={"help": "Extra name substrings marking head parameters."})

    method = "e-pur"

    def __post_init__(self) -> None:
        if not isinstance(self.num_tokens, int) or self.num_tokens < 0:
            raise ValueError(f"`num_tokens` must be a non-negative integer, got {self.num_tokens!r}.")
        if not callable(self.frequency_weight):
            raise ValueError("`frequency_weight` must be callable: g(counts tensor) -> positive tensor.")
        check_choice(self.head, "head", HEAD_MODES)
        self.head_names = tuple(self.head_names)

    def _embedding_name(self, plan: ParameterPlan) -> str:
        owner = plan._owner  # type: ignore[attr-defined]
        if plan.mode != "full":
            raise ValueError(
                "`suspect`: E-PUR resets input-embedding rows, which a PEFT adapter does not change; "
                "use it on full fine-tuned models (or merge the adapter first)."
            )
        weight = owner.get_input_embeddings().weight
        for name, param in plan.suspect_params.items():
            if param is weight:
                if name not in plan.body:
                    raise ValueError(f"`reference`: the input embeddings {name!r} have no reference value.")
                return name
        raise ValueError("`suspect`: could not find the input-embedding parameter.")

    def _purify(self, plan: ParameterPlan, clean_dataset: Any, tokenizer: Any) -> tuple[torch.nn.Module, dict]:
        check_clean_dataset(clean_dataset)
        t0 = time.perf_counter()
        name = self._embedding_name(plan)
        delta = plan.delta(name)
        drift = delta.norm(dim=1)
        del delta
        freq = token_frequencies(clean_dataset, tokenizer, drift.shape[0], text_column=self.text_column)
        weight = self.frequency_weight(freq).to(drift)
        if weight.shape != drift.shape or bool((weight <= 0).any()):
            raise ValueError("`frequency_weight` must return one positive value per vocabulary token.")
        score = drift / weight
        n = min(self.num_tokens, score.numel())
        top = torch.topk(score, n).indices if n else torch.zeros(0, dtype=torch.long)
        mask = torch.zeros(plan.suspect_params[name].shape, dtype=torch.bool)
        mask[top] = True
        t1 = time.perf_counter()
        head = "reinit" if self.head == "reinit" else "keep"
        model, counts = apply_masks(plan, {name: mask}, head)
        tokens = []
        for idx in top.tolist():
            token = tokenizer.convert_ids_to_tokens(idx) if tokenizer is not None else None
            tokens.append(
                {"token_id": idx, "token": token, "drift": float(drift[idx]), "frequency": int(freq[idx]),
                 "score": float(score[idx]) if math.isfinite(float(score[idx])) else None}
            )
        report = {
            "ratio": None,
            "num_tokens": n,
            "config": self.config_dict(),
            "embedding": name,
            "dims_reset": counts,
            "dims_reset_total": sum(counts.values()),
            "dims_total": plan.dims_total,
            "tokens_reset": tokens,
            "head": head_report(plan, head),
            "timings": {"score_s": round(t1 - t0, 4), "apply_s": round(time.perf_counter() - t1, 4)},
        }
        return model, report
