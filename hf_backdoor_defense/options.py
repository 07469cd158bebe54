"""The values of the library's choice-valued options, declared once and light to import (no torch), so that
argument classes, the experiment engine and the command line validate a choice without loading a model
library.

Example:
    >>> from hf_backdoor_defense.options import SCOPES, check_choice
    >>> check_choice("global", "scope", SCOPES)
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------ purifiers
HEAD_MODES = ("keep", "reinit", "purify")
"""What a purifier does with the task head (no pre-trained value): keep the suspect's, re-initialise it, or
purify it like the body."""
SCOPES = ("global", "per_tensor")
"""Rank the dimensions of all tensors together, or each tensor on its own."""
RATIO_BASES = ("moved", "all")
"""What a ``ratio`` is a fraction of: the ranked dimensions that fine-tuning changed (``δ ≠ 0``), or all of them.
Resetting a dimension that never moved changes nothing, and fine-tuning leaves many unchanged (the embedding
rows of tokens it never saw, without weight decay), so ``"all"`` makes the same ratio mean less and less the
more of the model stayed put."""
MASKS = ("random", "magnitude")
"""Fine-mixing's mask: seeded random dimensions (the paper's main method), or those that moved least."""
ESTIMATORS = ("batch", "example")
"""Fine-purifying's empirical Fisher: squared batch-mean gradients, or squared per-example gradients."""
EMBEDDING_MODES = ("exclude", "include")
"""Fine-purifying: leave the word embeddings out of the ranking, or rank them with the rest."""

# ------------------------------------------------------------------------------------------ MuScleLoRA
GATES = ("tensor", "global")
"""Where gradient alignment decides that the reference gradient vanished: per tensor, or on the mean norm over
every trainable tensor (the authors' code)."""

# ------------------------------------------------------------------------------------------ W2SDefense
FEATURE_DISTANCES = ("squared_l2", "cosine")
FEATURE_ALIGNMENTS = ("per_example", "authors")
"""How student features meet the teacher's: each example with its own teacher vector, or every student token
with the batch's last teacher vector (as the authors' code does)."""

# ------------------------------------------------------------------------------------------ encoders
POOLING_MODES: dict[str, str] = {
    "cls": "[CLS] through the checkpoint's pooler (pooler frozen for adapters, body for the purifiers)",
    "pooler_head": "[CLS] through the pooler, the pooler trained and kept as part of the task head",
    "mean": "masked mean over the tokens, then the classifier (no pooler)",
}


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> None:
    """A ``ValueError`` naming the option ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def check_pooling(pooling: str, field: str = "pooling") -> str:
    """``pooling`` if it is one of :data:`POOLING_MODES`, else a ``ValueError`` naming ``field``."""
    if pooling not in POOLING_MODES:
        raise ValueError(f"`{field}` must be one of {list(POOLING_MODES)}, got {pooling!r}: "
                         + "; ".join(f"{k}: {v}" for k, v in POOLING_MODES.items()) + ".")
    return pooling
