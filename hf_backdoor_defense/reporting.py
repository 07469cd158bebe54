"""Small helpers of every benchmark report: mean ± std over seeds, Markdown tables, the machine, and whether it
was busy.

Two torch jobs on the project's 2-core machine run each 5-10x slower than one alone, so every benchmark and
study calls :func:`prepare_machine` first: it sets the torch thread count, records the CPU time other
processes use and the other processes that have torch loaded (for the provenance), and warns loudly when the
machine is busy; :class:`MachineMonitor` keeps recording that while each cell runs.

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
from collections.abc import Iterable, Sequence

__all__ = ["MachineMonitor", "PeakMemory", "cpu_model", "hardware_info", "machine_state", "markdown_table", "percent",
           "prepare_machine", "summarise"]

_ALIGN = {"l": "---", "c": ":---:", "r": "---:"}


def percent(value: float | None, digits: int = 1) -> str:
    """A rate in ``[0, 1]`` as ``"72.4%"``; ``None`` (not measured) as ``"-"``."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    """A Markdown table: ``header``, then one line per row (cells formatted with ``str``).

    ``align`` has one letter per column, ``l`` (default), ``c`` or ``r``.

    Example:
        >>> print(markdown_table(["run", "CACC"], [["lora", percent(0.724)]], align="lr"))
        | run | CACC |
        |---|---:|
        | lora | 72.4% |
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set(_ALIGN):
        raise ValueError(f"`align` needs one of l/c/r per column ({len(header)}), got {align!r}.")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(_ALIGN[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


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


def _usable_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def hardware_info() -> dict:
    """Where a benchmark ran: CPU model, cores, torch threads, library versions, load average."""
    import torch
    import transformers

    usable, load = _usable_cpus(), _load_average()
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


def _other_torch_processes() -> list[dict]:
    """Other processes of this machine that have libtorch mapped (Linux ``/proc``; ``[]`` elsewhere)."""
    found = []
    own = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        if pid in (own, os.getppid()):
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
                if not any("libtorch" in line for line in handle):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append({"pid": pid, "command": command[:200]})
    return found


def _cpu_times() -> tuple[int, int, int, int] | None:
    """``(total, busy, own, cpus)`` jiffies: the whole machine's, the busy part, this process's (Linux only)."""
    try:
        with open("/proc/stat", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        with open("/proc/self/stat", encoding="utf-8") as handle:
            own_fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    values = [int(v) for v in lines[0].split()[1:9]]
    total = sum(values)
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return total, total - values[3] - values[4], int(own_fields[11]) + int(own_fields[12]), max(cpus, 1)


def _other_cpu_use(before, after) -> float | None:
    """CPU cores' worth of work done by other processes between two :func:`_cpu_times` snapshots."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    per_cpu = (after[0] - before[0]) / after[3]
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / per_cpu)


def machine_state(window: float = 1.0, since: tuple | None = None) -> dict:
    """How busy the machine is apart from this process: other torch processes, other processes' CPU use.

    ``other_cpu_cores`` is the CPU time other processes used, in cores, over the last ``window`` seconds
    (or since the :func:`_cpu_times` snapshot ``since``). ``busy`` is true when another process has torch
    loaded or the others used more than half a core. The 1-minute load average is recorded too, but not
    judged: it lags by a minute and counts this process's own threads.
    """
    import time

    start = since or _cpu_times()
    if since is None and start is not None:
        time.sleep(window)
    end = _cpu_times()
    other = _other_cpu_use(start, end)
    others = _other_torch_processes()
    busy = bool(others) or (other is not None and other > 0.5)
    return {"other_cpu_cores": None if other is None else round(other, 2), "load_average_1min": _load_average(),
            "cpus_usable": _usable_cpus(), "other_torch_processes": others, "busy": busy, "_snapshot": end}


class MachineMonitor:
    """Samples :func:`machine_state` every ``interval`` seconds in a thread while a block runs.

    Each sample covers the time since the previous one, so together they see every other process that used
    the CPU during the block. ``summary()`` gives the highest CPU use of other processes, the other torch
    processes seen and whether the machine was busy at any sample.

    Example:
        >>> with MachineMonitor() as monitor:   # doctest: +SKIP
        ...     train()
        >>> monitor.summary()["busy"]            # doctest: +SKIP
    """

    def __init__(self, interval: float = 20.0):
        import threading

        self.interval = interval
        self.samples: list[dict] = []
        self._last = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        state = machine_state(since=self._last) if self._last is not None else machine_state(window=0.2)
        self._last = state.pop("_snapshot")
        self.samples.append(state)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MachineMonitor:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict:
        loads = [s["other_cpu_cores"] for s in self.samples if s["other_cpu_cores"] is not None]
        averages = [s["load_average_1min"] for s in self.samples if s["load_average_1min"] is not None]
        seen = {p["pid"]: p for s in self.samples for p in s["other_torch_processes"]}
        return {"other_cpu_cores_max": max(loads) if loads else None,
                "load_average_max": max(averages) if averages else None, "samples": len(self.samples),
                "other_torch_processes": list(seen.values()), "busy": any(s["busy"] for s in self.samples)}


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """The peak growth of this process's resident memory while a block runs, sampled every ``interval``
    seconds in a thread (Linux ``/proc``; ``extra`` is ``None`` elsewhere).

    Memory the process had freed before the block is reused without growing the resident set, so ``extra`` is
    a lower bound of what the block held at its peak, and close to it for a block that allocates whole
    model copies, as the purifiers do.

    Example:
        >>> with PeakMemory() as peak:            # doctest: +SKIP
        ...     result = purifier.purify(suspect, pretrained, clean)
        >>> peak.extra / model_bytes               # doctest: +SKIP
    """

    def __init__(self, interval: float = 0.002):
        import threading

        self.interval = interval
        self.base = self.peak = _resident_bytes()
        self.extra: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = _resident_bytes()
            if now is not None and self.peak is not None:
                self.peak = max(self.peak, now)

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _resident_bytes()
        if self.base is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.base is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes() or 0)
        self.extra = self.peak - self.base


def prepare_machine(threads: int | None = None, *, log=None) -> dict:
    """Set torch's thread count (default: every usable CPU) and report how busy the machine is.

    Returns :func:`machine_state` plus ``torch_threads``; when the machine is busy (another torch process,
    or other processes using more than half a CPU) a loud warning goes to ``log`` (default: stderr), since
    every timing taken then is several times an idle one.
    """
    import torch

    state = machine_state()
    state.pop("_snapshot")
    threads = threads or state["cpus_usable"] or 1
    torch.set_num_threads(int(threads))
    state["torch_threads"] = torch.get_num_threads()
    if state["busy"]:
        others = "; ".join(f"pid {p['pid']}: {p['command']}" for p in state["other_torch_processes"]) or "none"
        message = (f"WARNING: the machine is busy (other processes use {state['other_cpu_cores']} of "
                   f"{state['cpus_usable']} CPUs; other torch processes: {others}). Timings will be several "
                   "times the idle ones; run one heavy job at a time.")
        (log or (lambda m: print(m, file=sys.stderr)))("\n" + "!" * 80 + "\n" + message + "\n" + "!" * 80)
    return state
