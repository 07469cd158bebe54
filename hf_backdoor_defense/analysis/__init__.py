"""Diagnostics of backdoor learning: the frequency analysis of the MuScleLoRA paper.

Modules: ``kernel`` (the maths), ``probe`` (probe set, model outputs), ``history`` (curves, file format, I/O),
``callback`` (settings, ``TrainerCallback``), ``plot`` (figures).

Example:
    >>> from hf_backdoor_defense.analysis import FrequencyAnalysisCallback, build_probe_set
"""


# Each name loads its module on first access (torch only with the callback, the maths or the probe).
from .._lazy import lazy_getattr

_LAZY = {
    "DEFAULT_RELATIVE_SIGMAS": ".callback",
    "FrequencyAnalysisCallback": ".callback",
    "FrequencyAnalysisConfig": ".callback",
    "CURVES": ".history",
    "drop_steps": ".history",
    "load_frequency_history": ".history",
    "decompose": ".kernel",
    "frequency_errors": ".kernel",
    "gaussian_kernel": ".kernel",
    "pairwise_distances": ".kernel",
    "relative_errors": ".kernel",
    "plot_frequency_comparison": ".plot",
    "plot_frequency_history": ".plot",
    "build_probe_set": ".probe",
    "probe_outputs": ".probe",
    "analyze": ".experiment",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
