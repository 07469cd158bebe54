"""The frequency-analysis history as data: the four curves, the file format, reading, writing and summaries.

Importing this module loads numpy only (no torch), so plotting and reading results stay light.

Example:
    >>> from hf_backdoor_defense.analysis.history import CURVES
    >>> [key for key, _ in CURVES]
    ['backdoor_low', 'clean_low', 'backdoor_high', 'clean_high']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic

__all__ = ["CURVES", "FORMAT", "drop_steps", "finite_or_none", "load_frequency_history", "save_frequency_history"]

#: The four tracked quantities, in plotting order: (key, legend label).
CURVES = (
    ("backdoor_low", "Backdoor low"),
    ("clean_low", "Clean low"),
    ("backdoor_high", "Backdoor high"),
    ("clean_high", "Clean high"),
)

FORMAT = "hbd-frequency-v1"


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


def finite_or_none(value):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def save_frequency_history(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (``{"format", "config", "probe", "history", ...}``) as strict JSON, atomically."""
    text = json.dumps(finite_or_none(payload), indent=2, allow_nan=False) + "\n"
    return write_bytes_atomic(Path(path), text.encode())
