"""Frequency analysis of a (poisoned) fine-tune: low- and high-frequency fitting errors of clean and
backdoor examples over training, the diagnostic of the MuScleLoRA paper ("Acquiring Clean Language Models
from Backdoor Poisoned Datasets by Downscaling Frequency Space", ACL 2024).

Each probe example is a point ``x_i`` in embedding space (the model's embedding-layer output, flattened at a
fixed length). A row-normalised Gaussian kernel ``G_ij ∝ exp(-||x_i - x_j|| / (2 σ))`` smooths any function
``f`` over the examples: ``f_low = G f`` is its low-frequency part and ``f_high = f - f_low`` the rest. The
relative errors ``e_low = mean_i ||p_low_i - y_low_i|| / mean_i ||y_low_i||`` (and ``e_high`` alike), where
``p`` are the model's class probabilities and ``y`` the one-hot training labels, are taken separately over the
clean rows and the poisoned rows of the probe set.

Example:
    >>> from hf_backdoor_defense.analysis import FrequencyAnalysisCallback, FrequencyAnalysisConfig
    >>> from hf_backdoor_defense.analysis import build_probe_set
    >>> probe = build_probe_set(poisoned_train, n_clean=200, n_poisoned=200, seed=0)     # doctest: +SKIP
    >>> callback = FrequencyAnalysisCallback(probe, tokenizer, FrequencyAnalysisConfig(eval_steps=10))  # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])  # doctest: +SKIP
    >>> trainer.train()                                                                  # doctest: +SKIP
    >>> callback.save_json("frequency.json"); callback.plot("frequency.png")            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ..atomic import write_bytes_atomic

__all__ = [
    "CURVES",
    "DEFAULT_RELATIVE_SIGMAS",
    "FrequencyAnalysisCallback",
    "FrequencyAnalysisConfig",
    "build_probe_set",
    "decompose",
    "drop_steps",
    "frequency_errors",
    "gaussian_kernel",
    "load_frequency_history",
    "pairwise_distances",
    "probe_outputs",
    "relative_errors",
]

#: The four tracked quantities, in plotting order: (key, legend label).
CURVES = (
    ("backdoor_low", "Backdoor low"),
    ("clean_low", "Clean low"),
    ("backdoor_high", "Backdoor high"),
    ("clean_high", "Clean high"),
)

#: 25 kernel widths as multiples of the median pairwise distance (see `FrequencyAnalysisConfig.sigma_mode`).
DEFAULT_RELATIVE_SIGMAS = tuple(float(s) for s in np.linspace(0.05, 0.2, 25))
#: The paper's 25 widths on raw distances, used when ``sigma_mode="absolute"`` and no ``sigmas`` are given.
DEFAULT_ABSOLUTE_SIGMAS = tuple(float(s) for s in np.linspace(2.0, 8.0, 25))

FORMAT = "hbd-frequency-v1"


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


# ---------------------------------------------------------------------------------------------- the maths
def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``D_ij = ||x_i - x_j||`` of the rows of ``embeddings`` ([n, d]), in float64.

    The diagonal is exactly 0 and the matrix exactly symmetric (``torch.cdist`` uses a matrix-product formula
    that is neither for large inputs).
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {tuple(embeddings.shape)}.")
    x = embeddings.to(torch.float64)
    distances = torch.cdist(x, x).clamp_min(0.0)
    distances = 0.5 * (distances + distances.T)
    distances.fill_diagonal_(0.0)
    return distances


def gaussian_kernel(distances: torch.Tensor, sigma: float) -> torch.Tensor:
    """Row-normalised kernel ``G_ij = exp(-D_ij / (2 σ)) / Σ_k exp(-D_ik / (2 σ))``.

    As in the paper the exponent uses the distance D, not D². The diagonal term is exp(0) = 1, so a row never
    sums to zero; a tiny σ gives the identity (``f_low = f``) and a huge σ the row mean (``f_low`` constant).

    Example:
        >>> import torch
        >>> G = gaussian_kernel(pairwise_distances(torch.randn(5, 3)), sigma=1.0)
        >>> torch.allclose(G.sum(1), torch.ones(5, dtype=G.dtype))
        True
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    weights = torch.exp(-distances.to(torch.float64) / (2.0 * sigma))
    return weights / weights.sum(dim=1, keepdim=True)


