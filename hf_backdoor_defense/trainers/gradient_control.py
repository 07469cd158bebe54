"""The Gradient Control trainer and its arguments (kept importable from here; they live in
:mod:`hf_backdoor_defense.attacks.gradient_control_config` and :mod:`hf_backdoor_defense.attacks.gradient_control_trainer`)."""

from __future__ import annotations

from ..attacks.gradient_control_config import (  # noqa: F401
    BETA_SCHEDULES,
    ILPROJ_MODES,
    STATE_FILE,
    GradientControlTrainingArguments,
)
from ..attacks.gradient_control_trainer import (  # noqa: F401
    BACKDOOR_NOTICE,
    GradientControlTrainer,
    beta_schedule_values,
    clnorm_targets,
    clnorm_update,
    ilproj,
)

_BETA_SCHEDULES, _ILPROJ_MODES = BETA_SCHEDULES, ILPROJ_MODES  # their names before they became public

__all__ = [
    "BACKDOOR_NOTICE",
    "BETA_SCHEDULES",
    "ILPROJ_MODES",
    "STATE_FILE",
    "beta_schedule_values",
    "clnorm_targets",
    "clnorm_update",
    "ilproj",
    "GradientControlTrainer",
    "GradientControlTrainingArguments",
]
