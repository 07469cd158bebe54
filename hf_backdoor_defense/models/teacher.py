"""The small clean teacher of W2SDefense: an encoder with a projection head sized to the student.

The head is ``pooled -> Linear(h_t -> h_s) -> ReLU -> Linear(h_s -> C)`` where ``h_t`` is the encoder's
hidden size and ``h_s`` the *student's* hidden size, so the post-ReLU projection (the teacher feature
``phi_t``) lives in the same space as the student's pooled final hidden state.

:class:`W2STeacher` is an ordinary :class:`~transformers.PreTrainedModel`: ``save_pretrained`` writes a
``config.json`` (``model_type: "w2s_teacher"``, the encoder's config nested inside) and
``model.safetensors``; ``W2STeacher.from_pretrained(folder)`` reloads it without ``trust_remote_code``.
Importing this module also registers the config with ``AutoConfig``.

Example:
    >>> from hf_backdoor_defense.models.teacher import W2STeacher, train_teacher
    >>> teacher, tok = train_teacher("bert-base-uncased", student_hidden_size=4096,
    ...                              train_dataset=clean["train"], output_dir="teacher")  # doctest: +SKIP
    >>> teacher = W2STeacher.from_pretrained("teacher")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import ModelOutput

__all__ = ["W2STeacherConfig", "W2STeacher", "W2STeacherOutput", "train_teacher"]

POOLING_CHOICES = ("mean", "cls", "pooler")


class W2STeacherConfig(PretrainedConfig):
    """Configuration of :class:`W2STeacher`.

    Args:
        encoder_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of the encoder backbone (any ``AutoModel`` encoder: BERT, RoBERTa, MiniLM, ...).
        student_hidden_size (`int`, defaults to 768):
            Width ``h_s`` of the projection, equal to the student's ``hidden_size``.
        num_labels (`int`, defaults to 2):
            Number of classes ``C``.
        pooling (`str`, defaults to `"mean"`):
            How the encoder output is pooled: ``"mean"`` (masked mean over tokens), ``"cls"`` (first
            token's last hidden state) or ``"pooler"`` (the encoder's ``pooler_output``).
        head_dropout (`float`, defaults to 0.1):
            Dropout applied to the pooled vector before the projection (training only).
    """

    model_type = "w2s_teacher"

    def __init__(
        self,
        encoder_config: dict | PretrainedConfig | None = None,
        student_hidden_size: int = 768,
        pooling: str = "mean",
        head_dropout: float = 0.1,
        **kwargs,
    ):
        if isinstance(encoder_config, PretrainedConfig):
            encoder_config = encoder_config.to_dict()
        self.encoder_config = encoder_config
        self.student_hidden_size = int(student_hidden_size)
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"`pooling` must be one of {POOLING_CHOICES}, got {pooling!r}.")
        self.pooling = pooling
        self.head_dropout = float(head_dropout)
        super().__init__(**kwargs)

    def get_encoder_config(self) -> PretrainedConfig:
        """The encoder's configuration as a :class:`PretrainedConfig` object."""
        if self.encoder_config is None:
            raise ValueError("W2STeacherConfig.encoder_config is not set: pass the encoder's config.")
        cfg = dict(self.encoder_config)
        model_type = cfg.pop("model_type")
        return AutoConfig.for_model(model_type, **cfg)


