"""Keep bitsandbytes 4-bit bases trainable on CPUs that pack weights for inference.

On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight into a CPU inference layout
the first time the layer runs in eval mode without gradients, and from then on computes it with a kernel
that has no backward. An adapter trained afterwards (after an evaluation, or on a base that was evaluated
before ``get_peft_model``) silently receives no gradient through those layers: every adapter *upstream*
of a packed layer stops learning. :func:`keep_4bit_trainable` switches the packing off for a model's 4-bit
layers and undoes it where it already happened. ``MuScleLoRAModel`` and every trainer of this package call
it; call it yourself before training a PEFT adapter on a 4-bit base with a plain ``Trainer``.

Example:
    >>> from hf_backdoor_defense.quantization import keep_4bit_trainable
    >>> keep_4bit_trainable(model)   # doctest: +SKIP
    2
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["keep_4bit_trainable", "quiet_offline_kernel_warnings"]

_OPTIONAL_KERNEL_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


def quiet_offline_kernel_warnings() -> None:
    """With ``HF_HUB_OFFLINE`` set, keep bitsandbytes' optional CPU kernel lookup from warning on every import.

    On an AVX512-BF16 CPU bitsandbytes tries to fetch an optional kernel from the Hub when it is imported; in
    offline mode that cannot work, and it logs two warnings (one per process) that nobody can act on. Only
    those two loggers are raised to ERROR, and only offline: online, a failed fetch still warns.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        for name in _OPTIONAL_KERNEL_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def keep_4bit_trainable(model: nn.Module) -> int:
    """Switch off (and undo) bitsandbytes' CPU inference packing of ``model``'s 4-bit layers.

    Returns the number of layers whose weights had already been packed and were restored. A no-op without
    bitsandbytes or without 4-bit layers; the quantised values themselves never change.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # pragma: no cover - bitsandbytes is optional / older versions do not pack
        return 0
    restored = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state)
            restored += 1
    return restored
