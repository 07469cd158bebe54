"""RAP: a rare word trained to lower the target class on clean inputs only (an inference-time baseline).

From "RAP: Robustness-Aware Perturbations for Defending against Backdoor Attacks on NLP Models" (Yang et al.,
EMNLP 2021). Inputs carrying a backdoor trigger hold the target class far more firmly than clean inputs of that
class. RAP learns the embedding of one rare word so that putting it in front of a clean input lowers the
target-class probability by between ``lower`` and ``upper``; at test time, an input predicted as the target
whose probability drops by less than a threshold is rejected. The threshold is the ``frr`` quantile of the drops
of the clean dev inputs of the target class that the model predicts as the target.

As in the authors' code, the word is trained on the clean dev inputs *of the target class* (when labels are
given), and each step moves the vector by ``learning_rate`` times the sum of every gradient so far: their loop
never zeroes the gradient, which they note converges faster. A threshold at or below zero means that at
least ``frr`` of the clean target-class inputs were not lowered at all by the word; the authors' advice,
repeated in a warning, is to raise ``scale`` and fit again (each fit starts from the word's own embedding).

Choices where the paper is silent, each documented:

* The model's weights are never changed: the learned vector replaces the word's embedding through
  ``inputs_embeds`` wherever the word's token occurs, so the defense works on a frozen (or quantised, or
  adapter) classifier and the caller's model stays as it was. The vector starts from the word's embedding row
  and keeps its norm after every step, as in the reference implementation.
* The word is inserted as the first word of the text; it must be one token of the model's tokenizer (the
  default ``"mb"`` is one for BERT WordPiece and differs from the BadNets triggers ``cf``/``mn``/``bb``/``tq``).
* Only inputs predicted as the target class can be rejected: the others are not attack successes, and their
  target probability has little room to drop.
* The model stays in eval mode while the word is trained (no dropout), as in OpenBackdoor; the authors' script
  leaves dropout on.

Example:
    >>> from hf_backdoor_defense.baselines import RAP, RAPConfig
    >>> rap = RAP(model, tokenizer, RAPConfig(target_label=1)).fit(clean_dev)   # doctest: +SKIP
    >>> rap.detect(["cf the film was dull"])                                     # doctest: +SKIP
    array([ True])
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import check_positive_ints, texts_of

__all__ = ["RAP", "RAPConfig"]


@dataclass
class RAPConfig:
    """Settings of :class:`RAP`.

    Args:
        word: The rare word whose embedding is learned (one token of the model's tokenizer).
        target_label: The class the backdoor produces (the class RAP protects).
        lower: Smallest target-probability drop wanted on clean inputs.
        upper: Largest target-probability drop wanted on clean inputs.
        epochs: Passes over the clean dev rows of the target class.
        learning_rate: Step size on the word's vector (times the running sum of its gradients; norm kept).
        scale: Weight of the "drop too small" part of the loss.
        frr: Clean target-class inputs rejected (sets the threshold).
        batch_size: Batch size.
        max_length: Truncation length.
        show_progress: Progress bars.
    """

    word: str = field(default="mb", metadata={"help": "Rare word whose embedding is learned (one token)."})
    target_label: int = field(default=1, metadata={"help": "The class the backdoor produces."})
    lower: float = field(default=0.1, metadata={"help": "Smallest wanted drop of the target probability."})
    upper: float = field(default=0.3, metadata={"help": "Largest wanted drop of the target probability."})
    epochs: int = field(default=5, metadata={"help": "Passes over the clean target-class dev rows."})
    learning_rate: float = field(default=1e-2, metadata={"help": "Step size on the word's vector."})
    scale: float = field(default=1.0, metadata={"help": "Weight of the drop-too-small part of the loss."})
    frr: float = field(default=0.01, metadata={"help": "Clean target-class inputs rejected (sets the threshold)."})
    batch_size: int = field(default=32, metadata={"help": "Batch size."})
    max_length: int = field(default=128, metadata={"help": "Truncation length."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower < self.upper <= 1.0:
            raise ValueError(f"`lower` and `upper` must satisfy 0 <= lower < upper <= 1 (drops of a probability), "
                             f"got {self.lower} and {self.upper}.")
        check_positive_ints(self, "epochs", "batch_size", "max_length")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}.")
        if not 0.0 <= self.frr < 1.0:
            raise ValueError(f"`frr` must lie in [0, 1) (the clean inputs rejected), got {self.frr}.")
        if not self.word.strip() or len(self.word.split()) != 1:
            raise ValueError(f"`word` must be one word, got {self.word!r}.")


class RAP:
    """The RAP detector of a sequence classifier: :meth:`fit` on clean dev data, then :meth:`detect`.

    Args:
        model: The (possibly backdoored) sequence classifier; its weights are not changed.
        tokenizer: Its tokenizer (with a pad token).
        config: :class:`RAPConfig`.
    """

    def __init__(self, model: Any, tokenizer: Any, config: RAPConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or RAPConfig()
        ids = tokenizer(self.config.word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"`word` {self.config.word!r} is {len(ids)} tokens for this tokenizer: choose a rare "
                             "word that is a single token (e.g. 'mb' for BERT WordPiece).")
        self.token_id = ids[0]
        row = model.get_input_embeddings().weight[self.token_id].detach().float().clone()
        self.norm = float(row.norm())
        self._initial = row  # every fit starts here, as the authors retrain from the original model
        self.vector = row.clone()
        self.threshold: float | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ forward passes
    def _batch(self, texts: list[str], with_word: bool) -> dict[str, torch.Tensor]:
        if with_word:
            texts = [f"{self.config.word} {t}" for t in texts]
        device = next(self.model.parameters()).device
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                              return_tensors="pt").to(device)

    def _probs(self, texts: list[str], vector: torch.Tensor | None) -> torch.Tensor:
        """Class probabilities; with ``vector``, the word is inserted and its embedding replaced by it."""
        inputs = self._batch(texts, vector is not None)
        if vector is None:
            logits = self.model(**inputs).logits
        else:
            ids = inputs.pop("input_ids")
            table = self.model.get_input_embeddings()
            embeds = table(ids)
            where = (ids == self.token_id).unsqueeze(-1)
            embeds = torch.where(where, vector.to(embeds.dtype).to(embeds.device), embeds)
            logits = self.model(inputs_embeds=embeds, **inputs).logits
        return logits.float().softmax(-1)

    # ------------------------------------------------------------------ training and detection
    def fit(self, clean_dev: Any, text_column: str = "text", label_column: str = "label") -> RAP:
        """Learn the word's vector on ``clean_dev`` and set the threshold from the drops of its inputs predicted
        as the target. Returns ``self``.

        ``clean_dev`` is a list of texts (all used) or a dataset with ``text_column``; when the dataset also
        has ``label_column``, RAP uses its rows labelled ``target_label`` only, as its authors do.
        """
        texts = texts_of(clean_dev, text_column)
        if not texts:
            raise ValueError("`clean_dev` is empty: RAP learns its word on clean dev texts.")
        c, was_training = self.config, self.model.training
        if label_column in getattr(clean_dev, "column_names", ()):
            labels = clean_dev[label_column]
            texts = [t for t, y in zip(texts, labels) if int(y) == c.target_label]
            if not texts:
                raise ValueError(f"`clean_dev`: no row has `{label_column}` == target_label {c.target_label}; RAP "
                                 "learns its word on clean inputs of the target class. Check `target_label`.")
        self.model.eval()
        self.history = []
        vector = self._initial.clone().requires_grad_(True)
        summed = torch.zeros_like(vector)  # the authors never zero the gradient: each step uses the running sum
        try:
            for epoch in range(c.epochs):
                losses, inside = [], 0
                starts = range(0, len(texts), c.batch_size)
                for start in tqdm(starts, desc=f"RAP epoch {epoch + 1}", disable=not c.show_progress, leave=False):
                    batch = texts[start : start + c.batch_size]
                    with torch.no_grad():
                        base = self._probs(batch, None)[:, c.target_label]
                    moved = self._probs(batch, vector)[:, c.target_label]
                    change = moved - base  # wanted in [-upper, -lower]
                    loss = c.scale * torch.relu(change + c.lower).mean() + torch.relu(-c.upper - change).mean()
                    (grad,) = torch.autograd.grad(loss, vector)
                    with torch.no_grad():
                        summed += grad
                        vector -= c.learning_rate * summed
                        vector *= self.norm / vector.norm().clamp(min=1e-12)
                    losses.append(loss.item() * len(batch))
                    inside += int(((change <= -c.lower) & (change >= -c.upper)).sum())
                self.history.append({"epoch": epoch + 1, "loss": sum(losses) / len(texts),
                                     "share_in_range": inside / len(texts)})
            self.vector = vector.detach()
            drops, predicted = self._drops(texts)
            target_drops = drops[predicted == c.target_label]
            self.clean_drops = target_drops
            if len(target_drops) == 0:
                warnings.warn("RAP: the model predicts no clean dev input as the target class, so there is no drop "
                              "to set the threshold from; it rejects nothing. Use more clean dev data.", stacklevel=2)
                self.threshold = float("-inf")
            else:
                self.threshold = float(np.nanpercentile(target_drops, 100 * c.frr))
                if self.threshold <= 0:
                    warnings.warn(f"RAP: the threshold is {self.threshold:.4f} <= 0: the word did not lower at least "
                                  f"{c.frr:.0%} of the clean target-class inputs (in range after training: "
                                  f"{self.history[-1]['share_in_range']:.0%}). Raise `scale` (the authors' advice) "
                                  "or `epochs` and fit again.", stacklevel=2)
        finally:
            self.model.train(was_training)
        return self

    def _drops(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each text's target-probability drop with the word in front, and the model's prediction without it
        (eval mode, restored after)."""
        c, out, preds = self.config, [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(texts), c.batch_size):
                    batch = texts[start : start + c.batch_size]
                    base = self._probs(batch, None)
                    moved = self._probs(batch, self.vector)
                    out.append((base[:, c.target_label] - moved[:, c.target_label]).cpu().numpy())
                    preds.append(base.argmax(-1).cpu().numpy())
        finally:
            self.model.train(was_training)
        return np.concatenate(out), np.concatenate(preds)

    def scores(self, texts: Any, text_column: str = "text") -> np.ndarray:
        """The target-probability drop of each input when the learned word is put in front (small: suspect)."""
        return self._drops(texts_of(texts, text_column))[0]

    def rejects(self, scores: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """``True`` where an input predicted as the target has a drop (:meth:`scores`) under the threshold: the
        decision of :meth:`detect`, from scores and predictions already computed."""
        if self.threshold is None:
            raise ValueError("call `fit(clean_dev)` first: the threshold comes from the clean dev drops.")
        return (np.asarray(predicted) == self.config.target_label) & (np.asarray(scores) < self.threshold)

    def detect(self, texts: Any, text_column: str = "text") -> np.ndarray:
        """``True`` for each input predicted as the target whose drop is under the threshold."""
        if self.threshold is None:
            raise ValueError("call `fit(clean_dev)` first: the threshold comes from the clean dev drops.")
        return self.rejects(*self._drops(texts_of(texts, text_column)))

