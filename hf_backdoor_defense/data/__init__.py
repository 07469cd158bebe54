"""Dataset loaders: the built-in offline corpora, local files and Hub names, all as ``text`` / ``label``.

Example:
    >>> from hf_backdoor_defense.data import load_text_classification
    >>> spam = load_text_classification("spamassassin", collection=1)   # doctest: +SKIP
"""

from .corpora import BUILTIN_CORPORA, mail_body_text, rotten_tomatoes_dataset, spamassassin_dataset
from .loading import load_text_classification
from .tokenize import tokenize_dataset
from .truncation import check_trigger_room, fit_dataset_to_tokens, fit_to_tokens, fit_to_window

__all__ = [
    "BUILTIN_CORPORA",
    "check_trigger_room",
    "fit_dataset_to_tokens",
    "fit_to_tokens",
    "fit_to_window",
    "load_text_classification",
    "mail_body_text",
    "rotten_tomatoes_dataset",
    "spamassassin_dataset",
    "tokenize_dataset",
]
