"""The clean fine-tune that follows a weight-space purification (Fine-mixing, E-PUR, Fine-purifying).

After some dimensions were reset to their pre-trained values the model has lost part of its task
accuracy; a few epochs on the small trusted clean set recover it. This is the standard
:class:`~transformers.Trainer` with defaults for that job (no checkpoints, no reporting, text datasets
tokenised on the fly).

Example:
    >>> from hf_backdoor_defense.trainers.purification import PurificationTrainingArguments, finetune_clean
    >>> args = PurificationTrainingArguments(output_dir="/tmp/purify-ft", num_train_epochs=3)
    >>> # model = finetune_clean(result.model, clean_train, tokenizer, args)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any

from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from ..hub import DefenseModelCardMixin
from ..quantization import keep_4bit_trainable
from .loss_scaling import use_mean_loss_for_classification

__all__ = ["PurificationTrainer", "PurificationTrainingArguments", "finetune_clean"]


@dataclass
class PurificationTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults for the post-purification clean fine-tune.

    Parameters that control the clean fine-tune:

    Args:
        max_length: Truncation length when a text dataset is tokenised.
        text_column: Text column of a text dataset.
        num_train_epochs: Epochs on the clean set (default 3; the clean set is small).
        learning_rate: Default 2e-5 (full models); use ~2e-4 for adapters.
        per_device_train_batch_size: Default 16.
        save_strategy: Default ``"no"``: the purified model is saved by the caller.
        report_to: Default ``"none"``.
    """

    max_length: int = field(default=128, metadata={"help": "Truncation length for text datasets."})
    text_column: str = field(default="text", metadata={"help": "Text column of a text dataset."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the Trainer may write (a temp dir if None)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of the clean fine-tune."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate of the clean fine-tune."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size of the clean fine-tune."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing; 'no' by default."})
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Loggers; 'none' by default."})
    logging_strategy: str = field(default="no", metadata={"help": "Logging; 'no' by default."})

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = tempfile.mkdtemp(prefix="hbd-purify-ft-")
        if self.max_length < 1:
            raise ValueError(f"`max_length` must be >= 1, got {self.max_length}.")
        if self.num_train_epochs < 0:
            raise ValueError(f"`num_train_epochs` must be >= 0, got {self.num_train_epochs}.")
        super().__post_init__()


def _prepare(dataset: Any, tokenizer: Any, args: PurificationTrainingArguments) -> Any:
    if dataset is None or len(dataset) == 0:
        raise ValueError("`train_dataset` is empty: the clean fine-tune needs at least one example.")
    from ..data import model_inputs, tokenize_dataset

    if "input_ids" not in dataset.column_names:
        dataset = tokenize_dataset(dataset, tokenizer, max_length=args.max_length, text_column=args.text_column)
    if "labels" not in dataset.column_names and "label" in dataset.column_names:
        dataset = dataset.rename_column("label", "labels")
    return model_inputs(dataset)


class PurificationTrainer(DefenseModelCardMixin, Trainer):
    """A :class:`~transformers.Trainer` for the clean fine-tune after purification.

    Text datasets (``text``/``label``) are tokenised with ``processing_class`` and padded per batch.

    Example:
        >>> # trainer = PurificationTrainer(model=purified, args=args, train_dataset=clean, processing_class=tok)
        >>> # trainer.train()
    """

    _tag_names = ["hf-backdoor-defense", "purification"]

    def __init__(self, model=None, args: PurificationTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, **kwargs):
        args = args or PurificationTrainingArguments()
        if train_dataset is not None:
            train_dataset = _prepare(train_dataset, processing_class, args)
        if eval_dataset is not None:
            eval_dataset = _prepare(eval_dataset, processing_class, args)
        kwargs.setdefault("data_collator", DataCollatorWithPadding(processing_class) if processing_class else None)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        use_mean_loss_for_classification(self)
        keep_4bit_trainable(self.model)  # bitsandbytes' CPU inference packing would cut the gradient


def finetune_clean(model: Any, train_dataset: Any, tokenizer: Any,
                   args: PurificationTrainingArguments | None = None) -> Any:
    """Fine-tune ``model`` (in place: pass the purified copy) on the clean set and return it in eval mode.

    ``args.num_train_epochs == 0`` returns the model untouched.
    """
    args = args or PurificationTrainingArguments()
    if args.num_train_epochs == 0:
        return model
    tokenizer = _pad_ready(tokenizer)
    trainer = PurificationTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
    trainer.train()
    model.eval()
    return model


def _pad_ready(tokenizer: Any) -> Any:
    if tokenizer is not None and tokenizer.pad_token is None:
        import copy

        tokenizer = copy.copy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
