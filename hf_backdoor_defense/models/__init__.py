"""Model classes of the package: classifiers with a chosen pooling (the encoder setups).

Example:
    >>> from hf_backdoor_defense.models import load_sequence_classifier
    >>> model = load_sequence_classifier("bert-base-uncased", pooling="mean", num_labels=2)  # doctest: +SKIP
"""

from .pooling import (
    POOLING_MODES,
    AutoModelForMeanPooledSequenceClassification,
    check_pooling,
    head_module_names,
    is_mean_pooled,
    load_sequence_classifier,
    mean_pooled_class,
)

__all__ = [
    "POOLING_MODES",
    "AutoModelForMeanPooledSequenceClassification",
    "check_pooling",
    "head_module_names",
    "is_mean_pooled",
    "load_sequence_classifier",
    "mean_pooled_class",
]
