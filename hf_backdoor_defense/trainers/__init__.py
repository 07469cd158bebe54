"""The package's ``transformers.Trainer`` subclasses and their ``TrainingArguments``.

Each loads on first access (``from hf_backdoor_defense.trainers import MuScleLoRATrainer``), so importing
this package stays cheap.

Example:
    >>> from hf_backdoor_defense.trainers import MuScleLoRATrainer, MuScleLoRATrainingArguments  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "MuScleLoRATrainer": ".musclelora_trainer",
    "MuScleLoRATrainingArguments": ".musclelora_config",
    "MuScleLoRASFTTrainer": ".musclelora_sft",
    "MuScleLoRASFTConfig": ".musclelora_sft",
    "W2SDefenseTrainer": ".w2sdefense_trainer",
    "W2SDefenseTrainingArguments": ".w2sdefense_config",
    "W2SDataCollator": ".w2sdefense_trainer",
    "W2STeacher": "..models.teacher",
    "W2STeacherConfig": "..models.teacher",
    "train_teacher": "..models.teacher",
    "GradientControlTrainer": "..attacks.gradient_control_trainer",
    "GradientControlTrainingArguments": "..attacks.gradient_control_config",
    "PurificationTrainer": ".purification",
    "PurificationTrainingArguments": ".purification",
    "finetune_clean": ".purification",
}

__all__ = list(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
