"""PEFT adapter types provided by hf-backdoor-defense (importing registers them with PEFT)."""

from .musclelora import MuScleLoRAConfig, MuScleLoRALayer, MuScleLoRAModel

__all__ = ["MuScleLoRAConfig", "MuScleLoRALayer", "MuScleLoRAModel"]
