"""Backdoor metrics: CACC, ASR, LFR, a Trainer ``compute_metrics`` factory, evaluation helpers,
a Trainer callback and the keyword-based ASR of generative backdoors.

Example:
    >>> from hf_backdoor_defense.metrics import clean_accuracy, label_flip_rate
    >>> clean_accuracy([0, 1], [0, 1]), label_flip_rate([1, 1, 0, 0], target_label=1)
    (1.0, 0.5)
"""

from .backdoor import (
    BEHAVIOURS,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    REFUSAL_PHRASES,
    attack_success_rate,
    clean_accuracy,
    generative_asr,
    is_refusal,
    label_flip_rate,
    make_compute_metrics,
    sentiment_of,
)
from .callback import BackdoorEvalCallback
from .evaluation import evaluate_backdoor, predict, predict_proba

__all__ = [
    "BEHAVIOURS",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "REFUSAL_PHRASES",
    "BackdoorEvalCallback",
    "attack_success_rate",
    "clean_accuracy",
    "evaluate_backdoor",
    "generative_asr",
    "is_refusal",
    "label_flip_rate",
    "make_compute_metrics",
    "predict",
    "predict_proba",
    "sentiment_of",
]
