"""Weight-space purification of fine-tuned models and PEFT adapters.

* :class:`FineMixing`: reset a random or magnitude-selected fraction of the fine-tuned dimensions.
* :class:`EmbeddingPurification` (E-PUR): reset the embeddings of rare tokens that drifted far.
* :class:`FinePurifying`: reset the dimensions with the largest ``δ² / (H + ε)`` (diffusion theory).
* :func:`compose` / :class:`Sequential`: chain them; :func:`ratio_search`: choose the ratio under a
  clean-accuracy budget; the clean fine-tune is in :mod:`hf_backdoor_defense.trainers.purification`.

Example:
    >>> from hf_backdoor_defense.purification import EmbeddingPurification, FinePurifying, compose
    >>> purifier = compose(EmbeddingPurification(num_tokens=100), FinePurifying(ratio=0.3))
    >>> # result = purifier.purify(suspect, pretrained, clean, tokenizer=tok); result.model, result.report
"""

from .base import PurificationResult, Purifier, Sequential, compose, select_top
from .epur import EmbeddingPurification, log_frequency_weight, token_frequencies
from .fine_mixing import FineMixing
from .fine_purifying import FinePurifying
from .hessian import empirical_fisher
from .ratio_search import RatioSearchResult, dev_accuracy, ratio_search

__all__ = [
    "EmbeddingPurification",
    "FineMixing",
    "FinePurifying",
    "PurificationResult",
    "Purifier",
    "RatioSearchResult",
    "Sequential",
    "compose",
    "dev_accuracy",
    "empirical_fisher",
    "log_frequency_weight",
    "ratio_search",
    "select_top",
    "token_frequencies",
]
