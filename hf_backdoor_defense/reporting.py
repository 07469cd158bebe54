"""Small helpers of every benchmark report: mean ± std over seeds and a description of the machine.

Example:
    >>> from hf_backdoor_defense.reporting import hardware_info, summarise
    >>> summarise([0.5, 1.0])
    {'mean': 0.75, 'std': 0.3535533905932738, 'n': 2}
    >>> hardware_info()["cpu_count"] >= 1   # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Iterable

__all__ = ["cpu_model", "hardware_info", "summarise"]


def summarise(values: Iterable[float], *, ddof: int = 1, keep_values: bool = False) -> dict:
    """``{"mean", "std", "n"}`` of ``values`` (and ``"values"`` with ``keep_values=True``).

    ``ddof=1`` is the sample standard deviation (the usual "± std over seeds"), ``ddof=0`` the population
    one. A single value has std 0.0; an empty input has mean and std ``None``.
    """
    if ddof not in (0, 1):
        raise ValueError(f"`ddof` must be 0 (population std) or 1 (sample std), got {ddof!r}.")
    values = [float(v) for v in values]
    if not values:
        out: dict = {"mean": None, "std": None, "n": 0}
    else:
        spread = statistics.stdev if ddof == 1 else statistics.pstdev
        out = {"mean": statistics.fmean(values), "std": spread(values) if len(values) > 1 else 0.0,
               "n": len(values)}
    if keep_values:
        out["values"] = values
    return out


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_info() -> dict:
    """Where a benchmark ran: CPU model, cores, torch threads, library versions, load average."""
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average_1min": load,
    }