@dataclass
class W2STeacherOutput(ModelOutput):
    """Output of :class:`W2STeacher`: ``loss`` (with labels), ``logits`` ``[B, C]``, ``features`` ``[B, h_s]``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None


class W2STeacher(PreTrainedModel):
    """Encoder + ``Linear(h_t->h_s) -> ReLU -> Linear(h_s->C)`` head; returns logits and the post-ReLU feature.

    Build one around pre-trained encoder weights with :meth:`from_encoder`; reload a saved teacher with
    :meth:`from_pretrained`.

    Example:
        >>> teacher = W2STeacher.from_encoder("bert-base-uncased", student_hidden_size=4096, num_labels=2)  # doctest: +SKIP
        >>> out = teacher(**tok(["a fine film"], return_tensors="pt"))  # doctest: +SKIP
        >>> out.logits.shape, out.features.shape  # doctest: +SKIP
        (torch.Size([1, 2]), torch.Size([1, 4096]))
    """

    config_class = W2STeacherConfig
    base_model_prefix = "w2s_teacher"
    supports_gradient_checkpointing = True

    def __init__(self, config: W2STeacherConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config.get_encoder_config())
        hidden_t = self.encoder.config.hidden_size
        self.dropout = nn.Dropout(config.head_dropout)
        self.projection = nn.Linear(hidden_t, config.student_hidden_size)
        self.classifier = nn.Linear(config.student_hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        # Only the head is ours; the encoder initialises its own modules.
        if module is self.projection or module is self.classifier:
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path: str | os.PathLike,
        student_hidden_size: int,
        num_labels: int = 2,
        pooling: str = "mean",
        head_dropout: float = 0.1,
        **encoder_kwargs: Any,
    ) -> W2STeacher:
        """A fresh teacher around pre-trained encoder weights (a Hub name or a local folder)."""
        encoder_kwargs.setdefault("trust_remote_code", False)
        encoder = AutoModel.from_pretrained(encoder_name_or_path, **encoder_kwargs)
        config = W2STeacherConfig(
            encoder_config=encoder.config,
            student_hidden_size=student_hidden_size,
            num_labels=num_labels,
            pooling=pooling,
            head_dropout=head_dropout,
        )
        return cls(config, encoder=encoder)

    @property
    def feature_size(self) -> int:
        """Width of the teacher feature ``phi_t`` (the student's hidden size)."""
        return self.config.student_hidden_size

    def _pool(self, outputs, attention_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = outputs.last_hidden_state
        if self.config.pooling == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError(
                    "pooling='pooler' but the encoder returns no pooler_output: use 'mean' or 'cls'."
                )
            return outputs.pooler_output
        if self.config.pooling == "cls":
            return hidden[:, 0]
        from .pooling import masked_mean

        return masked_mean(hidden, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> W2STeacherOutput:
        enc_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            enc_kwargs["token_type_ids"] = token_type_ids
        outputs = self.encoder(**enc_kwargs, return_dict=True)
        pooled = self.dropout(self._pool(outputs, attention_mask))
        features = F.relu(self.projection(pooled))
        logits = self.classifier(features)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return W2STeacherOutput(loss=loss, logits=logits, features=features)


AutoConfig.register(W2STeacherConfig.model_type, W2STeacherConfig, exist_ok=True)


def train_teacher(
    encoder_name_or_path: str | os.PathLike,
    student_hidden_size: int,
    train_dataset,
    *,
    output_dir: str | os.PathLike,
    eval_dataset=None,
    num_labels: int | None = None,
    args: TrainingArguments | None = None,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    pooling: str = "mean",
    tokenizer=None,
    save: bool = True,
) -> tuple[W2STeacher, Any]:
    """Fully fine-tune a :class:`W2STeacher` on clean text-classification data with the standard Trainer.

    Args:
        encoder_name_or_path: Hub name or folder of the encoder (BERT-class).
        student_hidden_size: The student's ``config.hidden_size`` (the projection width).
        train_dataset: A ``datasets.Dataset`` with ``text_column`` and ``label_column`` (trusted clean data).
        output_dir: Where the Trainer writes; with ``save=True`` the final teacher and its tokenizer go here.
        eval_dataset: Optional clean validation set (same columns).
        num_labels: Number of classes; inferred from a ``ClassLabel`` column or the label values if unset.
        args: ``TrainingArguments``; defaults to 3 epochs, lr 2e-5, batch 32, no intermediate checkpoints.
        max_length: Teacher tokenizer truncation length.
        pooling: ``"mean"``, ``"cls"`` or ``"pooler"`` (see :class:`W2STeacherConfig`).
        tokenizer: The encoder's tokenizer; loaded from ``encoder_name_or_path`` if unset.

    Returns:
        ``(teacher, tokenizer)``; the teacher is in eval mode.

    Example:
        >>> teacher, tok = train_teacher(assets.minilm_path(), 576, clean_train, output_dir="t")  # doctest: +SKIP
    """
    for col in (text_column, label_column):
        if col not in train_dataset.column_names:
            raise ValueError(
                f"train_dataset has no column {col!r} (columns: {train_dataset.column_names}); "
                f"pass text_column=/label_column= naming your columns."
            )
    if num_labels is None:
        feature = train_dataset.features[label_column]
        num_labels = getattr(feature, "num_classes", None) or int(max(train_dataset[label_column])) + 1
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(encoder_name_or_path)
    teacher = W2STeacher.from_encoder(
        encoder_name_or_path, student_hidden_size=student_hidden_size, num_labels=num_labels, pooling=pooling
    )

    def _tokenize(ds):
        def fn(batch):
            enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
            enc["labels"] = batch[label_column]
            return enc

        return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="Tokenizing (teacher)")

    if args is None:
        args = TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=3,
            learning_rate=2e-5,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            save_strategy="no",
            report_to="none",
        )
    trainer = Trainer(
        model=teacher,
        args=args,
        train_dataset=_tokenize(train_dataset),
        eval_dataset=_tokenize(eval_dataset) if eval_dataset is not None else None,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train()
    if save:
        trainer.save_model(str(output_dir))
    teacher.eval()
    return teacher, tokenizer
