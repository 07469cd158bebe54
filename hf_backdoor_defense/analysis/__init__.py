"""Diagnostics of backdoor learning: the frequency analysis of the MuScleLoRA paper.

Example:
    >>> from hf_backdoor_defense.analysis import FrequencyAnalysisCallback, build_probe_set
"""

from .frequency import (
    CURVES,
    DEFAULT_RELATIVE_SIGMAS,
    FrequencyAnalysisCallback,
    FrequencyAnalysisConfig,
    build_probe_set,
    decompose,
    drop_steps,
    frequency_errors,
    gaussian_kernel,
    load_frequency_history,
    pairwise_distances,
    probe_outputs,
    relative_errors,
)
from .plot import plot_frequency_comparison, plot_frequency_history

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
    "plot_frequency_comparison",
    "plot_frequency_history",
    "probe_outputs",
    "relative_errors",
]
