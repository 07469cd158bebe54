"""Train-and-score cells shared by ``make demo`` and the benchmarks: one place for how each method trains.

A *cell* is one way of training a classifier (``full_ft``, ``lora``, ``musclelora``, or ``gradient_control``: the
same LoRA trained by the Gradient Control attacker) on one dataset;
:func:`train_cell` returns the trained model and how long it took. The experiment engine
(:mod:`hf_backdoor_defense.matrix`) builds every efficacy cell from these.

Example:
    >>> from hf_backdoor_defense.experiments import CellSettings, train_cell   # doctest: +SKIP
    >>> model, info = train_cell("musclelora", train_tok, tokenizer, model_dir, CellSettings(),
    ...                          reference=reference_tok, workdir="/tmp/run")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

METHODS = {
    "full_ft": "full fine-tune",
    "lora": "LoRA (q/v, r=8, alpha=32)",
    "musclelora": "MuScleLoRA + gradient alignment",
    "gradient_control": "LoRA (q/v, r=8, alpha=32) trained by the Gradient Control attacker",
}


@dataclass
class CellSettings:
    """Training settings of a cell; adapters and full fine-tuning take different learning rates.

    Args:
        epochs: Training epochs.
        batch_size: Train batch size (the reference batch has the same size).
        max_length: Truncation length the data was tokenised with.
        full_ft_lr: Learning rate of full fine-tuning.
        adapter_lr: Learning rate of the LoRA and MuScleLoRA cells.
        alignment_preset: Gradient-alignment preset of the MuScleLoRA cell (``"encoder"`` or ``"llm"``).
        seed: Seed of the model head, data order and reference sampling.
        pooling: Encoder setup, one of :data:`hf_backdoor_defense.models.POOLING_MODES` (``"cls"``,
            ``"pooler_head"``, ``"mean"``).
        extra_args: Further ``MuScleLoRATrainingArguments`` fields (``GradientControlTrainingArguments`` fields for
            the ``gradient_control`` method).
        adapter_config: Further ``MuScleLoRAConfig`` fields of the ``musclelora`` cell (e.g.
            ``{"trainable_head": True, "init_weights": "paper"}``).
    """

    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = 64
    full_ft_lr: float = 5e-5
    adapter_lr: float = 2e-3
    alignment_preset: str = "encoder"
    seed: int = 0
    pooling: str = "cls"
    extra_args: dict = field(default_factory=dict)
    adapter_config: dict = field(default_factory=dict)


def lora_target_modules(config) -> list[str]:
    """The modules LoRA wraps in a model of ``config``: PEFT's attention projections for its architecture
    (``q_proj``/``v_proj`` for Llama, ``query``/``value`` for BERT), and ``query``/``value`` for the BERT-like
    encoders PEFT has no entry for (ALBERT, CamemBERT, Longformer, ...)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    return list(PEFT_TARGETS.get(config.model_type, ["query", "value"]))


