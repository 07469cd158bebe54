"""MuScleLoRA layers: one class serves both parts of the adapter.

The single-branch (LoRA-like) part is the multi-scale layer with ``scales=[1]`` and rank ``r``; the
multi-scale part stacks its branches in one ``A`` (``len(scales) * rank_per_scale x in``) and one
``B`` (``out x len(scales) * rank_per_scale``), so saved keys read ``...musclelora_A.<adapter>.weight``.
The per-branch factors ``k_j`` are not stored in the state dict: they come from the config.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from peft.utils.other import transpose
from torch import nn
from transformers.pytorch_utils import Conv1D


class MuScleLoRALayer(BaseTunerLayer):
    """Shared state and maths of MuScleLoRA layers.

    For adapter ``a`` the layer adds ``scaling[a] * B_a(k_a * A_a(dropout(x)))`` to the base output,
    where ``k_a`` repeats each branch scale ``rank`` times.

    Example:
        >>> import torch
        >>> from hf_backdoor_defense.tuners.musclelora.layer import Linear
        >>> layer = Linear(torch.nn.Linear(8, 4), "default", scales=[1, 2], rank=1, alpha=4)
        >>> layer.musclelora_A["default"].weight.shape
        torch.Size([2, 8])
    """

    adapter_layer_names: tuple[str, ...] = ("musclelora_A", "musclelora_B")
    other_param_names: tuple[str, ...] = ("r", "alpha", "scaling", "branch_scales", "musclelora_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.branch_scales: dict[str, list[float]] = {}
        self.musclelora_A = nn.ModuleDict({})
        self.musclelora_B = nn.ModuleDict({})
        self.musclelora_dropout = nn.ModuleDict({})
        # Frozen base weight/bias of a freshly initialised target (e.g. RoBERTa `classifier.dense`),
        # saved with the adapter because the pre-trained checkpoint does not contain it. Shares storage
        # with the base layer, so loading the adapter restores the base layer too.
        self.musclelora_base_weight = BufferDict({}, persistent=True)
        self.musclelora_base_bias = BufferDict({}, persistent=True)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs

        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            in_features, out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            in_features, out_features = base.weight.ds_shape if hasattr(base.weight, "ds_shape") else base.weight.shape
        elif hasattr(base, "in_features") and hasattr(base, "out_features"):  # bitsandbytes layers
            in_features, out_features = base.in_features, base.out_features
        else:
            raise ValueError(f"MuScleLoRA does not support layers of type {type(base).__name__}.")
        self.in_features = in_features
        self.out_features = out_features

    def update_layer(
        self,
        adapter_name: str,
        *,
        scales: Sequence[float],
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        init_weights: bool | str = True,
        save_base_weights: bool = False,
        inference_mode: bool = False,
    ) -> None:
        """Create (or replace) the factors of ``adapter_name`` on this layer."""
        if rank <= 0:
            raise ValueError(f"`rank` must be positive, got {rank}.")
        if not scales:
            raise ValueError("`scales` must be non-empty.")
        width = len(scales) * rank
        self.r[adapter_name] = rank
        self.alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / rank
        self.branch_scales[adapter_name] = [float(k) for k in scales]
        self.musclelora_dropout[adapter_name] = nn.Dropout(p=dropout) if dropout > 0.0 else nn.Identity()
        self.musclelora_A[adapter_name] = nn.Linear(self.in_features, width, bias=False)
        self.musclelora_B[adapter_name] = nn.Linear(width, self.out_features, bias=False)
        self.reset_parameters(adapter_name, init_weights)
        if save_base_weights:
            base = self.get_base_layer()
            self.musclelora_base_weight[adapter_name] = base.weight.data
            if getattr(base, "bias", None) is not None:
                self.musclelora_base_bias[adapter_name] = base.bias.data
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_parameters(self, adapter_name: str, init_weights: bool | str) -> None:
        """Initialise A Kaiming-uniform; B zero (``True``) or Kaiming-uniform (``"paper"``/``False``)."""
        if adapter_name not in self.musclelora_A:
            return
        nn.init.kaiming_uniform_(self.musclelora_A[adapter_name].weight, a=math.sqrt(5))
        if init_weights is True:
            nn.init.zeros_(self.musclelora_B[adapter_name].weight)
        else:
            nn.init.kaiming_uniform_(self.musclelora_B[adapter_name].weight, a=math.sqrt(5))

    def _branch_factors(self, adapter: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        scales = torch.tensor(self.branch_scales[adapter], device=device, dtype=dtype)
        return scales.repeat_interleave(self.r[adapter])

    def _delta_weight_out_in(self, adapter: str) -> torch.Tensor:
        """Delta weight in (out, in) layout, in the adapter's dtype (fp32 math for fp16/bf16 on CPU)."""
        weight_a = self.musclelora_A[adapter].weight
        weight_b = self.musclelora_B[adapter].weight
        dtype = weight_a.dtype
        cast = weight_a.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
        if cast:
            weight_a, weight_b = weight_a.float(), weight_b.float()
        k = self._branch_factors(adapter, weight_a.device, weight_a.dtype)
        delta = (weight_b @ (k[:, None] * weight_a)) * self.scaling[adapter]
        return delta.to(dtype) if cast else delta

    def _adapter_output(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        weight_a = self.musclelora_A[adapter]
        x = self._cast_input_dtype(x, weight_a.weight.dtype)
        hidden = weight_a(self.musclelora_dropout[adapter](x))
        hidden = hidden * self._branch_factors(adapter, hidden.device, hidden.dtype)
        return self.musclelora_B[adapter](hidden) * self.scaling[adapter]

    def _forward_with_adapters(self, x: torch.Tensor, args: tuple, kwargs: dict, *, quantized: bool) -> torch.Tensor:
        """The base layer's output plus every active adapter's (the forward of the plain and the bitsandbytes
        layers). ``quantized``: clone the base output (backprop through a view of a bitsandbytes output can fail,
        as in PEFT's LoRA) and leave the adapter output in autocast's dtype when autocast is on."""
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("MuScleLoRA does not support mixed-adapter batches (`adapter_names`).")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if quantized:
            result = result.clone()
        for adapter in self.active_adapters:
            if adapter not in self.musclelora_A:
                continue
            output = self._adapter_output(x, adapter)
            if not (quantized and torch.is_autocast_enabled()):
                output = output.to(result.dtype)
            result = result + output
        return result

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for store in (self.r, self.alpha, self.scaling, self.branch_scales):
            store.pop(adapter_name, None)
        for store in (self.musclelora_base_weight, self.musclelora_base_bias):
            if adapter_name in store:
                del store[adapter_name]


class Linear(nn.Module, MuScleLoRALayer):
    """MuScleLoRA on ``nn.Linear`` or GPT-2 ``Conv1D`` (``fan_in_fan_out=True``)."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        *,
        scales: Sequence[float] = (1.0,),
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        init_weights: bool | str = True,
        fan_in_fan_out: bool = False,
        save_base_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        MuScleLoRALayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = fan_in_fan_out
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            scales=scales,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            init_weights=init_weights,
            save_base_weights=save_base_weights,
        )

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Delta of the base weight for ``adapter`` in the base layer's layout."""
        return transpose(self._delta_weight_out_in(adapter), self.fan_in_fan_out)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or given) adapters' deltas to the base weight.

        Args:
            safe_merge: compute on a copy and raise if it contains NaN/inf before writing.
            adapter_names: adapters to merge; default all active ones.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        for adapter in adapter_names:
            if adapter not in self.musclelora_A:
                continue
            delta = self.get_delta_weight(adapter).to(base.weight.dtype)
            if safe_merge:
                merged = base.weight.data + delta
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
                base.weight.data = merged
            else:
                base.weight.data += delta
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Subtract every merged adapter's delta from the base weight."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.musclelora_A:
                base.weight.data -= self.get_delta_weight(adapter).to(base.weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._forward_with_adapters(x, args, kwargs, quantized=False)

    def __repr__(self) -> str:
        return "musclelora." + super().__repr__()


def dispatch_default(target: nn.Module, adapter_name: str, **kwargs: Any) -> nn.Module | None:
    """Wrap ``nn.Linear`` and GPT-2 ``Conv1D`` targets; return None for anything else."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, nn.Linear):
        if kwargs.get("fan_in_fan_out", False):
            warnings.warn("fan_in_fan_out=True but the target is nn.Linear; setting it to False.", stacklevel=2)
        kwargs["fan_in_fan_out"] = False
        return Linear(target, adapter_name, **kwargs)
    if isinstance(base, Conv1D):
        kwargs["fan_in_fan_out"] = True
        return Linear(target, adapter_name, **kwargs)
    return None
