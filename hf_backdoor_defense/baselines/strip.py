"""STRIP for text: flag the inputs whose prediction survives heavy perturbation (an inference-time baseline).

From "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks" (Gao et al., ACSAC 2019), adapted to
text as in "Design and Evaluation of a Multi-Domain Trojan Detection Method on Deep Neural Networks" (Gao et
al., 2021). A backdoored model answers the target label whenever the trigger is present, whatever else the
sentence says; a clean input's prediction wavers when half of its words are replaced. For each input,
``num_copies`` perturbed copies replace ``swap_ratio`` of its words with words of clean sentences; the mean
entropy (bits) of the predictions over the copies is the input's score (:meth:`STRIP.scores`), and inputs under a threshold are
rejected. The threshold is the ``frr`` quantile of the clean dev inputs' scores, so that about ``frr`` of clean
inputs are rejected.

Choices where the papers are silent, each documented here:

* The replacement words of a copy are the highest TF-IDF words of one randomly drawn clean dev sentence, in
  decreasing TF-IDF; when it has fewer words than the positions to fill, the rest are drawn uniformly from
  the distinct words of all the clean dev sentences. Words are lower-cased ``\\w\\w+`` runs without English
  stop words (scikit-learn's list; ``stop_words=False`` keeps them), and IDF is smoothed,
  ``ln((1 + n) / (1 + df)) + 1``, as OpenBackdoor's ``TfidfVectorizer`` does.
* Positions are drawn uniformly with replacement, as in the reference implementation (so about 39 % of the
  words change at ``swap_ratio=0.5``, not half); copies are seeded, so a run is reproducible.
* An input's score averages its own copies. (OpenBackdoor's reshape averages copies of different inputs.)

Example:
    >>> from hf_backdoor_defense.baselines import STRIP, STRIPConfig
    >>> strip = STRIP(model, tokenizer, STRIPConfig(frr=0.01)).fit(clean_dev_texts)   # doctest: +SKIP
    >>> strip.detect(["cf the film was dull"])                                        # doctest: +SKIP
    array([ True])
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .common import check_positive_ints, texts_of

__all__ = ["STRIP", "STRIPConfig"]

_WORD = re.compile(r"(?u)\b\w\w+\b")


@dataclass
class STRIPConfig:
    """Settings of :class:`STRIP`.

    Args:
        num_copies: Perturbed copies per input.
        swap_ratio: Fraction of an input's words replaced in each copy.
        frr: False rejection rate allowed on the clean dev inputs (sets the threshold).
        stop_words: Leave English stop words out of the replacement words, as OpenBackdoor does (needs
            scikit-learn, the ``baselines`` extra).
        batch_size: Classifier batch size.
        max_length: Classifier truncation length.
        seed: Seed of the perturbations.
        show_progress: Progress bars.
    """

    num_copies: int = field(default=5, metadata={"help": "Perturbed copies per input."})
    swap_ratio: float = field(default=0.5, metadata={"help": "Fraction of the words replaced in each copy."})
    frr: float = field(default=0.01, metadata={"help": "Clean inputs rejected (sets the threshold)."})
    stop_words: bool = field(default=True, metadata={"help": "Leave English stop words out of the replacements."})
    batch_size: int = field(default=32, metadata={"help": "Classifier batch size."})
    max_length: int = field(default=128, metadata={"help": "Classifier truncation length."})
    seed: int = field(default=0, metadata={"help": "Seed of the perturbations."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        check_positive_ints(self, "num_copies", "batch_size", "max_length")
        if not 0.0 < self.swap_ratio <= 1.0:
            raise ValueError(f"`swap_ratio` must lie in (0, 1] (the fraction of words replaced), got {self.swap_ratio}.")
        if not 0.0 <= self.frr < 1.0:
            raise ValueError(f"`frr` must lie in [0, 1) (the clean inputs rejected), got {self.frr}.")


def tfidf_words(texts: list[str], stop_words: bool = True) -> list[list[str]]:
    """For each text, its distinct words (without English stop words unless ``stop_words=False``), in
    decreasing TF-IDF (ties by first occurrence)."""
    drop: frozenset[str] = frozenset()
    if stop_words:
        try:
            from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS as drop
        except ImportError as err:
            raise ImportError("STRIP takes its stop words from scikit-learn: pip install "
                              "'hf-backdoor-defense[baselines]', or pass stop_words=False.") from err

    docs = [[w for w in _WORD.findall(t.lower()) if w not in drop] for t in texts]
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)
    out = []
    for d in docs:
        counts = Counter(d)
        order = list(dict.fromkeys(d))
        weight = {w: counts[w] * (math.log((1 + n) / (1 + df[w])) + 1) for w in order}
        out.append(sorted(order, key=lambda w: -weight[w]))
    return out


class STRIP:
    """The STRIP detector of a sequence classifier: :meth:`fit` on clean dev texts, then :meth:`detect`.

    Args:
        model: The (possibly backdoored) sequence classifier; not modified.
        tokenizer: Its tokenizer (with a pad token).
        config: :class:`STRIPConfig`.
    """

    def __init__(self, model: Any, tokenizer: Any, config: STRIPConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or STRIPConfig()
        self.threshold: float | None = None
        self._pieces: list[list[str]] = []
        self._vocabulary: list[str] = []

    def fit(self, clean_dev: Any, text_column: str = "text") -> STRIP:
        """Build the replacement words from ``clean_dev`` (texts or a dataset) and set the threshold from the
        scores of the same texts. Returns ``self``."""
        texts = texts_of(clean_dev, text_column)
        if not texts:
            raise ValueError("`clean_dev` is empty: STRIP needs clean dev texts for its replacements and threshold.")
        self._pieces = [p for p in tfidf_words(texts, self.config.stop_words) if p]
        if not self._pieces:
            raise ValueError("`clean_dev`: no word of two or more letters, other than stop words, in the clean "
                             "texts to replace with; give STRIP clean sentences of the task.")
        self._vocabulary = sorted({w for p in self._pieces for w in p})
        scores = np.sort(self.scores(texts))
        self.clean_scores = scores
        self.threshold = float(scores[min(int(len(scores) * self.config.frr), len(scores) - 1)])
        return self

    def perturb(self, text: str, rng: np.random.Generator) -> str:
        """One perturbed copy of ``text``."""
        words = text.split()
        m = int(len(words) * self.config.swap_ratio)
        if m == 0:
            return text
        piece = self._pieces[int(rng.integers(len(self._pieces)))]
        positions = rng.integers(0, len(words), m)
        if m > len(piece):  # the drawn sentence runs out: words of other clean sentences fill the rest
            piece = piece + [self._vocabulary[int(i)] for i in rng.integers(0, len(self._vocabulary), m - len(piece))]
        for i, position in enumerate(positions):
            words[int(position)] = piece[i]
        return " ".join(words)

    def scores(self, texts: Any, text_column: str = "text") -> np.ndarray:
        """Each text's score: the mean prediction entropy (bits) over its perturbed copies (low: suspect)."""
        from datasets import Dataset

        from ..metrics import predict_proba

        if not self._pieces:
            raise ValueError("call `fit(clean_dev)` first: STRIP replaces words with words of clean dev texts.")
        texts = texts_of(texts, text_column)
        rng = np.random.default_rng(self.config.seed)
        copies = [self.perturb(t, rng) for t in texts for _ in range(self.config.num_copies)]
        probs = predict_proba(self.model, self.tokenizer, Dataset.from_dict({"text": copies}),
                              batch_size=self.config.batch_size, max_length=self.config.max_length,
                              desc="STRIP copies", disable_progress_bar=not self.config.show_progress)
        bits = -(probs * np.log2(np.clip(probs, 1e-12, 1.0))).sum(-1)
        return bits.reshape(len(texts), self.config.num_copies).mean(1)

    def rejects(self, scores: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
        """``True`` where a score (:meth:`scores`) is under the threshold: the decision of :meth:`detect`, from
        scores already computed. ``predicted`` is not needed (STRIP rejects whatever the prediction)."""
        if self.threshold is None:
            raise ValueError("call `fit(clean_dev)` first: the threshold comes from the clean dev scores.")
        return np.asarray(scores) < self.threshold

    def detect(self, texts: Any, text_column: str = "text") -> np.ndarray:
        """``True`` for each input STRIP rejects (its score is under the threshold)."""
        if self.threshold is None:
            raise ValueError("call `fit(clean_dev)` first: the threshold comes from the clean dev scores.")
        return self.rejects(self.scores(texts, text_column))

