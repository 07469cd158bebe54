"""Which distributed backend a launch asks for, and the one refusal of the backends a trainer cannot run under.

DDP and single-process launches run every trainer of this package. DeepSpeed steps the optimizer inside
backward and FSDP shards the gradients, so a trainer that edits the summed gradient between backward and
the optimizer step (MuScleLoRA's alignment, Gradient Control) cannot run under them; recipes ask before any
model loads, trainers again when they are built. Importing this module loads nothing heavy.

Example:
    >>> from hf_backdoor_defense.launch import refuse_sharded_launch
    >>> refuse_sharded_launch("ddp/single", "Gradient alignment", "it edits gradients")   # no-op
"""

from __future__ import annotations

import os

__all__ = ["GRADIENT_EDIT", "end_process_group", "launch_backend", "refuse_sharded_launch", "trainer_backend"]

_NAMES = {"deepspeed": "DeepSpeed", "fsdp": "FSDP"}

GRADIENT_EDIT = ("it edits the summed gradient between backward and the optimizer step, which DeepSpeed (it steps "
                 "inside backward) and FSDP (sharded gradients) do not expose")
"""The reason of every trainer that rewrites gradients (for :func:`refuse_sharded_launch`)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def launch_backend(training_args=None) -> str:
    """``"deepspeed"``, ``"fsdp"`` or ``"ddp/single"``: what accelerate's environment or ``training_args`` ask for."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or getattr(training_args, "deepspeed", None):
        return "deepspeed"
    if _env_flag("ACCELERATE_USE_FSDP") or getattr(training_args, "fsdp", None):
        return "fsdp"
    return "ddp/single"


def trainer_backend(trainer) -> str:
    """:func:`launch_backend` of a built ``transformers.Trainer`` (its accelerator knows the final answer)."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "deepspeed"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "fsdp"
    return "ddp/single"


def end_process_group() -> None:
    """Destroy the default ``torch.distributed`` process group, if a launch made one; otherwise do nothing.

    Call it last in a multi-process script. A process that exits with a live gloo group can abort in the
    interpreter's teardown ("terminate called without an active exception", SIGABRT) after its work is done,
    and the launcher then reports the whole run as failed.
    """
    import sys

    dist = getattr(sys.modules.get("torch"), "distributed", None)  # torch not imported: no group to end
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse_sharded_launch(backend: str, feature: str, why: str, *, off_switch: str | None = None,
                          field: bool = False) -> None:
    """Raise a ``ValueError`` when ``backend`` is ``"deepspeed"`` or ``"fsdp"``; any other value passes.

    Args:
        backend: What :func:`launch_backend` returned (or ``"deepspeed"`` / ``"fsdp"`` from a trainer's flags).
        feature: What cannot run, as the message's subject (e.g. ``"MuScleLoRA gradient alignment"``).
        why: The reason, a clause after the colon.
        off_switch: How to run without the feature instead (e.g. ``"pass --gradient_alignment false"``).
        field: The backend was set as the ``TrainingArguments`` field of its name: the fix says to unset it.
    """
    if backend not in _NAMES:
        return
    launch = f"unset `{backend}` and launch" if field else "launch"
    alternative = f", or {off_switch}" if off_switch else ""
    raise ValueError(f"{feature} cannot run under {_NAMES[backend]}: {why}. {launch[0].upper()}{launch[1:]} with DDP "
                     "(accelerate_configs/multi_gpu.yaml, cpu_ddp.yaml) or one process (single_gpu.yaml)"
                     f"{alternative}.")
