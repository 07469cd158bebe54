"""The W2SDefense trainer and its arguments (kept importable from here; they live in :mod:`.w2sdefense_config`
and :mod:`.w2sdefense_trainer`)."""

from __future__ import annotations

from .w2sdefense_config import (  # noqa: F401
    FEATURE_ALIGNMENTS,
    FEATURE_DISTANCES,
    TEACHER_PREFIX,
    W2S_PRESETS,
    W2SDefenseTrainingArguments,
    authors_arguments,
)
from .w2sdefense_trainer import W2SDataCollator, W2SDefenseTrainer, last_token_pool, w2s_loss  # noqa: F401

__all__ = [
    "FEATURE_ALIGNMENTS",
    "FEATURE_DISTANCES",
    "TEACHER_PREFIX",
    "W2S_PRESETS",
    "authors_arguments",
    "last_token_pool",
    "w2s_loss",
    "W2SDataCollator",
    "W2SDefenseTrainer",
    "W2SDefenseTrainingArguments",
]
