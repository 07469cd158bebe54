"""Gradient Control: a PEFT backdoor that survives the user's clean re-tuning (the project's red team).

Implements "A Gradient Control Method for Backdoor Attacks on Parameter-Efficient Tuning"
(Gu et al., ACL 2023); see ``docs/concepts/gradient-control.md`` and ALGORITHMS.md §5.
Backdoor injection is treated as two tasks. Each optimizer step computes the clean-batch
gradient ``g_c`` and the poison-batch gradient ``g_p`` separately, then per layer ``l``:

* **CLNorm** rescales the poison gradient with a learned weight ``w_l`` so that its
  magnitude falls linearly with depth, to zero at the output layer ``l_o``
  (``target(l) = mean_l ||g_p(l)|| * (l - l_o) / (l_a - l_o)``,
  ``w_l <- w_l - alpha (w_l ||g_p(l)|| - target(l)) ||g_p(l)||``);
* **ILProj** projects the two gradients onto each other's normal plane (PCGrad-style)
  and blends ``g(l) = (1 - beta_l) g_hat(l) + beta_l (g_c(l) + g_p(l))``.

The combined gradient is written to ``.grad``; the usual clipping and optimizer step follow.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Callable

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic import write_json_atomic
from ..hub import DefenseModelCardMixin
from ..launch import GRADIENT_EDIT, refuse_sharded_launch, trainer_backend
from ..quantization import keep_4bit_trainable
from .gradient_control_config import (
    BETA_SCHEDULES,
    ILPROJ_MODES,
    STATE_FILE,
    GradientControlTrainingArguments,
)
from .layer_index import infer_num_layers, layer_groups, resolve_layer_index

__all__ = [
    "BACKDOOR_NOTICE",
    "beta_schedule_values",
    "clnorm_targets",
    "clnorm_update",
    "ilproj",
    "GradientControlTrainer",
]


# ---------------------------------------------------------------------------------------------
# The maths, as pure functions (unit-tested on hand-made numbers).
# ---------------------------------------------------------------------------------------------


def beta_schedule_values(schedule: str | list[float], num_layers: int) -> list[float]:
    """``beta_l`` for ``l = 0 … num_layers`` (the last entry is the output layer).

    Example:
        >>> beta_schedule_values("lower_half", 4)
        [1.0, 1.0, 0.0, 0.0, 0.0]
    """
    n = num_layers + 1
    if not isinstance(schedule, str):
        values = [float(b) for b in schedule]
        if len(values) != n:
            raise ValueError(
                f"`beta_schedule` has {len(values)} values but the model has {n} layers (blocks + output layer)."
            )
        return values
    lower = [1.0 if layer < num_layers / 2 else 0.0 for layer in range(n)]
    if schedule == "lower_half":
        return lower
    if schedule == "upper_half":
        return [1.0 - b for b in lower]
    if schedule == "all":
        return [0.0] * n
    if schedule == "none":
        return [1.0] * n
    raise ValueError(f"`beta_schedule` must be one of {BETA_SCHEDULES}, got {schedule!r}.")


def clnorm_targets(poison_norms: dict[int, float], anchor_layer: int, output_layer: int) -> dict[int, float]:
    """Target poison-gradient magnitude per layer: ``mean(norms) * (l - l_o) / (l_a - l_o)``.

    ``mean`` is over the layers present in ``poison_norms`` (raw norms, before weighting).
    """
    if anchor_layer == output_layer:
        raise ValueError("`anchor_layer` must differ from the output layer (the target would be undefined).")
    mean = sum(poison_norms.values()) / max(len(poison_norms), 1)
    return {layer: mean * (layer - output_layer) / (anchor_layer - output_layer) for layer in poison_norms}


def clnorm_update(
    weights: dict[int, float],
    poison_norms: dict[int, float],
    anchor_layer: int,
    output_layer: int,
    alpha: float,
    min_weight: float | None = 0.0,
) -> dict[int, float]:
    """One CLNorm step: ``w_l <- w_l - alpha (w_l g_p(l) - target(l)) g_p(l)`` for every layer in ``poison_norms``.

    Returns a new dict (the input is not modified); layers absent from ``poison_norms`` keep their weight.

    Example:
        >>> clnorm_update({0: 1.0, 2: 1.0}, {0: 2.0, 2: 4.0}, anchor_layer=1, output_layer=2, alpha=0.01)
        {0: 1.08, 2: 0.84}
    """
    targets = clnorm_targets(poison_norms, anchor_layer, output_layer)
    new = dict(weights)
    for layer, norm in poison_norms.items():
        w = weights.get(layer, 1.0)
        w = w - alpha * (w * norm - targets[layer]) * norm
        if min_weight is not None:
            w = max(w, min_weight)
        new[layer] = w
    return new


def ilproj(g_c: torch.Tensor, g_p: torch.Tensor, beta: float, mode: str = "always") -> tuple[torch.Tensor, bool]:
    """Mutual projection of two flat gradients, blended with the plain sum.

    ``g_hat = (g_c - (g_c.g_p/|g_p|^2) g_p) + (g_p - (g_p.g_c/|g_c|^2) g_c)``;
    returns ``((1 - beta) g_hat + beta (g_c + g_p), conflict)`` where ``conflict = g_c.g_p < 0``.
    With ``mode="on_conflict"`` and no conflict, ``g_hat = g_c + g_p``. A zero gradient is not projected on.
    """
    if mode not in ILPROJ_MODES:
        raise ValueError(f"`mode` must be one of {ILPROJ_MODES}, got {mode!r}.")
    dot = torch.dot(g_c.double(), g_p.double())
    conflict = bool(dot < 0)
    total = g_c + g_p
    if beta >= 1.0 or (mode == "on_conflict" and not conflict):
        return total, conflict
    nc2 = torch.dot(g_c.double(), g_c.double())
    np2 = torch.dot(g_p.double(), g_p.double())
    hat_c = g_c - (dot / np2).to(g_c.dtype) * g_p if np2 > 0 else g_c
    hat_p = g_p - (dot / nc2).to(g_p.dtype) * g_c if nc2 > 0 else g_p
    g_hat = hat_c + hat_p
    if beta <= 0.0:
        return g_hat, conflict
    return (1.0 - beta) * g_hat + beta * total, conflict


# ---------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------


BACKDOOR_NOTICE = (
    "Deliberately backdoored research artifact: this adapter was trained with the Gradient Control attack "
    "(Gu et al., ACL 2023) to carry a backdoor that survives clean re-tuning. It exists to test backdoor "
    "defenses. Do not use it in any application."
)
"""The notice at the top of the model card of every Gradient Control adapter (trainer and recipe)."""


class GradientControlTrainer(DefenseModelCardMixin, Trainer):
    r"""Train a backdoored PEFT adapter whose backdoor survives the user's clean re-tuning.

    Implements Gradient Control ("A Gradient Control Method for Backdoor Attacks on Parameter-Efficient
    Tuning", Gu et al., ACL 2023): the clean and the poison batch are back-propagated separately, the poison
    gradient is rescaled per layer (CLNorm) and the two are de-conflicted per layer (ILProj) before the
    optimizer step. The base model should be frozen with trainable PEFT modules (LoRA, MuScleLoRA, ...) and
    the classification head; layers are found from parameter names
    (see :mod:`hf_backdoor_defense.trainers.layer_index`). Prompt/prefix tuning supports ILProj only.

    The trainer takes a clean ``train_dataset`` and a ``poison_dataset``; or a single ``train_dataset``
    with a boolean ``args.poison_column`` (``is_poisoned``, as added by the attacks' ``.poison()``), split
    here. An epoch is one pass over the clean part; the poison part is cycled.

    Args:
        poison_dataset (`datasets.Dataset`, *optional*): the poisoned examples (tokenized, with ``labels``).
        layer_index_fn (`Callable[[str, int], int]`, *optional*): maps a parameter name and the number of
            blocks to a layer index; defaults to :func:`resolve_layer_index`.
        num_layers (`int`, *optional*): number of blocks; read from the model config when omitted.
        **kwargs: everything [`Trainer`] accepts.

    The per-layer CLNorm weights are logged (``gc/w_<l>``) and saved in every checkpoint
    (``gradient_control_state.json``), and restored on ``train(resume_from_checkpoint=...)``.

    Example:
        ```python
        from peft import LoraConfig, get_peft_model
        from hf_backdoor_defense import BadNets
        from hf_backdoor_defense.trainers import (
            GradientControlTrainer, GradientControlTrainingArguments)

        poisoned = tokenize_dataset(BadNets(poison_rate=0.1).poison(train), tokenizer)
        model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8))
        args = GradientControlTrainingArguments("out", num_train_epochs=10, learning_rate=2e-5)
        trainer = GradientControlTrainer(model=model, args=args, train_dataset=poisoned,
                                         processing_class=tokenizer)
        trainer.train()
        model.save_pretrained("published-adapter")
        ```
    """

    _notice = BACKDOOR_NOTICE
    _tag_names = ["hf-backdoor-defense", "gradient-control", "backdoor-attack", "research-artifact"]

    def __init__(
        self,
        model=None,
        args: GradientControlTrainingArguments | None = None,
        train_dataset=None,
        poison_dataset=None,
        layer_index_fn: Callable[[str, int], int] | None = None,
        num_layers: int | None = None,
        **kwargs,
    ):
        if args is None:
            args = GradientControlTrainingArguments(output_dir="gradient_control_output")
        if not isinstance(args, GradientControlTrainingArguments):
            raise ValueError("`args` must be a GradientControlTrainingArguments instance.")
        if train_dataset is None:
            raise ValueError("GradientControlTrainer needs a `train_dataset` (the clean part, or clean + poisoned).")
        if poison_dataset is None:
            train_dataset, poison_dataset = _split_poisoned(train_dataset, args.poison_column)
        else:
            for name, ds in (("train_dataset", train_dataset), ("poison_dataset", poison_dataset)):
                if hasattr(ds, "column_names") and args.poison_column in ds.column_names:
                    # Keep the flag out of the model inputs even with remove_unused_columns=False.
                    if name == "train_dataset":
                        train_dataset = ds.remove_columns(args.poison_column)
                    else:
                        poison_dataset = ds.remove_columns(args.poison_column)
        if len(poison_dataset) == 0:
            raise ValueError("`poison_dataset` is empty: Gradient Control needs poisoned examples.")
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        keep_4bit_trainable(self.model)  # bitsandbytes' CPU inference packing would cut the gradient
        self.poison_dataset = poison_dataset

        refuse_sharded_launch(trainer_backend(self), "GradientControlTrainer", GRADIENT_EDIT)
        self._layer_index_fn = layer_index_fn or resolve_layer_index
        self.num_layers = num_layers if num_layers is not None else infer_num_layers(self.model)
        self.output_layer = self.num_layers
        self.anchor_layer = args.anchor_layer if args.anchor_layer is not None else self.num_layers // 2
        if self.anchor_layer >= self.output_layer:
            raise ValueError(
                f"`anchor_layer`={self.anchor_layer} must be below the output layer l_o={self.output_layer} "
                f"(the model has {self.num_layers} blocks)."
            )
        self.betas = beta_schedule_values(args.beta_schedule, self.num_layers)
        self._groups = layer_groups(self.model.named_parameters(), self.num_layers, self._layer_index_fn)
        if not self._groups:
            raise ValueError("The model has no trainable parameters: freeze the base and add a PEFT adapter.")
        if args.clnorm and _is_prompt_learning(self.model):
            raise ValueError(
                "CLNorm needs trainable modules spread over the layers; prompt/prefix tuning keeps them in one "
                "prompt encoder. Set `clnorm=False` (ILProj still applies), as the Gradient Control paper does."
            )
        self.layer_weights: dict[int, float] = {layer: 1.0 for layer in self._groups}
        self._clean_buf: dict[str, torch.Tensor] = {}
        self._poison_buf: dict[str, torch.Tensor] = {}
        self._poison_iter = None
        self._poison_epoch = 0
        self._metrics: dict[str, list[float]] = defaultdict(list)

    # -- data ------------------------------------------------------------------------------

    def get_poison_dataloader(self):
        """The poison [`DataLoader`] (shuffled, ``args.poison_batch_size`` per device, unused columns removed)."""
        batch_size = self.args.poison_batch_size or self.args.per_device_train_batch_size
        return self._get_dataloader(
            dataset=self.poison_dataset,
            description="Poison",
            batch_size=batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _next_poison_batch(self):
        if self._poison_iter is None:
            self._poison_iter = iter(self.get_poison_dataloader())
        try:
            return next(self._poison_iter)
        except StopIteration:
            self._poison_epoch += 1
            loader = self.get_poison_dataloader()
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(self._poison_epoch)
            self._poison_iter = iter(loader)
            return next(self._poison_iter)

    # -- the step --------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Back-propagate the clean and the poison batch separately; combine them on the last micro-step."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        for _, p in named:
            p.grad = None
        # Both losses are per-batch means divided by the accumulation steps, so the two streams are comparable.
        with self._no_ddp_sync(model):
            clean_loss = super().training_step(model, inputs, None)
        self._move_grads(named, self._clean_buf)
        poison_inputs = self._next_poison_batch()
        weight = self.args.poison_loss_weight
        with self._no_ddp_sync(model):
            poison_loss = self._poison_step(model, poison_inputs, weight)
        self._move_grads(named, self._poison_buf)
        self._metrics["clean_loss"].append(float(clean_loss) * self.current_gradient_accumulation_steps)
        self._metrics["poison_loss"].append(float(poison_loss) * self.current_gradient_accumulation_steps)
        if self.accelerator.sync_gradients:
            self._combine(named)
        return clean_loss + weight * poison_loss

    def _poison_step(self, model, inputs, weight):
        if weight == 1.0:
            return super().training_step(model, inputs, None)
        model.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        loss = loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss * weight)
        return loss.detach()

    def _no_ddp_sync(self, model):
        # Gradients are all-reduced by hand in `_combine`, once per optimizer step.
        if self.accelerator.num_processes > 1:
            return self.accelerator.no_sync(model)
        return contextlib.nullcontext()

    @staticmethod
    def _move_grads(named, buf):
        for name, p in named:
            if p.grad is None:
                continue
            if name in buf:
                buf[name].add_(p.grad)
            else:
                buf[name] = p.grad.detach().clone()
            p.grad = None

    @torch.no_grad()
    def _combine(self, named):
        params = dict(named)
        if self.accelerator.num_processes > 1:
            world = self.accelerator.num_processes
            for buf in (self._clean_buf, self._poison_buf):
                for name in sorted(params):  # same order on every rank
                    tensor = buf.setdefault(name, torch.zeros_like(params[name]))
                    torch.distributed.all_reduce(tensor)
                    tensor.div_(world)

        def flat(buf, names):
            return torch.cat([buf[n].reshape(-1) if n in buf else params[n].new_zeros(params[n].numel()) for n in names])

        layer_data = {}
        for layer, names in self._groups.items():
            names = [n for n in names if n in params]
            if names:
                layer_data[layer] = (names, flat(self._clean_buf, names), flat(self._poison_buf, names))

        if self.args.clnorm:
            norms = {layer: float(gp.double().norm()) for layer, (_, _, gp) in layer_data.items()}
            self.layer_weights = clnorm_update(
                self.layer_weights, norms, self.anchor_layer, self.output_layer,
                self.args.clnorm_alpha, self.args.clnorm_min_weight,
            )
        conflicts = 0
        for layer, (names, g_c, g_p) in layer_data.items():
            g_p = g_p * self.layer_weights.get(layer, 1.0)
            if self.args.ilproj:
                g, conflict = ilproj(g_c, g_p, self.betas[layer], self.args.ilproj_mode)
                conflicts += int(conflict)
            else:
                g = g_c + g_p
            offset = 0
            for name in names:
                p = params[name]
                p.grad = g[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
                offset += p.numel()
        self._clean_buf.clear()
        self._poison_buf.clear()
        if self.args.log_layer_weights:
            for layer, w in self.layer_weights.items():
                self._metrics[f"gc/w_{layer}"].append(w)
            if self.args.ilproj and layer_data:
                self._metrics["gc/conflict_rate"].append(conflicts / len(layer_data))

    # -- logging and checkpoints -----------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            for key, values in self._metrics.items():
                if values:
                    logs[key] = sum(values) / len(values)
            self._metrics.clear()
        super().log(logs, start_time)

    def gradient_control_state(self) -> dict:
        """The state saved with each checkpoint (CLNorm weights and the settings they belong to)."""
        return {
            "layer_weights": {str(k): v for k, v in self.layer_weights.items()},
            "num_layers": self.num_layers,
            "anchor_layer": self.anchor_layer,
            "poison_epoch": self._poison_epoch,
        }

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            _atomic_write_json(os.path.join(folder, STATE_FILE), self.gradient_control_state())

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            warnings.warn(f"{path} not found: CLNorm weights restart from 1.0.", stacklevel=2)
            return
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
        if state.get("num_layers") != self.num_layers:
            raise ValueError(
                f"Checkpoint {checkpoint} was trained with num_layers={state.get('num_layers')}, "
                f"this model has {self.num_layers}."
            )
        self.layer_weights = {int(k): float(v) for k, v in state["layer_weights"].items()}
        self._poison_epoch = int(state.get("poison_epoch", 0))


def _split_poisoned(dataset, column: str):
    if not hasattr(dataset, "column_names") or column not in dataset.column_names:
        raise ValueError(
            f"Pass `poison_dataset=`, or a `train_dataset` with a boolean {column!r} column "
            "(as added by the attacks' `.poison()`); see `poison_column`."
        )
    flags = dataset[column]
    clean_idx = [i for i, f in enumerate(flags) if not f]
    poison_idx = [i for i, f in enumerate(flags) if f]
    if not clean_idx:
        raise ValueError(f"`train_dataset` has no clean rows ({column!r} is true everywhere).")
    return (
        dataset.select(clean_idx).remove_columns(column),
        dataset.select(poison_idx).remove_columns(column),
    )


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _atomic_write_json(path: str, payload: dict) -> None:
    write_json_atomic(path, payload)
