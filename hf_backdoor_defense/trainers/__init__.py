"""The package's ``transformers.Trainer`` subclasses and their ``TrainingArguments``.

Each loads on first access (``from hf_backdoor_defense.trainers import MuScleLoRATrainer``), so importing
this package stays cheap.

Example:
    >>> from hf_backdoor_defense.trainers import MuScleLoRATrainer, MuScleLoRATrainingArguments  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MuScleLoRATrainer": "musclelora",
    "MuScleLoRATrainingArguments": "musclelora",
    "MuScleLoRASFTTrainer": "musclelora_sft",
    "MuScleLoRASFTConfig": "musclelora_sft",
    "W2SDefenseTrainer": "w2sdefense",
    "W2SDefenseTrainingArguments": "w2sdefense",
    "W2SDataCollator": "w2sdefense",
    "W2STeacher": "teacher",
    "W2STeacherConfig": "teacher",
    "train_teacher": "teacher",
    "GradientControlTrainer": "gradient_control",
    "GradientControlTrainingArguments": "gradient_control",
    "PurificationTrainer": "purification",
    "PurificationTrainingArguments": "purification",
    "finetune_clean": "purification",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_backdoor_defense.trainers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
