"""MuScleLoRA as a PEFT adapter type.

Importing this package (or ``hf_backdoor_defense``) adds ``MUSCLELORA`` to ``peft.PeftType`` and
registers the config and model classes with PEFT, so ``get_peft_model`` and
``PeftModel.from_pretrained`` handle MuScleLoRA adapters like built-in ones.

Example:
    >>> import hf_backdoor_defense
    >>> from peft import PeftType
    >>> PeftType("MUSCLELORA") is PeftType.MUSCLELORA
    True
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method
from peft.utils.peft_types import PeftType

from .config import (
    MUSCLELORA_ARCHITECTURE_DEFAULTS,
    TRANSFORMERS_MODELS_TO_MUSCLELORA_TARGET_MODULES_MAPPING,
    MuScleLoRAConfig,
)
from .layer import Linear, MuScleLoRALayer
from .model import MuScleLoRAModel, multiscale_parameters

__all__ = [
    "MUSCLELORA_ARCHITECTURE_DEFAULTS",
    "TRANSFORMERS_MODELS_TO_MUSCLELORA_TARGET_MODULES_MAPPING",
    "Linear",
    "MuScleLoRAConfig",
    "MuScleLoRALayer",
    "MuScleLoRAModel",
    "multiscale_parameters",
]

if PEFT_TYPE_TO_CONFIG_MAPPING.get(PeftType.MUSCLELORA) is not MuScleLoRAConfig:
    if PeftType.MUSCLELORA not in PEFT_TYPE_TO_CONFIG_MAPPING:
        register_peft_method(name="musclelora", config_cls=MuScleLoRAConfig, model_cls=MuScleLoRAModel)


def __getattr__(name: str):
    if name in ("Linear8bitLt", "Linear4bit"):
        from . import bnb

        return getattr(bnb, name)
    raise AttributeError(f"module {__name__} has no attribute {name}")
