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

# The analysis lives in kernel.py (maths), probe.py (probe set, model outputs), history.py (curves, file format,
# I/O) and callback.py (config, TrainerCallback); this module keeps the names importable from here.
from .callback import (
    DEFAULT_ABSOLUTE_SIGMAS,
    DEFAULT_RELATIVE_SIGMAS,
    FrequencyAnalysisCallback,
    FrequencyAnalysisConfig,
)
from .history import CURVES, FORMAT, drop_steps, finite_or_none, load_frequency_history
from .kernel import decompose, frequency_errors, gaussian_kernel, pairwise_distances, relative_errors
from .probe import build_probe_set, probe_outputs

_finite_or_none = finite_or_none  # its name before it became public

__all__ = [
    "CURVES",
    "DEFAULT_ABSOLUTE_SIGMAS",
    "DEFAULT_RELATIVE_SIGMAS",
    "FORMAT",
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
