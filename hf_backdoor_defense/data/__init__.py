"""Dataset loaders: the built-in offline corpora, local files and Hub names, all as ``text`` / ``label``.

Example:
    >>> from hf_backdoor_defense.data import load_text_classification
    >>> spam = load_text_classification("spamassassin", collection=1)   # doctest: +SKIP
"""

from .corpora import BUILTIN_CORPORA, mail_body_text, rotten_tomatoes_dataset, spamassassin_dataset
from .loading import load_text_classification
from .tokenize import tokenize_dataset

__all__ = [
    "BUILTIN_CORPORA",
    "load_text_classification",
    "mail_body_text",
    "rotten_tomatoes_dataset",
    "spamassassin_dataset",
    "tokenize_dataset",
]
