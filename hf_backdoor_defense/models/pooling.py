"""Sequence classifiers that read a masked mean over the tokens instead of [CLS], and the encoder setups.

Sentence-transformer checkpoints such as all-MiniLM-L6-v2 were trained with mean pooling: their
``pooler.dense`` was never trained (bias exactly zero, weights like a random initialisation), yet
``BertForSequenceClassification`` classifies from [CLS] through it. This module offers the three ways of
putting a classification head on such an encoder, named by :data:`POOLING_MODES`:

* ``"cls"``: transformers' own ``AutoModelForSequenceClassification`` ([CLS] through the checkpoint's pooler).
  Adapters leave the pooler frozen; the purifiers treat it as pre-trained body.
* ``"pooler_head"``: the same model, but the pooler counts as part of the task head: adapters train it
  (``modules_to_save``), the purifiers keep it as head rather than resetting it to its "pre-trained" value.
* ``"mean"``: :class:`AutoModelForMeanPooledSequenceClassification`: masked mean of the last hidden states,
  dropout, ``classifier`` (``Linear(hidden, num_labels)``). No pooler at all.

The mean-pooled classes are ordinary subclasses of each architecture's ``PreTrainedModel`` (BERT, RoBERTa,
DistilBERT, ... anything ``AutoModel`` builds), made on first use: ``from_pretrained`` loads a base encoder
checkpoint or a saved classifier, ``save_pretrained`` writes safetensors, and the head is called
``classifier`` so PEFT's ``SEQ_CLS`` task type trains and saves it (``modules_to_save``).

Example:
    >>> from hf_backdoor_defense.models import AutoModelForMeanPooledSequenceClassification
    >>> model = AutoModelForMeanPooledSequenceClassification.from_pretrained("bert-base-uncased", num_labels=2)  # doctest: +SKIP
    >>> type(model).__name__  # doctest: +SKIP
    'BertForMeanPooledSequenceClassification'
    >>> model.save_pretrained("out"); reloaded = load_sequence_classifier("out")  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ..options import POOLING_MODES, check_pooling

__all__ = [
    "POOLING_MODES",
    "AutoModelForMeanPooledSequenceClassification",
    "check_pooling",
    "head_module_names",
    "is_mean_pooled",
    "load_sequence_classifier",
    "masked_mean",
    "mean_pooled_class",
]

_SUFFIX = "ForMeanPooledSequenceClassification"
_CLASSES: dict[type, type] = {}


def head_module_names(pooling: str) -> list[str]:
    """Modules of a classifier built with ``pooling`` that belong to the task head (no pre-trained value).

    ``classifier`` always; the pooler too for ``"pooler_head"``. Adapters list them in ``modules_to_save``,
    the purifiers pass them as ``head_names``.
    """
    return ["classifier", "pooler"] if check_pooling(pooling) == "pooler_head" else ["classifier"]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` ``[B, T, H]`` over the positions where ``attention_mask`` is 1 (all without a mask)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class _MeanPooledHead:
    """Forward pass and head of the mean-pooled classifiers; mixed into each architecture's PreTrainedModel."""

    _hbd_base_class: type[PreTrainedModel]

    def __init__(self, config: PretrainedConfig, *inputs: Any, **kwargs: Any):
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        extra = {}
        if "add_pooling_layer" in inspect.signature(self._hbd_base_class.__init__).parameters:
            extra["add_pooling_layer"] = False
        setattr(self, self.base_model_prefix, self._hbd_base_class(config, **extra))
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", getattr(config, "dropout", 0.1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids, "inputs_embeds": inputs_embeds,
                 "output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        outputs = getattr(self, self.base_model_prefix)(
            **{k: v for k, v in given.items() if v is not None}, return_dict=True)
        pooled = masked_mean(outputs.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = self._loss(logits, labels) if labels is not None else None
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of transformers' sequence classifiers (regression, single- or multi-label)."""
        config = self.config
        if config.problem_type is None:
            if self.num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        if config.problem_type == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def mean_pooled_class(config_class: type[PretrainedConfig] | PretrainedConfig) -> type[PreTrainedModel]:
    """The mean-pooled classifier class of an architecture (``BertForMeanPooledSequenceClassification``, ...).

    Built once per configuration class from the architecture's ``AutoModel`` class and its
    ``PreTrainedModel`` parent, so weight loading (``base_model_prefix``), initialisation and saving are
    the architecture's own.
    """
    from transformers import MODEL_MAPPING

    if isinstance(config_class, PretrainedConfig):
        config_class = type(config_class)
    if config_class not in _CLASSES:
        try:
            base = MODEL_MAPPING[config_class]
        except KeyError as err:
            raise ValueError(f"no AutoModel class for {config_class.__name__}: mean pooling needs an encoder "
                             "that transformers' AutoModel builds.") from err
        parent = next(c for c in base.__mro__[1:] if issubclass(c, PreTrainedModel) and c is not PreTrainedModel)
        name = base.__name__.removesuffix("Model") + _SUFFIX
        cls = type(name, (_MeanPooledHead, parent), {"_hbd_base_class": base, "__module__": __name__,
                                                    "_keys_to_ignore_on_load_unexpected": [r"pooler\."],
                                                    "__doc__": f"{base.__name__} + masked mean pooling + classifier."})
        globals()[name] = cls  # importable by name, like any model class
        _CLASSES[config_class] = cls
    return _CLASSES[config_class]


class AutoModelForMeanPooledSequenceClassification:
    """Builds the mean-pooled classifier of whatever encoder a checkpoint holds, like transformers' Auto classes.

    ``from_pretrained`` takes a base encoder (a new head is initialised) or a saved mean-pooled classifier
    (the head is loaded), with transformers' usual keyword arguments (``num_labels``, ``dtype``, ...).
    ``trust_remote_code`` is never enabled.
    """

    def __init__(self) -> None:
        raise OSError("use AutoModelForMeanPooledSequenceClassification.from_pretrained(...) or .from_config(...)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, trust_remote_code=False, **hub)
        return mean_pooled_class(config).from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        return mean_pooled_class(config)(config, **kwargs)


def is_mean_pooled(config: PretrainedConfig | dict) -> bool:
    """Whether a saved classifier's config says it was a mean-pooled one (its ``architectures`` entry)."""
    architectures = config.get("architectures") if isinstance(config, dict) else config.architectures
    return any(str(a).endswith(_SUFFIX) for a in architectures or [])


def load_sequence_classifier(name_or_path: str | os.PathLike, *, pooling: str | None = None, **kwargs: Any):
    """A sequence classifier from a checkpoint, built for ``pooling`` (see :data:`POOLING_MODES`).

    ``pooling=None`` reloads a saved classifier as what it was: mean-pooled when its config names a
    mean-pooled class, transformers' own ``AutoModelForSequenceClassification`` otherwise. ``"cls"`` and
    ``"pooler_head"`` build the same model (they differ in what adapters and purifiers treat as head).
    """
    from transformers import AutoModelForSequenceClassification

    if pooling is None:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs.get("trust_remote_code", False))
        pooling = "mean" if is_mean_pooled(config) else "cls"
    if check_pooling(pooling) == "mean":
        return AutoModelForMeanPooledSequenceClassification.from_pretrained(name_or_path, **kwargs)
    kwargs.setdefault("trust_remote_code", False)
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs)
