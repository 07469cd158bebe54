"""MuScleLoRA training: gradient alignment on a clean reference set inside a `transformers.Trainer`.

Paper: "Acquiring Clean Language Models from Backdoor Poisoned Datasets by Downscaling Frequency Space"
(Wu, Zhang, Cheng, Liu, ACL 2024). Every optimizer step the accumulated, process-averaged training gradient
``g`` of each trainable tensor is replaced by its projection onto the gradient ``g_c`` of one clean
reference batch (sign forced positive), or a mix of both, before gradient clipping and the optimizer step.
The math is in :mod:`hf_backdoor_defense.trainers.gradient_alignment`; the reference sampling (seeded,
saved in checkpoints) in :mod:`hf_backdoor_defense.trainers._reference`.

Example:
    >>> from hf_backdoor_defense.trainers import MuScleLoRATrainer, MuScleLoRATrainingArguments
    >>> args = MuScleLoRATrainingArguments(output_dir="out", alignment_preset="encoder")  # doctest: +SKIP
    >>> trainer = MuScleLoRATrainer(model=peft_model, args=args, train_dataset=poisoned_tokenized,
    ...                             reference_dataset=clean_tokenized, processing_class=tokenizer)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..hub import DefenseModelCardMixin
from ..launch import GRADIENT_EDIT, refuse_sharded_launch, trainer_backend
from ..quantization import keep_4bit_trainable
from ..tuners.musclelora import multiscale_parameters
from ._reference import ReferenceSampler
from .gradient_alignment import MODES, align_gradient, mixing_ratio
from .loss_scaling import use_mean_loss_for_classification

__all__ = [
    "GradientAlignmentMixin",
    "MuScleLoRATrainer",
]


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
