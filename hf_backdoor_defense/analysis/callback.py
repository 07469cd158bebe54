"""The frequency analysis during training: its settings and the ``TrainerCallback`` that records the curves.

Example:
    >>> from hf_backdoor_defense.analysis import FrequencyAnalysisCallback, FrequencyAnalysisConfig
    >>> callback = FrequencyAnalysisCallback(probe, tokenizer, FrequencyAnalysisConfig(eval_steps=10))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from .history import FORMAT, save_frequency_history
from .kernel import frequency_errors, pairwise_distances
from .probe import probe_outputs

__all__ = ["DEFAULT_ABSOLUTE_SIGMAS", "DEFAULT_RELATIVE_SIGMAS", "FrequencyAnalysisCallback",
           "FrequencyAnalysisConfig"]

#: 25 kernel widths as multiples of the median pairwise distance (see `FrequencyAnalysisConfig.sigma_mode`).
DEFAULT_RELATIVE_SIGMAS = tuple(float(s) for s in np.linspace(0.05, 0.2, 25))
#: The paper's 25 widths on raw distances, used when ``sigma_mode="absolute"`` and no ``sigmas`` are given.
DEFAULT_ABSOLUTE_SIGMAS = tuple(float(s) for s in np.linspace(2.0, 8.0, 25))


@dataclass
class FrequencyAnalysisConfig:
    """Settings of the frequency analysis.

    Args:
        eval_steps (`int`, defaults to `10`):
            Compute the errors every this many optimizer steps (and at the last step).
        eval_at_start (`bool`, defaults to `True`):
            Also compute them before the first step (step 0).
        sigmas (`tuple[float, ...]` or `None`, defaults to `None`):
            Kernel widths σ. The errors are computed for each and their mean is the headline curve; the
            per-σ values are kept in the history. `None`: 25 values evenly spaced in [0.05, 0.2] with
            `sigma_mode="relative"`, or the paper's [2, 8] with `sigma_mode="absolute"`.
        sigma_mode (`str`, defaults to `"relative"`):
            `"relative"`: σ is a multiple of the median pairwise distance of the probe embeddings, so one
            setting works for any hidden size, length and pooling. `"absolute"`: σ is used on raw distances,
            as in the paper.
        pooling (`str`, defaults to `"flatten"`):
            How a sequence of token embeddings becomes a point: `"flatten"` (the paper: pad/truncate to
            `max_length`, zero the padded positions, concatenate) or `"mean"` (mean over real tokens).
        max_length (`int`, defaults to `64`):
            Fixed sequence length of the probe inputs (truncation and padding).
        embedding_source (`str`, defaults to `"current"`):
            `"current"`: the embedding output of the model being trained, recomputed at every evaluation
            (the paper). `"initial"`: computed once at the first evaluation and kept, so the kernel stays
            fixed over training. Identical under LoRA/MuScleLoRA, whose embeddings are frozen.
        batch_size (`int`, defaults to `32`):
            Batch size of the probe forward passes.
        text_column (`str`, defaults to `"text"`):
            Text column of the probe set.
        label_column (`str`, defaults to `"label"`):
            Training-label column of the probe set (for poisoned rows: the target label).
        poison_column (`str`, defaults to `"is_poisoned"`):
            Boolean column marking the poisoned rows of the probe set.
    """

    eval_steps: int = field(
        default=10, metadata={"help": "Compute the errors every this many optimizer steps."}
    )
    eval_at_start: bool = field(default=True, metadata={"help": "Also compute them before the first step."})
    sigmas: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "Kernel widths; None = 25 values in [0.05, 0.2] (relative) or [2, 8] (absolute)."},
    )
    sigma_mode: str = field(
        default="relative",
        metadata={"help": "'relative' (σ × median pairwise distance) or 'absolute' (raw distances, paper)."},
    )
    pooling: str = field(
        default="flatten",
        metadata={"help": "'flatten' (fixed length, the paper) or 'mean' over real tokens."},
    )
    max_length: int = field(default=64, metadata={"help": "Fixed sequence length of the probe inputs."})
    embedding_source: str = field(
        default="current",
        metadata={"help": "'current' (recomputed each time, the paper) or 'initial' (computed once)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Batch size of the probe forward passes."})
    text_column: str = field(default="text", metadata={"help": "Text column of the probe set."})
    label_column: str = field(default="label", metadata={"help": "Training-label column of the probe set."})
    poison_column: str = field(
        default="is_poisoned", metadata={"help": "Boolean column marking poisoned probe rows."}
    )

    def __post_init__(self) -> None:
        if self.eval_steps < 1:
            raise ValueError(f"`eval_steps` must be >= 1, got {self.eval_steps}.")
        if self.sigma_mode not in ("relative", "absolute"):
            raise ValueError(f"`sigma_mode` must be 'relative' or 'absolute', got {self.sigma_mode!r}.")
        if self.sigmas is None:
            self.sigmas = (
                DEFAULT_RELATIVE_SIGMAS if self.sigma_mode == "relative" else DEFAULT_ABSOLUTE_SIGMAS
            )
        self.sigmas = tuple(float(s) for s in self.sigmas)
        if not self.sigmas or any(not np.isfinite(s) or s <= 0 for s in self.sigmas):
            raise ValueError(f"`sigmas` must be a non-empty sequence of positive numbers, got {self.sigmas}.")
        if self.pooling not in ("flatten", "mean"):
            raise ValueError(f"`pooling` must be 'flatten' or 'mean', got {self.pooling!r}.")
        if self.max_length < 1:
            raise ValueError(f"`max_length` must be >= 1, got {self.max_length}.")
        if self.embedding_source not in ("current", "initial"):
            raise ValueError(
                f"`embedding_source` must be 'current' or 'initial', got {self.embedding_source!r}."
            )
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}.")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "sigmas": list(self.sigmas)}


class FrequencyAnalysisCallback(TrainerCallback):
    """Track the low/high-frequency errors of clean and backdoor probe examples during `Trainer.train()`.

    Every `config.eval_steps` optimizer steps (and at step 0 and at the end) the model is run on the probe
    set and one record is appended to `history`: ``{"step", "epoch", "backdoor_low", "clean_low",
    "backdoor_high", "clean_high", "per_sigma", "median_distance", "probe_seconds"}``. Only the main
    process computes.

    Args:
        probe_dataset (`datasets.Dataset`):
            Text, training label and ``is_poisoned`` columns, e.g. from [`build_probe_set`].
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Tokenizer for the probe texts; defaults to the trainer's `processing_class`.
        config ([`FrequencyAnalysisConfig`], *optional*):
            Settings; defaults to `FrequencyAnalysisConfig()`.
        disable_progress_bar (`bool`, defaults to `True`):
            Hide the per-evaluation progress bar.

    Example:
        >>> callback = FrequencyAnalysisCallback(probe, tokenizer)           # doctest: +SKIP
        >>> Trainer(..., callbacks=[callback]).train()                        # doctest: +SKIP
        >>> last = callback.history[-1]                                        # doctest: +SKIP
        >>> last["backdoor_low"]                                               # doctest: +SKIP
    """

    def __init__(
        self,
        probe_dataset,
        tokenizer=None,
        config: FrequencyAnalysisConfig | None = None,
        disable_progress_bar: bool = True,
    ):
        self.config = config or FrequencyAnalysisConfig()
        cfg = self.config
        for column in (cfg.text_column, cfg.label_column, cfg.poison_column):
            if column not in probe_dataset.column_names:
                raise ValueError(
                    f"probe_dataset has no {column!r} column (columns: {probe_dataset.column_names}); "
                    "build it with build_probe_set() from a poisoned training set or set the column names."
                )
        if len(probe_dataset) < 2:
            raise ValueError("probe_dataset needs at least 2 examples.")
        self.texts = list(probe_dataset[cfg.text_column])
        self.labels = torch.as_tensor(np.asarray(probe_dataset[cfg.label_column]), dtype=torch.long)
        self.is_poisoned = torch.as_tensor(np.asarray(probe_dataset[cfg.poison_column], dtype=bool))
        self.tokenizer = tokenizer
        self.disable_progress_bar = disable_progress_bar
        self.history: list[dict] = []
        self._distances: torch.Tensor | None = None

    # ------------------------------------------------------------------ public
    def evaluate(self, model, step: int, epoch: float | None = None, tokenizer=None) -> dict:
        """Compute one record for ``model`` now, append it to `history` and return it."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError(
                "FrequencyAnalysisCallback needs a tokenizer: pass tokenizer= or processing_class=."
            )
        cfg = self.config
        start = time.perf_counter()
        embeddings, probs = probe_outputs(
            model,
            tokenizer,
            self.texts,
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            pooling=cfg.pooling,
            disable_progress_bar=self.disable_progress_bar,
        )
        if cfg.embedding_source == "current" or self._distances is None:
            distances = pairwise_distances(embeddings)
            if cfg.embedding_source == "initial":
                self._distances = distances
        else:
            distances = self._distances
        record = {
            "step": int(step),
            "epoch": None if epoch is None else float(epoch),
            **frequency_errors(
                None,
                probs,
                self.labels,
                self.is_poisoned,
                cfg.sigmas,
                sigma_mode=cfg.sigma_mode,
                distances=distances,
            ),
            "probe_seconds": time.perf_counter() - start,
        }
        self.history.append(record)
        return record

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "probe": {
                "n_clean": int((~self.is_poisoned).sum()),
                "n_poisoned": int(self.is_poisoned.sum()),
            },
            "history": self.history,
        }

    def save_json(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the config, probe sizes and history (plus ``extra``) to ``path`` atomically."""
        return save_frequency_history(path, {**self.to_dict(), **(extra or {})})

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Save the four curves over steps as a PNG (see :func:`~hf_backdoor_defense.analysis.plot.plot_frequency_history`)."""
        from .plot import plot_frequency_history

        return plot_frequency_history(self.history, path, title=title)

    # ------------------------------------------------------------------ Trainer events
    def _maybe(self, state, model, kwargs, force: bool = False) -> None:
        if not state.is_world_process_zero or model is None:
            return
        if self.history and self.history[-1]["step"] == state.global_step:
            return
        if force or state.global_step % self.config.eval_steps == 0:
            self.evaluate(
                model,
                state.global_step,
                state.epoch,
                tokenizer=self.tokenizer or kwargs.get("processing_class"),
            )

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.config.eval_at_start:
            self._maybe(state, model, kwargs, force=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._maybe(state, model, kwargs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._maybe(state, model, kwargs, force=True)
