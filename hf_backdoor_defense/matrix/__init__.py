"""The defense matrix behind ``benchmarks/run_matrix.py``: datasets × attacks × label modes × defenses × seeds.

* :mod:`~hf_backdoor_defense.matrix.config`: cells, their hash keys, settings and presets.
* :mod:`~hf_backdoor_defense.matrix.cells`: how each defense cell trains and is scored; shared models cached.
* :mod:`~hf_backdoor_defense.matrix.runner`: resumable run, one JSON file per cell, ``matrix.json``.
* :mod:`~hf_backdoor_defense.matrix.render`: ``docs/results.md`` and the CACC-vs-ASR scatter plot.

Example:
    >>> from hf_backdoor_defense.matrix import MatrixGrid, MatrixSettings, render_results, run_matrix
    >>> grid = MatrixGrid(datasets=["rotten_tomatoes"], attacks=["badnets"], seeds=[0])
    >>> payload = run_matrix(MatrixSettings(train_size=500), grid, results_dir="out",
    ...                      workdir="/tmp/matrix-work")                     # doctest: +SKIP
    >>> render_results(payload, "out/results.md", "out/scatter.png")        # doctest: +SKIP
"""

from .config import (
    ATTACKS,
    CLEAN_FLOOR,
    DEFENSES,
    LABEL_MODES,
    PRESETS,
    CellSpec,
    MatrixGrid,
    MatrixSettings,
    config_hash,
    plan_cells,
)
from .render import render_markdown, render_results
from .runner import cell_path, cell_status, run_matrix

__all__ = [
    "ATTACKS",
    "CLEAN_FLOOR",
    "DEFENSES",
    "LABEL_MODES",
    "PRESETS",
    "CellSpec",
    "MatrixGrid",
    "MatrixSettings",
    "cell_path",
    "cell_status",
    "config_hash",
    "plan_cells",
    "render_markdown",
    "render_results",
    "run_matrix",
]
