"""The arguments of W2SDefense distillation (`W2SDefenseTrainingArguments`), the authors' loss weights per trigger
family and :func:`authors_arguments` (the authors' whole regime)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..options import FEATURE_ALIGNMENTS, FEATURE_DISTANCES

__all__ = [
    "FEATURE_ALIGNMENTS",
    "FEATURE_DISTANCES",
    "TEACHER_PREFIX",
    "W2S_PRESETS",
    "authors_arguments",
    "W2SDefenseTrainingArguments",
]


# (alpha_ce, beta_kd, gamma_feature) per trigger family, the authors' values (ALGORITHMS.md §4).
W2S_PRESETS: dict[str, tuple[float, float, float]] = {
    "word": (5.0, 0.001, 0.001),
    "sentence": (3.0, 0.01, 0.001),
    "syntactic": (1.0, 0.035, 0.002),
}
TEACHER_PREFIX = "teacher_"


@dataclass
class W2SDefenseTrainingArguments(TrainingArguments):
    r"""Training arguments of :class:`W2SDefenseTrainer`.

    Parameters that control the loss:

    Args:
        preset (`str` or `None`, defaults to `"word"`):
            Trigger family whose published weights fill the unset ones of ``alpha_ce``, ``beta_kd``,
            ``gamma_feature``: ``"word"`` (5, 0.001, 0.001), ``"sentence"`` (3, 0.01, 0.001),
            ``"syntactic"`` (1, 0.035, 0.002). ``None`` requires all three weights to be set.
        alpha_ce (`float` or `None`):
            Weight ``a`` of the cross-entropy on the clean labels.
        beta_kd (`float` or `None`):
            Weight ``b`` of the temperature-scaled KL distillation term (multiplied by ``T^2``).
        gamma_feature (`float` or `None`):
            Weight ``c`` of the feature distance between teacher and student (see ``feature_distance``).
        temperature (`float`, defaults to 2.0):
            Distillation temperature ``T``.
        feature_distance (`str`, defaults to `"squared_l2"`):
            How ``phi_t`` and ``phi_s`` are compared. ``"squared_l2"`` is the paper's ``||phi_t - phi_s||^2``.
            ``"cosine"`` (``1 - cos(phi_t, phi_s)``, in [0, 2]) is this library's opt-in variant: it ignores the
            two features' scales, which differ by an order of magnitude when the student's final norm fixes
            ``||phi_s||`` (as in SmolLM2 / Llama). Weights tuned for one distance do not carry over.
        feature_alignment (`str`, defaults to `"per_example"`):
            Which student features meet which teacher features. ``"per_example"`` (the paper's description):
            each example's pooled student feature against its own teacher feature. ``"authors"`` (what the
            authors' code computes, opt-in): every student token of the batch, padding included, against the
            teacher feature of the batch's last example, averaged over batch x length: a pull of all tokens
            towards one point, with ``"squared_l2"`` only.
        gradient_shares (`bool`, defaults to `False`):
            At every logging step, measure how much of the update each weighted term makes: the norms of the
            gradients of ``a*CE``, ``b*KL`` and ``c*feature`` with respect to the trainable parameters, logged as
            shares ``grad_share_ce`` / ``grad_share_kd`` / ``grad_share_feature`` (sum 1). Three extra backward
            passes per logging step; not under multi-process training.

    Parameters that control the data:

    Args:
        text_column (`str`, defaults to `"text"`):
            Column with the raw text; tokenised by both tokenizers in the collator.
        label_column (`str`, defaults to `"label"`):
            Column with the integer labels.
        max_length (`int`, defaults to 128):
            Student tokenizer truncation length.
        teacher_max_length (`int`, defaults to 128):
            Teacher tokenizer truncation length.
        remove_unused_columns (`bool`, defaults to `False`):
            Kept ``False``: the collator needs the raw text column.
    """

    preset: str | None = field(
        default="word",
        metadata={
            "help": "Trigger family whose published loss weights fill unset alpha_ce/beta_kd/gamma_feature.",
            "choices": ["word", "sentence", "syntactic", None],
        },
    )
    alpha_ce: float | None = field(default=None, metadata={"help": "Weight a of the cross-entropy term."})
    beta_kd: float | None = field(default=None, metadata={"help": "Weight b of the T^2-scaled KL term."})
    gamma_feature: float | None = field(
        default=None, metadata={"help": "Weight c of the feature-alignment term (see feature_distance)."}
    )
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T."})
    feature_distance: str = field(
        default="squared_l2",
        metadata={
            "help": "Feature-alignment distance: 'squared_l2' (the paper) or 'cosine' (1 - cos, opt-in variant).",
            "choices": list(FEATURE_DISTANCES),
        },
    )
    feature_alignment: str = field(
        default="per_example",
        metadata={"help": "'per_example' (the paper) or 'authors' (every student token vs the batch's last teacher "
                          "feature, as the authors' code does).", "choices": list(FEATURE_ALIGNMENTS)},
    )
    gradient_shares: bool = field(
        default=False, metadata={"help": "Log each loss term's share of the gradient norm at every logging step."}
    )
    text_column: str = field(default="text", metadata={"help": "Dataset column with the raw text."})
    label_column: str = field(default="label", metadata={"help": "Dataset column with the integer labels."})
    max_length: int = field(default=128, metadata={"help": "Student tokenizer truncation length."})
    teacher_max_length: int = field(default=128, metadata={"help": "Teacher tokenizer truncation length."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator tokenises the raw text column itself."}
    )

    def __post_init__(self):
        if self.preset is not None and self.preset not in W2S_PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(W2S_PRESETS)} or None, got {self.preset!r}.")
        names = ("alpha_ce", "beta_kd", "gamma_feature")
        if self.preset is None:
            missing = [n for n in names if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    f"preset=None needs explicit {', '.join(missing)}: set them or choose a preset."
                )
        else:
            for name, value in zip(names, W2S_PRESETS[self.preset]):
                if getattr(self, name) is None:
                    setattr(self, name, value)
        for name in names:
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.alpha_ce == self.beta_kd == self.gamma_feature == 0:
            raise ValueError(
                "alpha_ce, beta_kd and gamma_feature are all 0: set at least one loss weight > 0."
            )
        if self.temperature <= 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}.")
        if self.feature_distance not in FEATURE_DISTANCES:
            raise ValueError(
                f"`feature_distance` must be one of {list(FEATURE_DISTANCES)}, got {self.feature_distance!r}."
            )
        if self.feature_alignment not in FEATURE_ALIGNMENTS:
            raise ValueError(
                f"`feature_alignment` must be one of {list(FEATURE_ALIGNMENTS)}, got {self.feature_alignment!r}."
            )
        if self.feature_alignment == "authors" and self.feature_distance != "squared_l2":
            raise ValueError("feature_alignment='authors' compares squared distances as the authors' code does: "
                             "use feature_distance='squared_l2'.")
        if self.max_length < 1 or self.teacher_max_length < 1:
            raise ValueError("`max_length` and `teacher_max_length` must be >= 1.")
        super().__post_init__()




def authors_arguments(output_dir: str, **overrides: Any) -> W2SDefenseTrainingArguments:
    """The schedule of the authors' code as :class:`W2SDefenseTrainingArguments`: batch 32, 5 epochs, lr 2e-4,
    AdamW with weight decay 0.01, no gradient clipping, a linear schedule without warmup, the word preset's
    weights (5, 0.001, 0.001) at temperature 2, and the best dev epoch kept (evaluated and saved every epoch;
    pass an ``eval_dataset`` and ``compute_metrics`` returning ``accuracy``). ``overrides`` replace any of them.

    Their LoRA is ``r = lora_alpha = 512`` with dropout 0.1 on the student's attention and score head; on small
    students an r of 64-192 with ``lora_alpha = r`` keeps the same scale.

    Example:
        >>> args = authors_arguments("out", per_device_train_batch_size=16)   # doctest: +SKIP
    """
    settings: dict[str, Any] = dict(
        output_dir=output_dir, per_device_train_batch_size=32, num_train_epochs=5, learning_rate=2e-4,
        weight_decay=0.01, max_grad_norm=0.0, lr_scheduler_type="linear", warmup_steps=0, preset="word",
        temperature=2.0, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
        metric_for_best_model="accuracy", greater_is_better=True, save_total_limit=1, report_to="none",
    )
    settings.update(overrides)
    return W2SDefenseTrainingArguments(**settings)
