"""Matplotlib figures of the frequency analysis (Agg backend, PNG, written atomically).

Example:
    >>> from hf_backdoor_defense.analysis.plot import plot_frequency_history
    >>> plot_frequency_history(callback.history, "frequency.png", title="Full fine-tuning")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..atomic import write_bytes_atomic
from .history import CURVES

__all__ = ["plot_frequency_comparison", "plot_frequency_history"]

# Backdoor red, clean blue; low frequency solid, high frequency dashed.
_STYLE = {
    "backdoor_low": {"color": "tab:red", "linestyle": "-", "marker": "o"},
    "clean_low": {"color": "tab:blue", "linestyle": "-", "marker": "o"},
    "backdoor_high": {"color": "tab:red", "linestyle": "--", "marker": "x"},
    "clean_high": {"color": "tab:blue", "linestyle": "--", "marker": "x"},
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - matplotlib is the optional `plot` extra
        raise ImportError(
            "plotting the frequency analysis needs matplotlib: pip install 'hf-backdoor-defense[plot]'"
        ) from err

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, history: Sequence[Mapping], title: str | None) -> None:
    steps = [record["step"] for record in history]
    for key, label in CURVES:
        values = [float("nan") if record.get(key) is None else record[key] for record in history]
        ax.plot(steps, values, label=label, markersize=3, **_STYLE[key])
    ax.set_xlabel("training step")
    ax.set_ylabel("relative error")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")


def _top(histories) -> float:
    values = [
        r[key]
        for history in histories
        for r in history
        for key, _ in CURVES
        if r.get(key) is not None and math.isfinite(r[key])
    ]
    return 1.05 * max(values, default=1.0) or 1.0


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes_atomic(Path(path), buffer.getvalue())


def plot_frequency_history(
    history: Sequence[Mapping], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """One panel with the curves "Backdoor low / Clean low / Backdoor high / Clean high" over steps."""
    if not history:
        raise ValueError("the history is empty: nothing to plot (did the callback run?).")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw(ax, history, title)
    ax.set_ylim(0, _top([history]))
    return _save(fig, path)


def plot_frequency_comparison(
    histories: Mapping[str, Sequence[Mapping]], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Side-by-side panels, one per run (e.g. ``{"Full fine-tuning": h1, "MuScleLoRA": h2}``), shared y axis."""
    if not histories or any(not h for h in histories.values()):
        raise ValueError("every history must be non-empty.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 4), sharey=True, squeeze=False)
    for ax, (name, history) in zip(axes[0], histories.items()):
        _draw(ax, history, name)
    axes[0][0].set_ylim(0, _top(histories.values()))  # shared by every panel
    if title:
        fig.suptitle(title)
    return _save(fig, path)
