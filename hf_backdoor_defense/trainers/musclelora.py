"""MuScleLoRA training: gradient alignment on a clean reference set inside a `transformers.Trainer`.

Paper: "Acquiring Clean Language Models from Backdoor Poisoned Datasets by Downscaling Frequency Space"
(Wu, Zhang, Cheng, Liu, ACL 2024). Every optimizer step the accumulated, process-averaged training gradient
``g`` of each trainable tensor is replaced by its projection onto the gradient ``g_c`` of one clean
reference batch (sign forced positive), or a mix of both, before gradient clipping and the optimizer step.
The math is in :mod:`hf_backdoor_defense.trainers.gradient_alignment`; the reference sampling (seeded,
saved in checkpoints) in :mod:`hf_backdoor_defense.trainers._reference`.

Example:
    >>> from hf_backdoor_defense.trainers.musclelora import MuScleLoRATrainer, MuScleLoRATrainingArguments
    >>> args = MuScleLoRATrainingArguments(output_dir="out", alignment_preset="encoder")  # doctest: +SKIP
    >>> trainer = MuScleLoRATrainer(model=peft_model, args=args, train_dataset=poisoned_tokenized,
    ...                             reference_dataset=clean_tokenized, processing_class=tokenizer)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import OptimizerNames

from ..quantization import keep_4bit_trainable
from ..tuners.musclelora import multiscale_parameters
from ._reference import ReferenceSampler
from .gradient_alignment import GATES, MODES, VANISHING_CHOICES, align_gradient, mixing_ratio
from .launch import GRADIENT_EDIT, refuse_sharded_launch, trainer_backend
from .loss_scaling import use_mean_loss_for_classification
from .model_card import DefenseModelCardMixin

__all__ = [
    "ALIGNMENT_PRESETS",
    "GradientAlignmentArguments",
    "GradientAlignmentMixin",
    "MuScleLoRATrainer",
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


def _give_own_rate(optimizer: torch.optim.Optimizer, params: list, rate: float) -> None:
    """Move ``params`` out of their optimizer groups into copies of those groups whose learning rate is ``rate``."""
    if not params:
        raise ValueError(
            "multiscale_learning_rate is set but the model has no trainable multi-scale MuScleLoRA factors: unset "
            "it, or train a MuScleLoRA adapter whose multiscale_target_modules match."
        )
    chosen = {id(p) for p in params}
    for group in list(optimizer.param_groups):
        moved = [p for p in group["params"] if id(p) in chosen]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in chosen]
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": moved,
                                       "lr": rate})


def _unwrap_config(model) -> Any:
    return getattr(model, "config", None)


def _overlap_keys(dataset) -> set | None:
    names = getattr(dataset, "column_names", None)
    if names is None:
        return None
    if "input_ids" in names:
        return {tuple(ids) for ids in dataset["input_ids"]}
    if "text" in names:
        return set(dataset["text"])
    return None


class GradientAlignmentMixin:
    """Adds MuScleLoRA's gradient alignment to a `transformers.Trainer` subclass.

    Put it first in the bases (``class T(GradientAlignmentMixin, SomeTrainer)``); the trainer must receive
    arguments that include [`GradientAlignmentArguments`] and a ``reference_dataset=`` in the same format as
    ``train_dataset`` (same columns, same collator).

    After training, ``alignment_history`` holds one dict per optimizer step with ``reference_loss``,
    ``cosine`` (mean over tensors), ``mu`` and the number of tensors per mode.
    """

    _reference_state_file = "reference_sampler.json"

    def __init__(self, *args, reference_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.args, "gradient_alignment"):
            raise TypeError(
                f"{type(self).__name__} needs arguments with the gradient-alignment fields: pass "
                "MuScleLoRATrainingArguments (or MuScleLoRASFTConfig) as args."
            )
        use_mean_loss_for_classification(self)
        keep_4bit_trainable(self.model)  # bitsandbytes' CPU inference packing would cut the gradient
        self.alignment_history: list[dict[str, float]] = []
        self._alignment_log: list[dict[str, float]] = []
        self.reference_dataset = None
        self._reference_sampler: ReferenceSampler | None = None
        if not self.args.gradient_alignment:
            return
        refuse_sharded_launch(trainer_backend(self), "gradient_alignment=True", GRADIENT_EDIT,
                              off_switch="set gradient_alignment=False")
        if reference_dataset is None:
            raise ValueError(
                "reference_dataset is required when gradient_alignment=True: pass a small trusted clean set "
                "(never drawn from the poisoned training data), or set gradient_alignment=False."
            )
        reference_dataset = self._prepare_reference_dataset(reference_dataset)
        if len(reference_dataset) == 0:
            raise ValueError(
                "reference_dataset is empty: gradient alignment needs at least one clean example."
            )
        size = self.args.reference_size
        if size is not None:
            if size > len(reference_dataset):
                raise ValueError(
                    f"reference_size={size} exceeds the {len(reference_dataset)} examples of reference_dataset: "
                    "lower reference_size or pass more clean examples."
                )
            generator = torch.Generator().manual_seed(self.args.reference_seed)
            keep = sorted(torch.randperm(len(reference_dataset), generator=generator)[:size].tolist())
            reference_dataset = reference_dataset.select(keep)
        self._check_reference_labels(reference_dataset)
        self._warn_on_overlap(reference_dataset)
        self.reference_dataset = reference_dataset
        self._reference_sampler = ReferenceSampler(
            num_examples=len(reference_dataset),
            batch_size=self.args.reference_batch_size,
            seed=self.args.reference_seed,
            world_size=max(1, self.args.world_size),
            rank=self.args.process_index,
        )

    # ----- reference data -------------------------------------------------------------------------------

    def _prepare_reference_dataset(self, dataset):
        """Hook for subclasses that preprocess datasets (e.g. SFT); the base trainer uses it as given."""
        return dataset

    def _check_reference_labels(self, dataset) -> None:
        names = getattr(dataset, "column_names", None) or []
        column = "labels" if "labels" in names else "label" if "label" in names else None
        config = _unwrap_config(self.model)
        num_labels = getattr(config, "num_labels", None)
        if column is None or num_labels is None:
            return
        values = dataset[column]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return  # token-level labels (causal LM) or regression targets
        bad = sorted({v for v in values if not 0 <= v < num_labels})
        if bad:
            raise ValueError(
                f"reference_dataset column {column!r} has labels {bad[:10]} outside the model's label set "
                f"[0, {num_labels}) (model.config.num_labels): fix the reference labels or num_labels."
            )

    def _warn_on_overlap(self, reference) -> None:
        train = self.train_dataset
        if train is None:
            return
        ref_keys = _overlap_keys(reference)
        train_keys = _overlap_keys(train)
        if not ref_keys or not train_keys:
            return
        shared = len(ref_keys & train_keys)
        if shared:
            warnings.warn(
                f"{shared} of {len(ref_keys)} reference examples also appear in train_dataset: the reference set "
                "must be trusted clean data, never drawn from the (possibly poisoned) training set.",
                UserWarning,
                stacklevel=3,
            )

    def _reference_columns_dataset(self):
        if not hasattr(self, "_reference_ready"):
            dataset = self.reference_dataset
            if hasattr(dataset, "column_names"):
                dataset = self._remove_unused_columns(dataset, description="reference")
            self._reference_ready = dataset
        return self._reference_ready

    def _next_reference_batch(self) -> dict[str, Any]:
        dataset = self._reference_columns_dataset()
        indices = self._reference_sampler.next_indices()
        batch = self.data_collator([dataset[i] for i in indices])
        return self._prepare_inputs(batch)

    # ----- the alignment ---------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # `sync_gradients` is True on the last micro-batch of an optimizer step: the gradient is then fully
        # accumulated and (under DDP) all-reduced, and clipping / the optimizer step come next.
        if self.args.gradient_alignment and self.accelerator.sync_gradients:
            self._align_gradients(model)
        return loss

    def _reference_loss(self, model, inputs) -> torch.Tensor:
        # The base `Trainer.compute_loss`: subclasses' extra metrics (e.g. SFT token accuracy) stay train-only.
        with self.compute_loss_context_manager():
            loss = Trainer.compute_loss(self, model, inputs)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        return loss

    @torch.no_grad()
    def _snapshot_and_zero(self, params):
        saved = []
        for p in params:
            if p.grad is None:
                saved.append(None)
            else:
                saved.append(p.grad.detach().clone())
                p.grad.zero_()
        return saved

    def _align_gradients(self, model) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        saved = self._snapshot_and_zero(params)
        inputs = self._next_reference_batch()
        with torch.enable_grad():
            ref_loss = self._reference_loss(model, inputs)
            # Under DDP the wrapped model all-reduces this backward too (we are outside `no_sync`).
            self.accelerator.backward(ref_loss)
        ref_value = self.accelerator.reduce(ref_loss.detach().float().reshape(1), reduction="mean").item()

        epoch = float(self.state.epoch or 0.0)
        if self.args.mix_by_whole_epochs:
            epoch = math.floor(epoch + 1e-9)  # the state's epoch is a float sum of 1/steps_per_epoch
        num_epochs = float(self.state.num_train_epochs or self.args.num_train_epochs)
        mu = mixing_ratio(
            epoch, num_epochs, self.args.alignment_start_epoch, self.args.max_raw_gradient_ratio
        )
        counts = dict.fromkeys(MODES, 0)
        cosines = []
        gate_open = None  # per tensor
        if self.args.alignment_gate == "global":
            norms = [p.grad.float().norm() for p, g in zip(params, saved) if g is not None and p.grad is not None]
            gate_open = bool(norms) and torch.stack(norms).mean().item() > self.args.alignment_eps
        with torch.no_grad():
            for p, g in zip(params, saved):
                if g is None:
                    p.grad = None  # not part of this step's update; drop the reference gradient
                    continue
                result = align_gradient(
                    g,
                    p.grad,
                    reference_loss=ref_value,
                    min_reference_loss=self.args.min_reference_loss,
                    mu=mu,
                    eps=self.args.alignment_eps,
                    vanishing=self.args.vanishing_reference_gradient,
                    gate_open=gate_open,
                )
                p.grad.copy_(result.gradient)
                counts[result.mode] += 1
                cosines.append(result.cosine)
        record = {
            "reference_loss": ref_value,
            "cosine": float(sum(cosines) / len(cosines)) if cosines else math.nan,
            "mu": mu,
            **{f"{mode}_tensors": float(n) for mode, n in counts.items()},
        }
        self.alignment_history.append(record)
        self._alignment_log.append(record)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._alignment_log and "loss" in logs:
            n = len(self._alignment_log)
            total = sum(sum(r[f"{m}_tensors"] for m in MODES) for r in self._alignment_log) or 1.0
            logs = dict(logs)
            logs["alignment/reference_loss"] = sum(r["reference_loss"] for r in self._alignment_log) / n
            logs["alignment/cosine"] = sum(r["cosine"] for r in self._alignment_log) / n
            logs["alignment/mu"] = self._alignment_log[-1]["mu"]
            for mode in MODES:
                logs[f"alignment/{mode}_share"] = (
                    sum(r[f"{mode}_tensors"] for r in self._alignment_log) / total
                )
            self._alignment_log = []
        super().log(logs, *args, **kwargs)

    # ----- optimizer --------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        rate = getattr(self.args, "multiscale_learning_rate", None)
        if fresh and rate is not None:
            _give_own_rate(optimizer, multiscale_parameters(self.model if model is None else model), rate)
        return optimizer

    # ----- checkpoints ------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self._reference_sampler is not None and self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            self._reference_sampler.save(folder)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and self._reference_sampler is not None:
            if not self._reference_sampler.load(checkpoint):
                warnings.warn(
                    f"{checkpoint} has no reference sampler state: reference batches restart from the beginning, "
                    "so the resumed run will differ from an uninterrupted one.",
                    UserWarning,
                    stacklevel=2,
                )


class MuScleLoRATrainer(DefenseModelCardMixin, GradientAlignmentMixin, Trainer):
    r"""`transformers.Trainer` with MuScleLoRA's gradient alignment.

    Every optimizer step, after the gradient has been accumulated over all micro-batches and averaged across
    processes, the trainer draws one clean reference batch, computes its gradient ``g_c`` (also averaged
    across processes) and replaces each trainable tensor's gradient ``g`` by its positive projection onto
    ``g_c`` (or a mix with ``g``, or ``g`` itself; see [`GradientAlignmentArguments`]). Clipping and the
    optimizer step follow as usual. Works with any PEFT adapter (MuScleLoRA, LoRA), with full fine-tuning and
    on 4-bit bases; refuses DeepSpeed and FSDP. With ``gradient_alignment=False`` it is a plain `Trainer`.

    Args:
        reference_dataset (`datasets.Dataset`):
            Trusted clean examples in the same format as ``train_dataset`` (same columns, same collator).
            Never draw it from the training set: overlap triggers a warning.
        *args, **kwargs: as for `transformers.Trainer`; ``args`` must be [`MuScleLoRATrainingArguments`].

    Example:
        >>> from peft import LoraConfig, get_peft_model
        >>> model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=32))  # doctest: +SKIP
        >>> args = MuScleLoRATrainingArguments("out", alignment_preset="encoder", learning_rate=2e-5,
        ...                                    num_train_epochs=10, per_device_train_batch_size=32)  # doctest: +SKIP
        >>> trainer = MuScleLoRATrainer(model=model, args=args, train_dataset=poisoned,
        ...                             reference_dataset=clean_reference)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    _defense = "musclelora"
    _tag_names = ["hf-backdoor-defense", "musclelora", "gradient-alignment"]
