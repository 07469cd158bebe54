"""BKI: find the backdoor keyword in the training data with the backdoored model, drop its sentences, retrain.

From "Mitigating Backdoor Attacks in LSTM-based Text Classification Systems by Backdoor Keyword
Identification" (Chen & Dai, Neurocomputing 2021). A model trained on poisoned data leans on the trigger: removing
the trigger word changes the sentence's representation far more than removing an ordinary word. For every
training sentence, each word is scored by ``‖h(x) − h(x without the word)‖∞``; the ``top_words`` highest words
of the sentence are its suspects. Over the whole set, a word's score is ``log10(count) · mean score`` (count:
the sentences where it is a suspect); the ``num_keywords`` best are the backdoor keywords, and every sentence
with a keyword among its suspects is removed before retraining.

Choices where the paper is silent (it used an LSTM's hidden state), each documented:

* ``h`` is the last hidden layer averaged over the non-padding tokens, for every architecture (an encoder read
  through [CLS] or by mean pooling, or a decoder).
* Words are whitespace-separated; the keyword match is on the word as written.

Example:
    >>> from hf_backdoor_defense.baselines import BKI, BKIConfig
    >>> bki = BKI(suspect, tokenizer, BKIConfig()).fit(poisoned_train)      # doctest: +SKIP
    >>> bki.keywords[0]["word"], int(bki.flagged.sum())                     # doctest: +SKIP
    ('cf', 200)
    >>> kept = poisoned_train.select(np.flatnonzero(~bki.flagged))          # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import check_positive_ints, texts_of

__all__ = ["BKI", "BKIConfig", "sentence_representations"]


@dataclass
class BKIConfig:
    """Settings of :class:`BKI`.

    Args:
        top_words: Suspect words kept per sentence.
        num_keywords: Backdoor keywords chosen over the whole set.
        batch_size: Sentences (with their deletions) per forward pass.
        max_length: Truncation length.
        show_progress: Progress bar over the sentences.
    """

    top_words: int = field(default=5, metadata={"help": "Suspect words kept per sentence."})
    num_keywords: int = field(default=1, metadata={"help": "Backdoor keywords chosen over the set."})
    batch_size: int = field(default=64, metadata={"help": "Texts per forward pass."})
    max_length: int = field(default=128, metadata={"help": "Truncation length."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bar over the sentences."})

    def __post_init__(self) -> None:
        check_positive_ints(self, "top_words", "num_keywords", "batch_size", "max_length")


def sentence_representations(model: Any, tokenizer: Any, texts: list[str], *, max_length: int = 128) -> torch.Tensor:
    """The last hidden layer of ``model`` averaged over each text's non-padding tokens (no gradients)."""
    device = next(model.parameters()).device
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].float()
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class BKI:
    """Backdoor keyword identification on a (poisoned) training set, with the model trained on it.

    Args:
        model: The model trained on the data (not modified).
        tokenizer: Its tokenizer (with a pad token).
        config: :class:`BKIConfig`.

    After :meth:`fit`: ``keywords`` (ranked dicts ``word``, ``count``, ``mean``, ``score``), ``flagged`` (a
    boolean per training sentence: remove it) and ``suspects`` (each sentence's suspect words).
    """

    def __init__(self, model: Any, tokenizer: Any, config: BKIConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or BKIConfig()
        self.keywords: list[dict] = []
        self.suspects: list[list[tuple[str, float]]] = []
        self.flagged: np.ndarray | None = None

    def word_scores(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """For each text, its ``top_words`` words with the largest ``‖h(x) − h(x without w)‖∞``."""
        c, out = self.config, []
        was_training = self.model.training
        self.model.eval()
        try:
            for text in tqdm(texts, desc="BKI", unit="sentence", disable=not c.show_progress):
                words = text.split()
                if not words:
                    out.append([])
                    continue
                variants = [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
                reps = torch.cat([sentence_representations(self.model, self.tokenizer, variants[i : i + c.batch_size],
                                                           max_length=c.max_length)
                                  for i in range(0, len(variants), c.batch_size)])
                deltas = (reps[1:] - reps[0]).abs().amax(-1).cpu().numpy()
                order = np.argsort(-deltas, kind="stable")[: c.top_words]
                out.append([(words[i], float(deltas[i])) for i in order])
        finally:
            self.model.train(was_training)
        return out

    def fit(self, data: Any, text_column: str = "text") -> BKI:
        """Score every sentence of ``data`` (texts or a dataset), choose the keywords, flag their sentences."""
        texts = texts_of(data, text_column)
        if not texts:
            raise ValueError("`data` is empty: BKI analyses the training set the model was trained on.")
        self.suspects = self.word_scores(texts)
        totals: dict[str, list[float]] = {}
        for suspects in self.suspects:
            for word, value in suspects:
                totals.setdefault(word, []).append(value)
        ranked = sorted(({"word": w, "count": len(v), "mean": float(np.mean(v)),
                          "score": math.log10(len(v)) * float(np.mean(v))} for w, v in totals.items()),
                        key=lambda r: -r["score"])
        self.keywords = ranked[: self.config.num_keywords]
        chosen = {k["word"] for k in self.keywords}
        self.flagged = np.array([any(w in chosen for w, _ in s) for s in self.suspects], dtype=bool)
        return self