def decompose(f: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f_low, f_high)`` with ``f_low = G f`` and ``f_high = f - f_low``; ``f`` is [n] or [n, c]."""
    f = f.to(kernel.dtype)
    low = kernel @ f
    return low, f - low


def relative_errors(
    probs: torch.Tensor, targets: torch.Tensor, kernel: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[float, float]:
    """``(e_low, e_high)``: ``mean ||p_band - y_band|| / mean ||y_band||`` over ``rows`` (bool mask or indices).

    The kernel smooths over *all* n examples; only the averages are restricted to ``rows``.
    """
    diff_low, diff_high = decompose(probs.to(kernel.dtype) - targets.to(kernel.dtype), kernel)
    y_low, y_high = decompose(targets, kernel)
    if rows is not None:
        diff_low, diff_high, y_low, y_high = (t[rows] for t in (diff_low, diff_high, y_low, y_high))
    if diff_low.shape[0] == 0:
        return float("nan"), float("nan")

    def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
        denominator = den.norm(dim=-1).mean().item() if den.dim() > 1 else den.abs().mean().item()
        numerator = num.norm(dim=-1).mean().item() if num.dim() > 1 else num.abs().mean().item()
        return numerator / denominator if denominator > 0 else float("nan")

    # decompose() is linear, so (p - y)_low = p_low - y_low.
    return ratio(diff_low, y_low), ratio(diff_high, y_high)


def frequency_errors(
    embeddings: torch.Tensor | None,
    probs: torch.Tensor,
    labels: torch.Tensor,
    is_poisoned: torch.Tensor,
    sigmas: Sequence[float],
    *,
    sigma_mode: str = "relative",
    num_labels: int | None = None,
    distances: torch.Tensor | None = None,
) -> dict:
    """Low/high relative errors on clean and poisoned rows, averaged over ``sigmas`` and per σ.

    Args:
        embeddings: [n, d] points (ignored when ``distances`` is given).
        probs: [n, c] class probabilities.
        labels: [n] integer training labels.
        is_poisoned: [n] bool.
        sigmas: kernel widths (multiples of the median distance when ``sigma_mode="relative"``).
        num_labels: classes of the one-hot targets (default ``probs.shape[1]``).
        distances: precomputed ``pairwise_distances(embeddings)``.

    Returns:
        ``{"backdoor_low", "clean_low", "backdoor_high", "clean_high"}`` (means over σ), ``"per_sigma"``
        (the same keys as lists, plus ``"sigma"`` as used on raw distances) and ``"median_distance"``.
    """
    if distances is None:
        distances = pairwise_distances(embeddings)
    n = distances.shape[0]
    if probs.shape[0] != n or labels.shape[0] != n or is_poisoned.shape[0] != n:
        raise ValueError("embeddings, probs, labels and is_poisoned must have the same number of rows.")
    num_labels = int(num_labels or probs.shape[1])
    targets = torch.nn.functional.one_hot(labels.long(), num_labels).to(torch.float64)
    probs = probs.to(torch.float64)
    poisoned = is_poisoned.bool()
    off_diagonal = distances[~torch.eye(n, dtype=torch.bool)]
    median = float(off_diagonal.median()) if off_diagonal.numel() else 0.0
    if sigma_mode == "relative":
        if median <= 0:
            raise ValueError(
                "all probe embeddings coincide: relative sigmas need a positive median distance."
            )
        raw_sigmas = [float(s) * median for s in sigmas]
    elif sigma_mode == "absolute":
        raw_sigmas = [float(s) for s in sigmas]
    else:
        raise ValueError(f"sigma_mode must be 'relative' or 'absolute', got {sigma_mode!r}.")
    per_sigma: dict[str, list[float]] = {key: [] for key, _ in CURVES}
    per_sigma["sigma"] = raw_sigmas
    for sigma in raw_sigmas:
        kernel = gaussian_kernel(distances, sigma)
        for group, rows in (("backdoor", poisoned), ("clean", ~poisoned)):
            low, high = relative_errors(probs, targets, kernel, rows)
            per_sigma[f"{group}_low"].append(low)
            per_sigma[f"{group}_high"].append(high)
    summary = {key: float(np.mean(per_sigma[key])) for key, _ in CURVES}
    return {**summary, "per_sigma": per_sigma, "median_distance": median}


# ---------------------------------------------------------------------------------------------- probes
def build_probe_set(
    dataset, n_clean: int = 200, n_poisoned: int = 200, *, seed: int = 0, poison_column: str = "is_poisoned"
):
    """A fixed, seeded probe subset of a poisoned *training* set: ``n_clean`` clean and ``n_poisoned``
    poisoned rows (clean rows first). The input is not modified.

    Example:
        >>> from datasets import Dataset
        >>> data = Dataset.from_dict({"text": list("abcdef"), "label": [0, 1] * 3,
        ...                           "is_poisoned": [True, False, False, True, False, False]})
        >>> probe = build_probe_set(data, n_clean=2, n_poisoned=2)
        >>> list(probe["is_poisoned"])
        [False, False, True, True]
    """
    if poison_column not in dataset.column_names:
        raise ValueError(
            f"the probe source has no {poison_column!r} column (columns: {dataset.column_names}); "
            "pass the output of an attack's .poison()."
        )
    flags = np.asarray(dataset[poison_column], dtype=bool)
    clean_idx, poison_idx = np.flatnonzero(~flags), np.flatnonzero(flags)
    if n_clean < 0 or n_poisoned < 0 or n_clean + n_poisoned == 0:
        raise ValueError(f"n_clean and n_poisoned must be >= 0 and not both 0, got {n_clean}, {n_poisoned}.")
    if n_clean > len(clean_idx) or n_poisoned > len(poison_idx):
        raise ValueError(
            f"asked for {n_clean} clean and {n_poisoned} poisoned probe rows but the dataset has "
            f"{len(clean_idx)} and {len(poison_idx)}; lower n_clean / n_poisoned."
        )
    rng = np.random.default_rng(seed)
    chosen_clean = np.sort(rng.choice(clean_idx, size=n_clean, replace=False))
    chosen_poison = np.sort(rng.choice(poison_idx, size=n_poisoned, replace=False))
    return dataset.select(np.concatenate([chosen_clean, chosen_poison]).tolist())


@torch.no_grad()
def probe_outputs(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 32,
    pooling: str = "flatten",
    disable_progress_bar: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [n, d] float64, probs [n, c] float64)`` of a sequence classifier on ``texts``.

    The embedding is the embedding-layer output (``hidden_states[0]``: for BERT word + position + type
    embeddings after LayerNorm; for Llama/GPT-2 the input embeddings), at a fixed length ``max_length`` with
    padded positions set to zero (inputs are right-padded whatever the tokenizer's default, so token t is in
    slot t and a sentence's point does not depend on its batch), then flattened (``pooling="flatten"``) or mean-pooled over real tokens.
    The model's train/eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embeddings, probs = [], []
    try:
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="Frequency probe", disable=disable_progress_bar, leave=False):
            batch = list(texts[start : start + batch_size])
            # Pad to the longest in the batch for the forward pass (cheaper), then zero-pad the embeddings
            # to `max_length`: the same points as padding every input to `max_length`, since padded
            # positions are zeroed either way.
            # Right padding always, so token t of every sentence sits in slot t of the flattened point.
            enc = tokenizer(
                batch,
                truncation=True,
                max_length=max_length,
                padding=True,
                padding_side="right",
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model(**enc, output_hidden_states=True, return_dict=True)
            if out.hidden_states is None:
                raise ValueError(f"{type(model).__name__} returned no hidden_states; cannot read embeddings.")
            mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64)
            hidden = out.hidden_states[0].to(torch.float64) * mask
            if pooling == "flatten" and hidden.shape[1] < max_length:
                hidden = torch.nn.functional.pad(hidden, (0, 0, 0, max_length - hidden.shape[1]))
            if pooling == "flatten":
                points = hidden.flatten(1)
            elif pooling == "mean":
                points = hidden.sum(1) / mask.sum(1).clamp_min(1.0)
            else:
                raise ValueError(f"pooling must be 'flatten' or 'mean', got {pooling!r}.")
            embeddings.append(points.cpu())
            probs.append(torch.softmax(out.logits.to(torch.float64), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(embeddings), torch.cat(probs)


# ---------------------------------------------------------------------------------------------- callback
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
        payload = _finite_or_none({**self.to_dict(), **(extra or {})})
        return _write_atomic(Path(path), (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode())

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


def drop_steps(history: Sequence[dict], fraction: float = 0.5) -> dict[str, int | None]:
    """For each curve, the first step at which it is at or below ``fraction`` × its first value (None: never).

    A compact answer to "which error falls first": a smaller step means that component was fitted earlier.

    Example:
        >>> drop_steps([{"step": 0, "backdoor_low": 1.0, "clean_low": 1.0, "backdoor_high": 1.0, "clean_high": 1.0},
        ...             {"step": 5, "backdoor_low": 0.2, "clean_low": 0.9, "backdoor_high": 0.6, "clean_high": 1.0}])
        {'backdoor_low': 5, 'clean_low': None, 'backdoor_high': None, 'clean_high': None}
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    result: dict[str, int | None] = {}
    for key, _ in CURVES:
        values = [(r["step"], r.get(key)) for r in history if r.get(key) is not None and np.isfinite(r[key])]
        result[key] = None
        if values:
            threshold = fraction * values[0][1]
            result[key] = next((step for step, value in values if value <= threshold), None)
    return result


def load_frequency_history(path: str | os.PathLike) -> dict:
    """Read a file written by `FrequencyAnalysisCallback.save_json` (``{"config", "probe", "history", ...}``)."""
    payload = json.loads(Path(path).read_text())
    if payload.get("format") != FORMAT or "history" not in payload:
        raise ValueError(f"{path} is not a frequency-analysis file (expected format {FORMAT!r}).")
    return payload


def _finite_or_none(value):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _write_atomic(path: Path, data: bytes) -> Path:
    return write_bytes_atomic(path, data)
