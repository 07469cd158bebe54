"""MuScleLoRA gradient alignment for TRL's `SFTTrainer` (causal-LM instruction tuning).

Kept apart from :mod:`hf_backdoor_defense.trainers.musclelora` so that importing the classification trainer
does not import TRL.

Example:
    >>> from hf_backdoor_defense.trainers.musclelora_sft import MuScleLoRASFTConfig, MuScleLoRASFTTrainer
    >>> args = MuScleLoRASFTConfig(output_dir="out", alignment_preset="llm")  # doctest: +SKIP
    >>> trainer = MuScleLoRASFTTrainer(model=model, args=args, train_dataset=poisoned_chat,
    ...                                reference_dataset=clean_chat, processing_class=tokenizer)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig, SFTTrainer

from ..hub import DefenseModelCardMixin
from .musclelora_config import GradientAlignmentArguments
from .musclelora_trainer import GradientAlignmentMixin

__all__ = ["MuScleLoRASFTConfig", "MuScleLoRASFTTrainer"]


@dataclass
class MuScleLoRASFTConfig(SFTConfig, GradientAlignmentArguments):
    r"""`trl.SFTConfig` plus the gradient-alignment fields of
    [`~hf_backdoor_defense.trainers.musclelora.GradientAlignmentArguments`] (see there for every field).

    For LLMs use ``alignment_preset="llm"`` (pure projection, the paper's LLM setting).
    """

    def __post_init__(self):
        super().__post_init__()
        self._resolve_alignment_arguments()


class MuScleLoRASFTTrainer(DefenseModelCardMixin, GradientAlignmentMixin, SFTTrainer):
    r"""`trl.SFTTrainer` with MuScleLoRA's gradient alignment.

    ``reference_dataset`` takes the same format as ``train_dataset`` (text, prompt/completion or messages)
    and goes through the same SFT preparation (tokenisation, chat template), without packing.
    The reference loss is the base `Trainer` loss (token-level mean), so SFT's logged token accuracy and
    entropy stay about training batches only.

    Args:
        reference_dataset (`datasets.Dataset`): trusted clean examples, same format as ``train_dataset``.
        *args, **kwargs: as for `trl.SFTTrainer`; ``args`` must be a [`MuScleLoRASFTConfig`].
    """

    _defense = "musclelora"
    _tag_names = ["trl", "sft", "hf-backdoor-defense", "musclelora", "gradient-alignment"]

    def _prepare_reference_dataset(self, dataset):
        if getattr(self, "_skip_prepare_dataset", False):
            return dataset
        return self._prepare_dataset(
            dataset,
            self.processing_class,
            self.args,
            False,
            getattr(self, "_formatting_func", None),
            "reference",
        )
