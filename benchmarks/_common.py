"""Helpers every benchmark script shares: mean ± std over seeds, the machine description, atomic JSON.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they import
``from _common import ...``. The implementations live in the package (:mod:`hf_backdoor_defense.reporting`,
:mod:`hf_backdoor_defense.atomic`), where the matrix runner uses them too.

Example:
    >>> from _common import hardware_info, summarise, write_json   # doctest: +SKIP
    >>> write_json("benchmarks/results/x.json", {"cacc": summarise([0.8, 0.82]), "hardware": hardware_info()})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hf_backdoor_defense.atomic import write_json_atomic
from hf_backdoor_defense.reporting import hardware_info, summarise

__all__ = ["hardware_info", "summarise", "write_json"]


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (parents created); see ``write_json_atomic``."""
    return write_json_atomic(path, payload)
