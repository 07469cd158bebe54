"""The maths of the frequency analysis: pairwise distances, the Gaussian kernel, the low/high split and the
relative errors of clean and backdoor rows (the MuScleLoRA paper's diagnostic; see :mod:`.frequency`).

Example:
    >>> import torch
    >>> from hf_backdoor_defense.analysis.kernel import gaussian_kernel, pairwise_distances
    >>> G = gaussian_kernel(pairwise_distances(torch.randn(4, 3)), sigma=1.0)
    >>> tuple(G.shape)
    (4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .history import CURVES

__all__ = ["decompose", "frequency_errors", "gaussian_kernel", "pairwise_distances", "relative_errors"]


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
