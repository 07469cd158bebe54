"""The arguments of MuScleLoRA training: gradient alignment's settings (also mixed into TRL's `SFTConfig`) and
`MuScleLoRATrainingArguments` (a `TrainingArguments`); the presets of the paper."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from ..launch import GRADIENT_EDIT, refuse_sharded_launch
from ..options import GATES
from .gradient_alignment import VANISHING_CHOICES

__all__ = [
    "ALIGNMENT_PRESETS",
    "GradientAlignmentArguments",
    "MuScleLoRATrainingArguments",
]


# The paper's settings. Encoders (BERT/RoBERTa): project while the reference loss is above 0.4, then
# mix in up to 10 % of the raw gradient from epoch 1 on. LLMs: pure projection.
ALIGNMENT_PRESETS: dict[str, dict[str, float]] = {
    "encoder": {"min_reference_loss": 0.4, "alignment_start_epoch": 1.0, "max_raw_gradient_ratio": 0.1},
    "llm": {"min_reference_loss": 0.0, "alignment_start_epoch": 0.0, "max_raw_gradient_ratio": 0.0},
}
# Used for fields left unset when no preset is named: pure projection (the LLM recipe).
_GENERIC_DEFAULTS = ALIGNMENT_PRESETS["llm"]


@dataclass
class GradientAlignmentArguments:
    r"""Fields controlling gradient alignment, shared by the MuScleLoRA training argument classes.

    Parameters that control the switch and the presets:

    Args:
        gradient_alignment (`bool`, defaults to `True`):
            Align every update with the clean reference gradient. `False` makes the trainer a plain
            `Trainer` (the LoRA / full fine-tuning baseline) and `reference_dataset` is then ignored.
        alignment_preset (`str` or `None`, defaults to `None`):
            `"encoder"` (min_reference_loss=0.4, alignment_start_epoch=1, max_raw_gradient_ratio=0.1) or
            `"llm"` (0, 0, 0: pure projection), the paper's settings; applied only to fields left `None`.
            Without a preset, unset fields take the `"llm"` values.

    Parameters that control the reference set:

    Args:
        reference_size (`int` or `None`, defaults to `None`):
            Use a seeded random subset of this many examples of `reference_dataset` (paper: 96 for
            encoders, 128 for LLMs). `None` uses the whole reference set.
        reference_batch_size (`int` or `None`, defaults to `None`):
            Reference examples per process per optimizer step. `None` means `per_device_train_batch_size`:
            the paper draws reference batches the size of a training batch. Cost per optimizer step:
            one extra forward/backward of this size.
        reference_seed (`int` or `None`, defaults to `None`):
            Seed of the reference subset and of the reference batch order; `None` uses `seed`.

    Parameters that control the alignment rule:

    Args:
        min_reference_loss (`float` or `None`, defaults to `None`):
            Project only while the reference batch loss is above this; below it the raw (or mixed)
            gradient is used. `0` means pure projection: a fitted reference batch whose float32 loss is
            exactly 0 is still projected on.
        alignment_start_epoch (`float` or `None`, defaults to `None`):
            Epoch from which the raw gradient may be mixed in.
        max_raw_gradient_ratio (`float` or `None`, defaults to `None`):
            `mu_max`: the largest share of raw gradient mixed in, reached at the last epoch
            (`mu = mu_max * (epoch - start) / (epochs - start)`). In `[0, 1]`.
        alignment_eps (`float`, defaults to `1e-12`):
            A reference gradient norm at or below this counts as zero (no projection for that tensor).
        vanishing_reference_gradient (`str`, defaults to `"raw"`):
            What a tensor gets when its reference gradient counts as zero and no mix applies: `"raw"` (the
            paper's rule: the unaligned training gradient) or `"skip"` (no update of that tensor this step;
            our option, see docs/concepts/gradient-alignment.md).
        alignment_gate (`str`, defaults to `"tensor"`):
            Where "the reference gradient counts as zero" is decided: `"tensor"`, each tensor's norm against
            `alignment_eps`; `"global"`, the mean norm over all trainable tensors against `alignment_eps`,
            projecting every tensor or none (the authors' code does this, with a threshold of 5e-7).
        mix_by_whole_epochs (`bool`, defaults to `False`):
            Compute `mu` from the whole epochs completed (the authors' code) instead of the fractional epoch.

    Parameters that control the optimizer:

    Args:
        multiscale_learning_rate (`float` or `None`, defaults to `None`):
            Learning rate of MuScleLoRA's multi-scale factors (the `musclelora_A`/`musclelora_B` of layers with
            several scales); every other trainable parameter keeps `learning_rate`. `None`: one rate for all.
            The branch multiplies its update by up to `multiscale_alpha / rank_per_scale * max(scales)`, so it
            may need a smaller rate than the single-branch part.
    """

    gradient_alignment: bool = field(
        default=True,
        metadata={"help": "Align updates with the clean reference gradient; False gives the plain baseline."},
    )
    alignment_preset: str | None = field(
        default=None,
        metadata={
            "help": "Paper defaults for fields left unset: 'encoder' (0.4, 1, 0.1) or 'llm' (0, 0, 0).",
            "choices": ["encoder", "llm"],
        },
    )
    reference_size: int | None = field(
        default=None,
        metadata={
            "help": "Seeded subset size of reference_dataset (paper: 96 encoders, 128 LLMs); None = all."
        },
    )
    reference_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Reference examples per process per optimizer step; None = per_device_train_batch_size."
        },
    )
    reference_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the reference subset and batch order; None = seed."},
    )
    min_reference_loss: float | None = field(
        default=None,
        metadata={"help": "Project only while the reference loss is above this (encoder 0.4, llm 0)."},
    )
    alignment_start_epoch: float | None = field(
        default=None,
        metadata={"help": "Epoch from which raw gradient may be mixed in (encoder 1)."},
    )
    max_raw_gradient_ratio: float | None = field(
        default=None,
        metadata={"help": "mu_max, largest share of raw gradient mixed in, in [0, 1] (encoder 0.1, llm 0)."},
    )
    alignment_eps: float = field(
        default=1e-12,
        metadata={"help": "Reference gradient norms at or below this count as zero."},
    )
    vanishing_reference_gradient: str = field(
        default="raw",
        metadata={
            "help": "For a tensor whose reference gradient is zero (and no mix): 'raw' (paper) or 'skip'.",
            "choices": list(VANISHING_CHOICES),
        },
    )

    alignment_gate: str = field(
        default="tensor",
        metadata={
            "help": "Zero reference gradient judged per 'tensor' or on the 'global' mean norm (authors' code).",
            "choices": list(GATES),
        },
    )
    mix_by_whole_epochs: bool = field(
        default=False,
        metadata={"help": "Compute mu from whole epochs completed (authors' code) instead of the fractional epoch."},
    )
    multiscale_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the multi-scale MuScleLoRA factors; None: learning_rate for all."},
    )

    def _resolve_alignment_arguments(self) -> None:
        if self.alignment_preset is not None and self.alignment_preset not in ALIGNMENT_PRESETS:
            raise ValueError(
                f"alignment_preset={self.alignment_preset!r} is unknown: use one of {sorted(ALIGNMENT_PRESETS)} "
                "or None."
            )
        defaults = ALIGNMENT_PRESETS[self.alignment_preset] if self.alignment_preset else _GENERIC_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.reference_batch_size is None:
            self.reference_batch_size = self.per_device_train_batch_size
        if self.reference_seed is None:
            self.reference_seed = self.seed
        if self.reference_batch_size <= 0:
            raise ValueError(f"reference_batch_size must be positive, got {self.reference_batch_size}.")
        if self.reference_size is not None and self.reference_size <= 0:
            raise ValueError(f"reference_size must be positive or None, got {self.reference_size}.")
        if self.min_reference_loss < 0:
            raise ValueError(f"min_reference_loss must be >= 0, got {self.min_reference_loss}.")
        if self.alignment_start_epoch < 0:
            raise ValueError(f"alignment_start_epoch must be >= 0, got {self.alignment_start_epoch}.")
        if not 0.0 <= self.max_raw_gradient_ratio <= 1.0:
            raise ValueError(f"max_raw_gradient_ratio must be in [0, 1], got {self.max_raw_gradient_ratio}.")
        if self.alignment_eps < 0:
            raise ValueError(f"alignment_eps must be >= 0, got {self.alignment_eps}.")
        if self.vanishing_reference_gradient not in VANISHING_CHOICES:
            raise ValueError(
                f"vanishing_reference_gradient={self.vanishing_reference_gradient!r} is unknown: use one of "
                f"{list(VANISHING_CHOICES)}."
            )
        if self.alignment_gate not in GATES:
            raise ValueError(f"alignment_gate={self.alignment_gate!r} is unknown: use one of {list(GATES)}.")
        if self.multiscale_learning_rate is not None and self.multiscale_learning_rate <= 0:
            raise ValueError(
                f"multiscale_learning_rate must be positive or None, got {self.multiscale_learning_rate}."
            )
        if not self.gradient_alignment:
            return
        refuse_sharded_launch("deepspeed" if self.deepspeed else "fsdp" if self.fsdp else "ddp/single",
                              "gradient_alignment=True", GRADIENT_EDIT, off_switch="set gradient_alignment=False",
                              field=True)
        if self.optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO):
            raise ValueError(
                f"optim={self.optim} updates weights inside backward, which gradient alignment cannot follow: "
                "choose another optimizer or set gradient_alignment=False."
            )
        if (
            self.max_raw_gradient_ratio > 0
            and self.max_steps <= 0
            and self.alignment_start_epoch >= self.num_train_epochs
        ):
            warnings.warn(
                f"alignment_start_epoch={self.alignment_start_epoch} >= num_train_epochs={self.num_train_epochs}: "
                "the raw gradient will never be mixed in.",
                stacklevel=3,
            )


@dataclass
class MuScleLoRATrainingArguments(TrainingArguments, GradientAlignmentArguments):
    r"""[`~transformers.TrainingArguments`] plus the gradient-alignment fields of [`GradientAlignmentArguments`].

    See [`GradientAlignmentArguments`] for `gradient_alignment`, `alignment_preset`, `reference_size`,
    `reference_batch_size`, `reference_seed`, `min_reference_loss`, `alignment_start_epoch`,
    `max_raw_gradient_ratio` and `alignment_eps`. Alignment happens before clipping to `max_grad_norm`
    (the paper clips to 1.0, the `TrainingArguments` default).

    Example:
        >>> args = MuScleLoRATrainingArguments(output_dir="out", alignment_preset="encoder",
        ...                                    report_to=[])  # doctest: +SKIP
        >>> args.min_reference_loss, args.max_raw_gradient_ratio  # doctest: +SKIP
        (0.4, 0.1)
    """

    def __post_init__(self):
        super().__post_init__()
        self._resolve_alignment_arguments()
