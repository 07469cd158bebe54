"""ONION: remove the words whose deletion makes a sentence much more fluent (an inference-time baseline).

From "ONION: A Simple and Effective Defense Against Textual Backdoor Attacks" (Qi et al., EMNLP 2021). A
trigger word such as ``cf`` breaks the fluency of the sentence it is inserted into. For a sentence of words
``w_1 .. w_n`` with perplexity ``p_0`` under a language model, and ``p_i`` the perplexity of the sentence
without ``w_i``, the suspicion score of ``w_i`` is ``f_i = p_0 − p_i``; every word with ``f_i > threshold``
is removed before the classifier sees the sentence. The classifier itself is not touched.

Choices where the paper is silent, each an option:

* Words are whitespace-separated tokens, as in the paper's code; sentences with fewer than ``min_words``
  words are left as they are.
* The perplexity of a sentence is the exponentiated mean negative log-likelihood of its tokens, padding
  excluded, each sentence preceded by the language model's BOS token (or EOS when it has none) so that the
  first word is scored too.
* ``threshold`` defaults to 0 (remove every word whose deletion lowers the perplexity at all); choose it on a
  clean dev set with :meth:`ONION.choose_threshold` to bound the loss of clean accuracy.

Example:
    >>> from hf_backdoor_defense.baselines import ONION, ONIONConfig
    >>> onion = ONION(ONIONConfig(language_model="gpt2"))               # doctest: +SKIP
    >>> onion.filter_texts(["the film cf was a delight"])                 # doctest: +SKIP
    ['the film was a delight']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import check_positive_ints, texts_of

__all__ = ["ONION", "ONIONConfig"]


@dataclass
class ONIONConfig:
    """Settings of :class:`ONION`.

    Args:
        language_model: Causal LM scoring fluency: a Hub id (``"gpt2"``, the paper's) or a local folder.
        threshold: Remove the words whose deletion lowers the perplexity by more than this.
        batch_size: Sentences per language-model batch.
        max_length: Truncation length of the language model, in tokens.
        min_words: Sentences with fewer words are left unchanged.
        trust_remote_code: Allow code from the language model's repository (off by default).
        show_progress: Progress bar over the batches.
    """

    language_model: str = field(default="gpt2", metadata={"help": "Causal LM (Hub id or folder) scoring fluency."})
    threshold: float = field(default=0.0, metadata={"help": "Remove words whose deletion lowers perplexity by more."})
    batch_size: int = field(default=32, metadata={"help": "Sentences per language-model batch."})
    max_length: int = field(default=96, metadata={"help": "Language-model truncation length (tokens)."})
    min_words: int = field(default=2, metadata={"help": "Shorter sentences are left unchanged."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the LM repository's code."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bar over the batches."})

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold):
            raise ValueError(f"`threshold` must be a finite number, got {self.threshold}.")
        check_positive_ints(self, "batch_size", "max_length", "min_words")


class ONION:
    """The ONION filter: :meth:`filter_texts` returns the sentences without their suspicious words.

    Args:
        config: :class:`ONIONConfig` (default: GPT-2 from the Hub, threshold 0).
        model: An already loaded causal LM (then ``config.language_model`` is not loaded).
        tokenizer: Its tokenizer (required with ``model``).
    """

    def __init__(self, config: ONIONConfig | None = None, *, model: Any = None, tokenizer: Any = None):
        self.config = config or ONIONConfig()
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both `model` and `tokenizer` (an already loaded language model), or neither.")
        if model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            source = self.config.language_model
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.config.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=self.config.trust_remote_code)
        self.model = model.eval()
        self.tokenizer = tokenizer
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self._prefix = [] if start is None else [start]
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self._prefix or [0])[0]

    def perplexities(self, texts: list[str]) -> np.ndarray:
        """Perplexity of each text under the language model (padding excluded), in batches."""
        out = np.zeros(len(texts), dtype=np.float64)
        device = next(self.model.parameters()).device
        starts = range(0, len(texts), self.config.batch_size)
        for start in tqdm(starts, desc="ONION perplexity", unit="batch", disable=not self.config.show_progress):
            batch = texts[start : start + self.config.batch_size]
            ids = [self._prefix + self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in batch]
            ids = [x[: self.config.max_length] for x in ids]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [self._pad] * (width - len(x)) for x in ids], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            scored = mask[:, 1:].float()
            mean = (nll * scored).sum(1) / scored.sum(1).clamp(min=1)
            out[start : start + len(batch)] = torch.exp(mean).cpu().double().numpy()
        return out

    def suspicion_scores(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """For each text, ``(word, p_0 − p_i)`` for every word (an empty list for texts under ``min_words``)."""
        words = [t.split() for t in texts]
        variants, owners = [], []
        for index, ws in enumerate(words):
            if len(ws) < self.config.min_words:
                continue
            variants.append(" ".join(ws))
            variants.extend(" ".join(ws[:i] + ws[i + 1 :]) for i in range(len(ws)))
            owners.append(index)
        ppl = self.perplexities(variants)
        scores: list[list[tuple[str, float]]] = [[] for _ in texts]
        at = 0
        for index in owners:
            ws = words[index]
            whole, without = ppl[at], ppl[at + 1 : at + 1 + len(ws)]
            scores[index] = [(w, float(whole - p)) for w, p in zip(ws, without)]
            at += 1 + len(ws)
        return scores

    def filter_texts(self, texts: list[str], threshold: float | None = None) -> list[str]:
        """The texts without the words whose suspicion score exceeds ``threshold`` (default: the config's)."""
        bar = self.config.threshold if threshold is None else threshold
        return [_keep(text, scores, bar) for text, scores in zip(texts, self.suspicion_scores(list(texts)))]

    def filter_dataset(self, dataset: Any, text_column: str = "text") -> Any:
        """A new ``datasets.Dataset`` with ``text_column`` filtered (the input dataset is not modified)."""
        filtered = self.filter_texts(texts_of(dataset, text_column))
        return dataset.remove_columns([text_column]).add_column(text_column, filtered)

    def choose_threshold(self, classify: Any, dev_texts: list[str], dev_labels: list[int],
                         candidates: list[float], budget: float = 0.02) -> tuple[float, list[dict]]:
        """The lowest threshold (the most words removed) whose clean dev accuracy, through ``classify``
        (texts -> predicted labels), stays within ``budget`` of the unfiltered accuracy; and every row tried.

        Scores are computed once; each candidate only re-filters. Falls back to the highest candidate when
        none meets the budget.
        """
        if not candidates:
            raise ValueError("`candidates`: give at least one threshold to try.")
        labels = np.asarray(dev_labels)
        baseline = float((np.asarray(classify(list(dev_texts))) == labels).mean())
        scores = self.suspicion_scores(list(dev_texts))
        rows = []
        for bar in sorted(candidates):
            texts = [_keep(t, s, bar) for t, s in zip(dev_texts, scores)]
            accuracy = float((np.asarray(classify(texts)) == labels).mean())
            rows.append({"threshold": bar, "dev_accuracy": accuracy, "within_budget": accuracy >= baseline - budget})
        inside = [r["threshold"] for r in rows if r["within_budget"]]
        return (min(inside) if inside else max(r["threshold"] for r in rows)), rows


def _keep(text: str, scores: list[tuple[str, float]], bar: float) -> str:
    if not scores:
        return text
    return " ".join(word for word, score in scores if score <= bar)
