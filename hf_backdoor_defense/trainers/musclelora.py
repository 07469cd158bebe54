"""The MuScleLoRA trainer and its arguments (kept importable from here; they live in
:mod:`.musclelora_config` and :mod:`.musclelora_trainer`)."""

from __future__ import annotations

from .musclelora_config import ALIGNMENT_PRESETS, GradientAlignmentArguments, MuScleLoRATrainingArguments  # noqa: F401
from .musclelora_trainer import GradientAlignmentMixin, MuScleLoRATrainer  # noqa: F401

__all__ = [
    "ALIGNMENT_PRESETS",
    "GradientAlignmentArguments",
    "GradientAlignmentMixin",
    "MuScleLoRATrainer",
    "MuScleLoRATrainingArguments",
]
