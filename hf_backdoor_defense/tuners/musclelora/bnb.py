"""MuScleLoRA on bitsandbytes ``Linear8bitLt`` and ``Linear4bit`` (QLoRA-style training).

The quantized base stays frozen; the adapter factors live in full precision. Merging dequantizes,
adds the delta and re-quantizes (rounding makes merged outputs differ slightly, as for LoRA).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.integrations import dequantize_bnb_weight

from .layer import MuScleLoRALayer

try:
    import bitsandbytes as bnb
except ImportError:  # pragma: no cover - bitsandbytes is optional
    bnb = None


class _QuantizedMixin(MuScleLoRALayer):
    def _init_quantized(self, base_layer, adapter_name: str, **kwargs: Any) -> None:
        MuScleLoRALayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            scales=kwargs["scales"],
            rank=kwargs["rank"],
            alpha=kwargs["alpha"],
            dropout=kwargs.get("dropout", 0.0),
            init_weights=kwargs.get("init_weights", True),
        )

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        return self._delta_weight_out_in(adapter)

    def _dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def _requantize(self, weight: torch.Tensor) -> None:
        raise NotImplementedError

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge into the quantized base (dequantize, add, re-quantize)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for adapter in adapter_names:
            if adapter not in self.musclelora_A:
                continue
            warnings.warn("Merging MuScleLoRA into a quantized layer may change outputs slightly (rounding).", stacklevel=2)
            output = self._dequantized()
            w_data = output + self.get_delta_weight(adapter).to(output.dtype)
            if safe_merge and not torch.isfinite(w_data).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            self._requantize(w_data)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract merged deltas from the quantized base."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter not in self.musclelora_A:
                continue
            output = self._dequantized()
            self._requantize(output - self.get_delta_weight(adapter).to(output.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._forward_with_adapters(x, args, kwargs, quantized=True)

    def __repr__(self) -> str:
        return "musclelora." + super().__repr__()


if bnb is not None:

    class Linear8bitLt(torch.nn.Module, _QuantizedMixin):
        """MuScleLoRA on a bitsandbytes 8-bit linear layer."""

        def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs: Any) -> None:
            super().__init__()
            self._init_quantized(base_layer, adapter_name, **kwargs)

        # nn.Module comes first in the MRO (as in PEFT), so pick the mixin's versions explicitly
        forward = _QuantizedMixin.forward
        __repr__ = _QuantizedMixin.__repr__

        def _dequantized(self) -> torch.Tensor:
            weight = self.get_base_layer().weight
            state = self.get_base_layer().state
            if state.SCB is None:
                state.SCB = weight.SCB
            return dequantize_bnb_weight(weight, state=state)

        def _requantize(self, w_data: torch.Tensor) -> None:
            weight = self.get_base_layer().weight
            self.get_base_layer().weight = bnb.nn.Int8Params(
                w_data.to("cpu"), requires_grad=False, has_fp16_weights=weight.has_fp16_weights
            ).to(weight.device)
            self.get_base_layer().state.reset_grads()

    class Linear4bit(torch.nn.Module, _QuantizedMixin):
        """MuScleLoRA on a bitsandbytes 4-bit (nf4/fp4) linear layer."""

        def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs: Any) -> None:
            super().__init__()
            self._init_quantized(base_layer, adapter_name, **kwargs)

        # nn.Module comes first in the MRO (as in PEFT), so pick the mixin's versions explicitly
        forward = _QuantizedMixin.forward
        __repr__ = _QuantizedMixin.__repr__

        def _dequantized(self) -> torch.Tensor:
            weight = self.get_base_layer().weight
            return dequantize_bnb_weight(weight, state=weight.quant_state)

        def _requantize(self, w_data: torch.Tensor) -> None:
            weight = self.get_base_layer().weight
            kwargs = {k: v for k, v in weight.__dict__.items() if not k.startswith("_")}
            if "bnb_quantized" in kwargs:
                kwargs["bnb_quantized"] = False
            kwargs["requires_grad"] = False
            kwargs.pop("data", None)
            self.get_base_layer().weight = bnb.nn.Params4bit(w_data.to("cpu"), **kwargs).to(weight.device)


def _base(target: torch.nn.Module) -> torch.nn.Module:
    return target.get_base_layer() if isinstance(target, BaseTunerLayer) else target


def dispatch_bnb_8bit(target: torch.nn.Module, adapter_name: str, **kwargs: Any) -> torch.nn.Module | None:
    """Wrap a bitsandbytes ``Linear8bitLt`` target."""
    if bnb is None or not isinstance(_base(target), bnb.nn.Linear8bitLt):
        return None
    return Linear8bitLt(target, adapter_name, **kwargs)


def dispatch_bnb_4bit(target: torch.nn.Module, adapter_name: str, **kwargs: Any) -> torch.nn.Module | None:
    """Wrap a bitsandbytes ``Linear4bit`` target."""
    if bnb is None or not isinstance(_base(target), bnb.nn.Linear4bit):
        return None
    return Linear4bit(target, adapter_name, **kwargs)
