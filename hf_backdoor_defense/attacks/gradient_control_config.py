"""The arguments of the Gradient Control attack (`GradientControlTrainingArguments`, a `TrainingArguments`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

__all__ = [
    "BETA_SCHEDULES",
    "ILPROJ_MODES",
    "STATE_FILE",
    "GradientControlTrainingArguments",
]

STATE_FILE = "gradient_control_state.json"
BETA_SCHEDULES = ("lower_half", "upper_half", "all", "none")
"""Named layer schedules of ``beta_l`` (ILProj's blend with the raw sum)."""
ILPROJ_MODES = ("always", "on_conflict")
"""When ILProj projects: every step, or only when the clean and poison gradients conflict."""


@dataclass
class GradientControlTrainingArguments(TrainingArguments):
    r"""[`TrainingArguments`] for [`GradientControlTrainer`].

    Parameters that control CLNorm (cross-layer gradient magnitude normalisation):

    Args:
        clnorm (`bool`, defaults to `True`):
            Rescale the poison gradient per layer with learned weights ``w_l`` so its magnitude falls
            linearly with depth, reaching zero at the output layer.
        clnorm_alpha (`float`, defaults to `1e-4`):
            Step size ``alpha`` of the ``w_l`` update (the paper's value).
        anchor_layer (`int` or `None`, defaults to `None`):
            The layer ``l_a`` whose target magnitude equals the mean poison-gradient norm.
            `None` = the middle block, ``num_layers // 2``. Must differ from the output layer.
        clnorm_min_weight (`float` or `None`, defaults to `0.0`):
            Lower clamp for ``w_l`` after each update (the paper does not clamp; a negative weight would
            reverse the poison gradient). `None` disables the clamp.

    Parameters that control ILProj (intra-layer gradient direction projection):

    Args:
        ilproj (`bool`, defaults to `True`):
            Project the clean and poison gradients of each layer onto each other's normal plane.
        ilproj_mode (`str`, defaults to `"always"`):
            `"always"` applies the projection at every step (the paper's formula); `"on_conflict"` only when the
            layer's two gradients have a negative dot product (PCGrad's rule).
        beta_schedule (`str` or `list[float]`, defaults to `"lower_half"`):
            Blend weight ``beta_l`` in ``g = (1 - beta) g_hat + beta (g_c + g_p)``. `"lower_half"`: ``beta = 1``
            (no projection) in the lower half of the blocks and 0 (full projection) in the upper half and the
            head, as specified; `"upper_half"`: the reverse; `"all"`: ``beta = 0`` everywhere; `"none"`:
            ``beta = 1`` everywhere; or ``num_layers + 1`` floats in ``[0, 1]``, as a list or (on a command line
            parsed by `HfArgumentParser`) a comma-separated string such as ``"1,1,0.5,0,0"``.

    Parameters that control the poison stream:

    Args:
        poison_batch_size (`int` or `None`, defaults to `None`):
            Per-device batch size of the poison batch drawn at every micro-step (cycling over the poison set).
            `None` = ``per_device_train_batch_size``.
        poison_loss_weight (`float`, defaults to `1.0`):
            Multiplier of the poison loss before its backward pass.
        poison_column (`str`, defaults to `"is_poisoned"`):
            Boolean column used to split a single training set into clean and poison parts when no
            ``poison_dataset`` is given.
        log_layer_weights (`bool`, defaults to `True`):
            Log ``gc/w_<l>`` (the CLNorm weights) and ``gc/conflict_rate`` alongside the losses.
    """

    clnorm: bool = field(default=True, metadata={"help": "Apply cross-layer gradient magnitude normalisation."})
    clnorm_alpha: float = field(default=1e-4, metadata={"help": "Step size alpha of the CLNorm weight update."})
    anchor_layer: int | None = field(
        default=None, metadata={"help": "Anchor layer l_a of CLNorm; None = the middle block (num_layers // 2)."}
    )
    clnorm_min_weight: float | None = field(
        default=0.0, metadata={"help": "Lower clamp of the CLNorm weights after each update; None = no clamp."}
    )
    ilproj: bool = field(default=True, metadata={"help": "Apply intra-layer gradient direction projection."})
    ilproj_mode: str = field(
        default="always", metadata={"help": "'always' or 'on_conflict' (only on a negative dot product)."}
    )
    # Typed `str` for HfArgumentParser (which cannot parse `str | list[float]`); lists are accepted from Python.
    beta_schedule: str = field(
        default="lower_half",
        metadata={"help": "'lower_half', 'upper_half', 'all', 'none', or num_layers + 1 comma-separated floats in "
                          "[0, 1]."},
    )
    poison_batch_size: int | None = field(
        default=None, metadata={"help": "Per-device poison batch size; None = per_device_train_batch_size."}
    )
    poison_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the poison loss."})
    poison_column: str = field(
        default="is_poisoned", metadata={"help": "Bool column splitting one training set into clean and poison."}
    )
    log_layer_weights: bool = field(default=True, metadata={"help": "Log the CLNorm weights and conflict rate."})

    def __post_init__(self):
        super().__post_init__()
        if self.clnorm_alpha < 0:
            raise ValueError(f"`clnorm_alpha` must be >= 0, got {self.clnorm_alpha}.")
        if self.anchor_layer is not None and self.anchor_layer < 0:
            raise ValueError(f"`anchor_layer` must be >= 0 or None (the middle block), got {self.anchor_layer}.")
        if self.ilproj_mode not in ILPROJ_MODES:
            raise ValueError(f"`ilproj_mode` must be one of {ILPROJ_MODES}, got {self.ilproj_mode!r}.")
        if isinstance(self.beta_schedule, str) and "," in self.beta_schedule:
            try:
                self.beta_schedule = [float(b) for b in self.beta_schedule.split(",")]
            except ValueError as err:
                raise ValueError(f"`beta_schedule` {self.beta_schedule!r} is not a list of comma-separated floats.") from err
        if isinstance(self.beta_schedule, str):
            if self.beta_schedule not in BETA_SCHEDULES:
                raise ValueError(
                    f"`beta_schedule` must be one of {BETA_SCHEDULES} or a list of floats, got {self.beta_schedule!r}."
                )
        elif any(not 0.0 <= float(b) <= 1.0 for b in self.beta_schedule):
            raise ValueError(f"`beta_schedule` values must lie in [0, 1], got {list(self.beta_schedule)}.")
        if self.poison_batch_size is not None and self.poison_batch_size < 1:
            raise ValueError(f"`poison_batch_size` must be >= 1 or None, got {self.poison_batch_size}.")
        if self.poison_loss_weight < 0:
            raise ValueError(f"`poison_loss_weight` must be >= 0, got {self.poison_loss_weight}.")
