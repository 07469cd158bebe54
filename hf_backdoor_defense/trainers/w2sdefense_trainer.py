"""W2SDefense: unlearn a backdoor in a large student with a small clean teacher (weak-to-strong distillation).

Method from "Unlearning Backdoor Attacks for LLMs with Weak-to-Strong Knowledge Distillation"
(Zhao et al., Findings of ACL 2025). The poisoned student is frozen except for a PEFT adapter (and its
classification head); it is trained on a small clean set with

    L = a * CE(s, y) + b * T^2 * KL(softmax(t / T) || softmax(s / T)) + c * ||phi_t - phi_s||^2

where ``t``/``s`` are teacher/student logits, ``phi_t`` the teacher's post-ReLU projection (see
:class:`~hf_backdoor_defense.models.teacher.W2STeacher`) and ``phi_s`` the student's final hidden state
(the input of its classification head) at the last non-padding token of each example.

Normalisation: every term is computed per example (the KL summed over classes, the squared L2 summed over
the ``h_s`` feature dimensions) and then averaged over the examples of the (accumulated, all-process) batch.

Example:
    >>> from peft import LoraConfig, get_peft_model
    >>> student = get_peft_model(backdoored_llm, LoraConfig(task_type="SEQ_CLS", r=8))  # doctest: +SKIP
    >>> args = W2SDefenseTrainingArguments(output_dir="out", preset="word", learning_rate=2e-4)  # doctest: +SKIP
    >>> trainer = W2SDefenseTrainer(model=student, teacher=teacher, teacher_tokenizer=teacher_tok,
    ...                             processing_class=student_tok, args=args, train_dataset=clean)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel, Trainer
from transformers.modeling_outputs import SequenceClassifierOutput

from ..hub import DefenseModelCardMixin
from ..quantization import keep_4bit_trainable
from .w2sdefense_config import (
    FEATURE_DISTANCES,
    TEACHER_PREFIX,
    W2SDefenseTrainingArguments,
)

__all__ = [
    "last_token_pool",
    "w2s_loss",
    "W2SDataCollator",
    "W2SDefenseTrainer",
]


class W2SDataCollator:
    """Tokenise every raw example for both the student and the teacher tokenizer.

    Returns ``input_ids``/``attention_mask`` (student), ``teacher_input_ids``/``teacher_attention_mask``
    (and ``teacher_token_type_ids`` if the teacher tokenizer makes them) and ``labels``. The student's
    padding side is the tokenizer's own (left or right both work).

    Example:
        >>> collator = W2SDataCollator(student_tok, teacher_tok)  # doctest: +SKIP
        >>> batch = collator([{"text": "a fine film", "label": 1}])  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer,
        teacher_tokenizer,
        *,
        max_length: int = 128,
        teacher_max_length: int = 128,
        text_column: str = "text",
        label_column: str = "label",
        pad_to_multiple_of: int | None = None,
    ):
        if tokenizer.pad_token is None:
            raise ValueError(
                "The student tokenizer has no pad token: set `tokenizer.pad_token = tokenizer.eos_token` "
                "and `model.config.pad_token_id = tokenizer.pad_token_id`."
            )
        self.tokenizer = tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.max_length = max_length
        self.teacher_max_length = teacher_max_length
        self.text_column = text_column
        self.label_column = label_column
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.text_column not in features[0]:
            raise ValueError(
                f"Examples have no {self.text_column!r} column (keys: {sorted(features[0])}); set "
                "`text_column` in W2SDefenseTrainingArguments to the raw-text column."
            )
        texts = [f[self.text_column] for f in features]
        common = {"padding": True, "truncation": True, "return_tensors": "pt"}
        student = self.tokenizer(
            texts, max_length=self.max_length, pad_to_multiple_of=self.pad_to_multiple_of, **common
        )
        teacher = self.teacher_tokenizer(texts, max_length=self.teacher_max_length, **common)
        batch = {"input_ids": student["input_ids"], "attention_mask": student["attention_mask"]}
        for key, value in teacher.items():
            batch[TEACHER_PREFIX + key] = value
        if self.label_column in features[0]:
            batch["labels"] = torch.tensor([int(f[self.label_column]) for f in features], dtype=torch.long)
        return batch


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Hidden state ``[B, L, H]`` at each row's last non-padding position (right or left padding) -> ``[B, H]``."""
    if attention_mask is None:
        return hidden[:, -1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (attention_mask.to(hidden.device).long() * positions).argmax(dim=-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def w2s_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    feature_distance: str = "squared_l2",
) -> dict[str, torch.Tensor]:
    """Per-example W2SDefense loss terms (unweighted), each of shape ``[B]``.

    Returns ``{"ce": CE(s, y), "kd": T^2 * KL(p_t || p_s), "feature": d(phi_t, phi_s)}`` where ``d`` is
    ``||phi_t - phi_s||_2^2`` (``feature_distance="squared_l2"``) or ``1 - cos(phi_t, phi_s)`` (``"cosine"``).
    """
    s = student_logits.float()
    t = teacher_logits.float()
    ce = F.cross_entropy(s, labels, reduction="none")
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2
    phi_t, phi_s = teacher_features.float(), student_features.float()
    if feature_distance == "squared_l2":
        feature = (phi_t - phi_s).pow(2).sum(dim=-1)
    elif feature_distance == "cosine":
        feature = 1.0 - F.cosine_similarity(phi_t, phi_s, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"feature_distance must be one of {list(FEATURE_DISTANCES)}, got {feature_distance!r}.")
    return {"ce": ce, "kd": kd, "feature": feature}


def _unwrap_base(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class W2SDefenseTrainer(DefenseModelCardMixin, Trainer):
    """Trainer that distils a small clean teacher into a (poisoned) PEFT student to unlearn its backdoor.

    Args:
        model: The student: a sequence-classification model (decoder LMs need ``config.pad_token_id``)
            wrapped with a PEFT adapter (LoRA, MuScleLoRA, ...), possibly 4-bit.
        teacher: A :class:`~hf_backdoor_defense.models.teacher.W2STeacher` (or any module returning
            ``logits`` and ``features``) trained on clean data. It is frozen, put in eval mode, moved to the
            training device, and never saved into the student's checkpoints.
        teacher_tokenizer: The teacher's tokenizer.
        args: :class:`W2SDefenseTrainingArguments`.
        processing_class: The student's tokenizer.
        train_dataset / eval_dataset: Raw datasets with the text and label columns.
        data_collator: Defaults to :class:`W2SDataCollator`.

    Loss components are logged separately as ``loss_ce``, ``loss_kd`` (``T^2 * KL``) and ``loss_feature``
    (unweighted; ``loss = a*loss_ce + b*loss_kd + c*loss_feature``).

    Example:
        >>> trainer = W2SDefenseTrainer(model=student, teacher=teacher, teacher_tokenizer=ttok,
        ...                             processing_class=stok, args=args, train_dataset=clean)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    _defense = "w2sdefense"
    _tag_names = ["hf-backdoor-defense", "w2sdefense", "backdoor-defense"]
    _paper = {
        "title": "Unlearning Backdoor Attacks for LLMs with Weak-to-Strong Knowledge Distillation",
        "id": "2410.14425",
    }

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        teacher: nn.Module,
        teacher_tokenizer,
        args: W2SDefenseTrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ):
        if args is None:
            args = W2SDefenseTrainingArguments(output_dir="w2sdefense-output")
        if not isinstance(args, W2SDefenseTrainingArguments):
            raise ValueError(
                "`args` must be a W2SDefenseTrainingArguments (it carries the loss weights and columns); "
                f"got {type(args).__name__}."
            )
        if teacher is None or teacher_tokenizer is None:
            raise ValueError("W2SDefenseTrainer needs `teacher` and `teacher_tokenizer` (see train_teacher).")
        if processing_class is None and data_collator is None:
            raise ValueError("Pass the student's tokenizer as `processing_class=`.")
        self._check_compatible(model, teacher)
        self._check_columns(train_dataset, args, "train_dataset")
        if isinstance(eval_dataset, dict):
            for name, ds in eval_dataset.items():
                self._check_columns(ds, args, f"eval_dataset[{name!r}]")
        else:
            self._check_columns(eval_dataset, args, "eval_dataset")
        if args.remove_unused_columns:
            warnings.warn(
                "remove_unused_columns=True: the text and label columns are kept anyway (the collator needs them).",
                stacklevel=2,
            )
        if data_collator is None:
            data_collator = W2SDataCollator(
                processing_class,
                teacher_tokenizer,
                max_length=args.max_length,
                teacher_max_length=args.teacher_max_length,
                text_column=args.text_column,
                label_column=args.label_column,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        keep_4bit_trainable(self.model)  # bitsandbytes' CPU inference packing would cut the gradient
        # The teacher is not part of self.model: it is never wrapped, optimised or checkpointed.
        teacher.requires_grad_(False)
        teacher.eval()
        self.teacher = teacher.to(self.args.device)
        self.teacher_tokenizer = teacher_tokenizer
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._feature_cache: dict[str, torch.Tensor] = {}
        self._feature_hook = self._register_feature_hook(model)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_compatible(model: nn.Module, teacher: nn.Module) -> None:
        config = _unwrap_base(model).config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        student_labels = getattr(config, "num_labels", None)
        teacher_labels = getattr(getattr(teacher, "config", None), "num_labels", None)
        if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
            raise ValueError(
                f"Teacher has {teacher_labels} labels but the student has {student_labels}: train the teacher "
                f"with num_labels={student_labels} (same label set and order as the student)."
            )
        width = getattr(teacher, "feature_size", None)
        if width is None and hasattr(teacher, "config"):
            width = getattr(teacher.config, "student_hidden_size", None)
        hidden = getattr(text_config, "hidden_size", None)
        if width is not None and hidden is not None and width != hidden:
            raise ValueError(
                f"Teacher feature width is {width} but the student's hidden_size is {hidden}: rebuild the teacher "
                f"with student_hidden_size={hidden} (train_teacher(..., student_hidden_size={hidden}))."
            )
        if getattr(text_config, "pad_token_id", None) is None:
            raise ValueError(
                "The student's config.pad_token_id is None: set `model.config.pad_token_id = "
                "tokenizer.pad_token_id` (decoder LMs need it to batch and to find the last token)."
            )

    @staticmethod
    def _check_columns(dataset, args: W2SDefenseTrainingArguments, name: str) -> None:
        columns = getattr(dataset, "column_names", None)
        if dataset is None or columns is None:
            return
        for col, arg in ((args.text_column, "text_column"), (args.label_column, "label_column")):
            if col not in columns:
                raise ValueError(
                    f"{name} has no column {col!r} (columns: {columns}): set `{arg}` in "
                    "W2SDefenseTrainingArguments or rename the column."
                )

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        for col in (self.args.text_column, self.args.label_column):
            if col not in self._signature_columns:
                self._signature_columns.append(col)

    # ------------------------------------------------------------------ student feature
    def _register_feature_hook(self, model: nn.Module):
        base = _unwrap_base(model)
        for name in ("score", "classifier"):
            head = getattr(base, name, None)
            if isinstance(head, nn.Module):

                def hook(module, args, kwargs):
                    hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
                    self._feature_cache["hidden"] = hidden

                return head.register_forward_pre_hook(hook, with_kwargs=True)
        return None  # fall back to output_hidden_states

    def _student_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], tokens: bool = False):
        """Logits and the student feature: pooled per example, or with ``tokens=True`` the last hidden layer at
        every position (``[B, L, H]``, after the final norm)."""
        self._feature_cache.clear()
        use_hidden_states = self._feature_hook is None or tokens
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            output_hidden_states=use_hidden_states,
        )
        hidden = outputs.hidden_states[-1] if use_hidden_states else self._feature_cache.pop("hidden")
        if tokens:
            return outputs.logits, hidden
        if hidden.dim() == 2:  # a head fed an already pooled vector
            return outputs.logits, hidden
        return outputs.logits, last_token_pool(hidden, inputs.get("attention_mask"))

    # ------------------------------------------------------------------ loss
    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        # One item per labelled example, summed over the accumulated micro-batches (and processes).
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = sum(int(b["labels"].ne(-100).sum()) for b in batch_samples)
        count = torch.tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        teacher_inputs = {
            k[len(TEACHER_PREFIX) :]: v for k, v in inputs.items() if k.startswith(TEACHER_PREFIX)
        }
        labels = inputs["labels"]
        authors = args.feature_alignment == "authors"
        student_logits, student_features = self._student_forward(model, inputs, tokens=authors)
        with torch.no_grad():
            teacher_out = self.teacher(**teacher_inputs)
        teacher_features = teacher_out.features.to(student_features.device)
        if authors:  # every token of every example against the batch's last teacher feature
            token_features = student_features
            student_features = teacher_features[-1:].expand(len(labels), -1)  # the KL/CE terms ignore it
        terms = w2s_loss(
            student_logits,
            teacher_out.logits,
            student_features,
            teacher_features,
            labels,
            temperature=args.temperature,
            feature_distance=args.feature_distance,
        )
        if authors:
            terms["feature"] = (token_features.float() - teacher_features[-1].float()).pow(2).sum(-1).mean(-1)
        weighted = {"ce": args.alpha_ce * terms["ce"], "kd": args.beta_kd * terms["kd"],
                    "feature": args.gamma_feature * terms["feature"]}
        per_example = weighted["ce"] + weighted["kd"] + weighted["feature"]
        if args.gradient_shares and model.training and self._measure_shares_now():
            self._log_gradient_shares(model, weighted)
        if num_items_in_batch is not None and model.training:
            loss = per_example.sum() / num_items_in_batch
            if args.average_tokens_across_devices and args.world_size > 1:
                loss = loss * args.world_size  # DDP averages gradients over processes
            self.loss_is_scaled_for_ga = True
        else:
            loss = per_example.mean()
            self.loss_is_scaled_for_ga = False

        mode = "train" if model.training else "eval"
        stacked = torch.stack([terms[k].detach().mean() for k in ("ce", "kd", "feature")])
        stacked = self.accelerator.gather(stacked.unsqueeze(0)).mean(dim=0)
        for key, value in zip(("loss_ce", "loss_kd", "loss_feature"), stacked.tolist()):
            self._metrics[mode][key].append(value)

        if return_outputs:
            return loss, SequenceClassifierOutput(loss=loss.detach(), logits=student_logits)
        return loss

    def _measure_shares_now(self) -> bool:
        """At logging steps only, once per optimizer step, never under multi-process training."""
        if self.args.world_size > 1:
            if not getattr(self, "_warned_shares", False):
                warnings.warn("gradient_shares is skipped under multi-process training.", stacklevel=3)
                self._warned_shares = True
            return False
        step = self.state.global_step
        every = self.args.logging_steps
        steps = int(every) if every >= 1 else max(1, round(self.state.max_steps * every))
        if step % steps != 0 or getattr(self, "_shares_step", None) == step:
            return False
        self._shares_step = step
        return True

    def _log_gradient_shares(self, model: nn.Module, weighted: dict[str, torch.Tensor]) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        norms = {}
        for name, term in weighted.items():
            if not term.requires_grad:
                norms[name] = 0.0
                continue
            grads = torch.autograd.grad(term.mean(), params, retain_graph=True, allow_unused=True)
            norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
        total = sum(norms.values()) or 1.0
        for name, value in norms.items():
            self._metrics["train"][f"grad_share_{name}"].append(value / total)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)  # in place: `evaluate()` returns this same dict
        self._metrics[mode].clear()
        super().log(logs, start_time)
