"""The experiment engine behind ``benchmarks/run_matrix.py`` and ``benchmarks/studies.py``: datasets × threats ×
defenses × seeds, every cell cached by the hash of its configuration.

* :mod:`~hf_backdoor_defense.matrix.config`: cells, their hash keys, settings and presets.
* :mod:`~hf_backdoor_defense.matrix.cells`: how each defense cell trains and is scored; shared models cached.
* :mod:`~hf_backdoor_defense.matrix.runner`: resumable run, one JSON file per cell, ``matrix.json``.
* :mod:`~hf_backdoor_defense.matrix.render`: ``docs/results.md`` and the ASR-above-floor scatter plot.
* :mod:`~hf_backdoor_defense.matrix.studies`: named validation studies (settings variants run through the
  same cells) that choose the presets' settings.

Example:
    >>> from hf_backdoor_defense.matrix import MatrixGrid, MatrixSettings, render_results, run_matrix
    >>> grid = MatrixGrid(datasets=["rotten_tomatoes"], threats=["badnets-dirty"], seeds=[0])
    >>> payload = run_matrix(MatrixSettings(train_size=500), grid, results_dir="out",
    ...                      workdir="/tmp/matrix-work")                     # doctest: +SKIP
    >>> render_results(payload, "out/results.md", "out/scatter.png")        # doctest: +SKIP
"""

from .config import (
    ATTACKS,
    CLEAN_FLOOR,
    CLEAN_LORA,
    DEFENSES,
    FLOORS,
    LABEL_MODES,
    PRESETS,
    CellSpec,
    MatrixGrid,
    MatrixSettings,
    config_hash,
    parse_dataset,
    parse_threat,
    plan_cells,
)
from .render import render_markdown, render_results
from .runner import cell_path, cell_status, render_from_cache, run_matrix

__all__ = [
    "ATTACKS",
    "CLEAN_FLOOR",
    "CLEAN_LORA",
    "DEFENSES",
    "FLOORS",
    "LABEL_MODES",
    "PRESETS",
    "CellSpec",
    "MatrixGrid",
    "MatrixSettings",
    "cell_path",
    "cell_status",
    "config_hash",
    "parse_dataset",
    "parse_threat",
    "plan_cells",
    "render_markdown",
    "render_results",
    "render_from_cache",
    "run_matrix",
]