def build_classifier(method: str, model_dir, num_labels: int, seed: int, pooling: str = "cls",
                     adapter_config: dict | None = None):
    """A fresh classifier from ``model_dir`` prepared for ``method``; returns ``(model, description)``.

    ``pooling`` decides the head (:mod:`hf_backdoor_defense.models.pooling`): with ``"pooler_head"`` LoRA also
    trains and saves the pooler (``modules_to_save``); MuScleLoRA's multi-scale part sits on the pooler there
    (as with ``"cls"``) and on the last block's feed-forward output under ``"mean"``, which has no pooler.
    ``adapter_config`` holds further ``MuScleLoRAConfig`` fields of the ``musclelora`` method.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from .models import head_module_names, load_sequence_classifier
    from .tuners.musclelora import MuScleLoRAConfig

    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {sorted(METHODS)}.")
    torch.manual_seed(seed)
    model = load_sequence_classifier(model_dir, pooling=pooling, num_labels=num_labels)
    if method == "full_ft":
        return model, METHODS[method]
    if method in ("lora", "gradient_control"):
        extra_head = [n for n in head_module_names(pooling) if n != "classifier"] or None
        config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=32, target_modules=lora_target_modules(model.config),
                            modules_to_save=extra_head)
        return get_peft_model(model, config), METHODS[method]
    config = MuScleLoRAConfig(task_type="SEQ_CLS", **(adapter_config or {}))
    return get_peft_model(model, config), METHODS[method]


def _accuracy(prediction) -> dict[str, float]:
    import numpy as np

    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def train_cell(method: str, train, tokenizer, model_dir, settings: CellSettings, *, reference=None, dev=None,
               workdir: str, num_labels: int = 2, disable_tqdm: bool = False):
    """Train one cell on the tokenised ``train`` set; return ``(model in eval mode, info dict)``.

    ``musclelora`` needs ``reference`` (tokenised trusted clean examples) for gradient alignment; the
    other methods run through the same trainer with alignment off, so every cell shares one code path, except
    ``gradient_control``: the attacker's trainer, which needs the ``is_poisoned`` column the attacks add.
    With ``dev`` (tokenised clean examples, disjoint from ``reference``) the accuracy on it is measured after
    every epoch and the best epoch's weights are kept (``info["dev_accuracy"]`` lists the epochs).
    """
    from transformers import DataCollatorWithPadding

    from .trainers import (
        GradientControlTrainer,
        GradientControlTrainingArguments,
        MuScleLoRATrainer,
        MuScleLoRATrainingArguments,
    )

    align = method == "musclelora"
    if align and reference is None:
        raise ValueError("method 'musclelora' needs a reference set of trusted clean examples (reference=).")
    model, description = build_classifier(method, model_dir, num_labels, settings.seed, settings.pooling,
                                          adapter_config=settings.adapter_config if align else None)
    if model.config.pad_token_id is None:  # decoder LMs: batching and their last-token head need it
        model.config.pad_token_id = tokenizer.pad_token_id
    best_dev = {"eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
                "metric_for_best_model": "accuracy", "save_total_limit": 1, "save_only_model": True,
                "per_device_eval_batch_size": 64} if dev is not None else {"save_strategy": "no"}
    common = dict(output_dir=os.path.join(workdir, f"{method}-{settings.seed}"),
                  per_device_train_batch_size=settings.batch_size, num_train_epochs=settings.epochs,
                  learning_rate=settings.full_ft_lr if method == "full_ft" else settings.adapter_lr,
                  seed=settings.seed, report_to=[], use_cpu=True, logging_steps=10, disable_tqdm=disable_tqdm,
                  **best_dev, **settings.extra_args)
    if method == "gradient_control":
        if "is_poisoned" not in train.column_names:
            raise ValueError("method 'gradient_control' needs the poisoned training set's `is_poisoned` column "
                             "(added by every attack's .poison()).")
        from .data import model_inputs

        train = model_inputs(train, keep=("is_poisoned",))
        args = GradientControlTrainingArguments(**{"poison_batch_size": settings.batch_size, **common})
        trainer = GradientControlTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                         compute_metrics=_accuracy if dev is not None else None,
                                         processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    else:
        args = MuScleLoRATrainingArguments(gradient_alignment=align, alignment_preset=settings.alignment_preset,
                                           **common)
        trainer = MuScleLoRATrainer(
            model=model, args=args, train_dataset=train, reference_dataset=reference if align else None,
            eval_dataset=dev, compute_metrics=_accuracy if dev is not None else None,
            processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    steps = max(1, trainer.state.global_step)
    info = {"method": description, "train_seconds": seconds, "seconds_per_step": seconds / steps,
            "log_history": list(trainer.state.log_history)}
    if dev is not None:
        info["dev_accuracy"] = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
        info["best_checkpoint"] = os.path.basename(trainer.state.best_model_checkpoint or "")
    return model, info

