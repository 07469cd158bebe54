"""Dataset loaders: the built-in offline corpora, local files and Hub names, all as ``text`` / ``label``.

Example:
    >>> from hf_backdoor_defense.data import load_text_classification
    >>> spam = load_text_classification("spamassassin", collection=1)   # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

# Each name loads its module (and `datasets`) on first access, so the command line starts fast.
_LAZY = {
    "BUILTIN_CORPORA": ".corpora",
    "mail_body_text": ".corpora",
    "rotten_tomatoes_dataset": ".corpora",
    "spamassassin_dataset": ".corpora",
    "load_text_classification": ".loading",
    "load_dataset_splits": ".loading",
    "build_poisoned_splits": ".poisoned",
    "fit_splits_to_window": ".poisoned",
    "classification_to_instructions": ".instructions",
    "load_instruction_splits": ".instructions",
    "subsample": ".loading",
    "tokenize_dataset": ".tokenize",
    "model_inputs": ".tokenize",
    "check_trigger_room": ".truncation",
    "fit_dataset_to_tokens": ".truncation",
    "fit_to_tokens": ".truncation",
    "fit_to_window": ".truncation",
}

__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
