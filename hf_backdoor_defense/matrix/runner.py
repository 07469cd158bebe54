"""Run the defense matrix resumably: one cached JSON file per cell, ``matrix.json`` rebuilt after each cell.

Each finished cell is written (atomically) to ``<results_dir>/matrix_cells/<key>.json``, where ``key`` is the
hash of the cell's full configuration. A cell whose file exists with the same configuration is never run
again, so re-running a command skips what is done and an interrupted run resumes where it stopped.

Example:
    >>> from hf_backdoor_defense.matrix import MatrixGrid, MatrixSettings, run_matrix
    >>> payload = run_matrix(MatrixSettings(train_size=64), MatrixGrid(seeds=[0]),
    ...                      results_dir="benchmarks/results", workdir="/tmp/matrix-work")  # doctest: +SKIP
    >>> payload["complete"], len(payload["cells"])                                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..reporting import MachineMonitor, hardware_info, prepare_machine, summarise
from .config import (
    CLEAN_FLOOR,
    FLOORS,
    CellSpec,
    MatrixGrid,
    MatrixSettings,
    estimate_seconds,
    parse_dataset,
    parse_threat,
    plan_cells,
    settings_signature,
)

__all__ = ["CELLS_DIR", "assemble", "cell_path", "cell_status", "format_duration", "render_from_cache", "run_matrix",
           "summarise_cells"]

CELLS_DIR = "matrix_cells"
INVOCATIONS_FILE = "matrix_invocations.json"
"""Every run's invocation record (start, command, wall time, cells run, hardware), whatever its grid: the
wall time of a page rendered from the cell cache comes from the runs that finished its cells."""
_HARDWARE_PER_CELL = ("cpu_model", "cpus_usable", "torch_threads", "torch", "load_average_1min")


def cell_path(results_dir: str | os.PathLike, key: str) -> Path:
    """Result file of the cell with hash ``key``."""
    return Path(results_dir) / CELLS_DIR / f"{key}.json"


def _load_record(path: Path, config: dict) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or unreadable: run the cell again
    return record if record.get("config") == json.loads(json.dumps(config)) else None


def cell_status(grid: MatrixGrid, settings: MatrixSettings,
                results_dir: str | os.PathLike) -> list[tuple[CellSpec, str, dict | None]]:
    """``(cell, key, record or None)`` for every cell of the grid, in run order."""
    out = []
    for spec in plan_cells(grid):
        config = spec.config(settings)
        key = spec.key(settings)
        out.append((spec, key, _load_record(cell_path(results_dir, key), config)))
    return out


def format_duration(seconds: float | None) -> str:
    """``"1 h 05 min"``, ``"12 min"``, ``"40 s"``; ``"?"`` for ``None``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


@functools.cache
def backbone_scale(model: str | None) -> float:
    """How much more a backbone costs per token than all-MiniLM-L6-v2 (whose times :data:`RATES` holds): the
    ratio of their parameters outside the input embeddings, counted on an empty (meta-device) model built from
    each config. ``None`` (MiniLM itself), or a model whose config cannot be read offline: ``1.0``."""
    if model is None:
        return 1.0
    try:
        import torch
        from transformers import AutoConfig, AutoModel

        from ..assets import resolve_model_path

        def body(name: str) -> int:
            with torch.device("meta"):
                net = AutoModel.from_config(AutoConfig.from_pretrained(resolve_model_path(name)))
            return sum(p.numel() for p in net.parameters()) - net.get_input_embeddings().weight.numel()

        return body(model) / body("minilm")
    except Exception:  # an estimate only: a Hub name without a network, a broken folder
        return 1.0


def _estimate(todo: list[CellSpec], done: list[dict], settings: MatrixSettings) -> float:
    """Seconds the ``todo`` cells should take: the mean wall time of this grid's finished cells of the same
    defense where there are some, else the rate model of :func:`~hf_backdoor_defense.matrix.config.estimate_seconds`
    scaled by the backbone's size (:func:`backbone_scale`)."""
    observed: dict[str, list[float]] = {}
    for record in done:
        observed.setdefault(record["defense"], []).append(record["seconds"])
    known = sum(sum(observed[c.defense]) / len(observed[c.defense]) for c in todo if c.defense in observed)
    rest = [c for c in todo if c.defense not in observed]
    return known + (estimate_seconds(rest, settings) * backbone_scale(settings.model) if rest else 0.0)


def summarise_cells(cells: list[dict]) -> dict:
    """``{dataset: {threat: {defense: stats}}}`` with the floors under their trigger (``badnets4``).

    ``stats`` holds ``cacc``, ``asr`` (mean ± std over seeds), ``seeds``, and, paired per seed with the
    clean-data floor of the same dataset, trigger and seed (:data:`CLEAN_FLOOR`): ``asr_minus_floor``
    (ASR - the floor's ASR) and ``cacc_minus_floor`` (CACC - the floor's CACC), over the seeds that have both.
    """
    floors = {(c["dataset"], c["threat"], c["seed"]): c for c in cells if c["defense"] == CLEAN_FLOOR}
    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["dataset"], c["threat"], c["defense"]), []).append(c)
    summary: dict[str, dict] = {}
    for (dataset, threat, defense), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["seed"])
        trigger = threat if defense in FLOORS else parse_threat(threat).trigger
        paired = [(r, floors[(dataset, trigger, r["seed"])]) for r in rows if (dataset, trigger, r["seed"]) in floors]
        summary.setdefault(dataset, {}).setdefault(threat, {})[defense] = {
            "cacc": summarise(r["cacc"] for r in rows),
            "asr": summarise(r["asr"] for r in rows),
            "seeds": [r["seed"] for r in rows],
            "asr_minus_floor": summarise(r["asr"] - f["asr"] for r, f in paired),
            "cacc_minus_floor": summarise(r["cacc"] - f["cacc"] for r, f in paired),
            "paired_seeds": [r["seed"] for r, _ in paired],
        }
    return summary


def _record_invocation(path: Path, invocation: dict) -> None:
    """Add (or update, by start time) ``invocation`` in the run log at ``path``."""
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        runs = []
    runs = [r for r in runs if r.get("started_at") != invocation["started_at"]] + [invocation]
    write_json_atomic(path, sorted(runs, key=lambda r: r.get("started_at", "")))


def render_from_cache(grid: MatrixGrid, settings: MatrixSettings, results_dir: str | os.PathLike,
                      output: str | os.PathLike, *, command: str | None, preset: str | None) -> dict:
    """The payload of ``grid`` from the cell cache alone, without running anything: for a page of the whole
    grid while only some seeds have run. The invocations recorded in ``output`` (of any grid with these
    settings) that finished one of its cells give the wall time."""
    status = cell_status(grid, settings, results_dir)
    cached = [record for _, _, record in status if record is not None]
    # a cached cell's key already pins its settings: any run that finished one of them counts, from the run
    # log and from ``output`` (runs from before the log existed)
    log = Path(results_dir) / INVOCATIONS_FILE
    found = _previous_invocations(Path(output), None, None, cached)
    if log.is_file():
        found += _previous_invocations(log, None, None, cached)
    latest: dict[str, dict] = {}  # one record per run: the one written last (the longest wall time)
    for i in found:
        if i["started_at"] not in latest or i["wall_seconds"] > latest[i["started_at"]]["wall_seconds"]:
            latest[i["started_at"]] = i
    invocations = sorted(latest.values(), key=lambda i: i["started_at"])
    return {**assemble(grid, settings, status, command=command, preset=preset, invocations=invocations),
            "rendered_from_cache": True}


def assemble(grid: MatrixGrid, settings: MatrixSettings, status: list[tuple[CellSpec, str, dict | None]], *,
             command: str | None, preset: str | None, invocations: list[dict]) -> dict:
    """The ``matrix.json`` payload: every finished cell of the grid, the missing ones, summary, provenance.

    ``invocations`` are the runs that trained cells of this grid (``started_at``, ``command``,
    ``wall_seconds``, ``cells_run``, ``hardware``); ``wall_seconds`` is their sum and ``hardware`` the last one's.
    """
    cells = [record for _, _, record in status if record is not None]
    missing = [{**spec.to_dict(), "key": key, "name": spec.name} for spec, key, record in status if record is None]
    machines = sorted({json.dumps(c.get("hardware", {}), sort_keys=True) for c in cells})
    return {
        "benchmark": "run_matrix",
        "preset": preset,
        "command": command,
        "complete": not missing,
        "grid": grid.to_dict(),
        "settings": settings.to_dict(),
        "hardware": invocations[-1]["hardware"] if invocations else None,
        "cell_hardware_variants": [json.loads(m) for m in machines],
        "invocations": invocations,
        "wall_seconds": sum(i["wall_seconds"] for i in invocations),
        "cell_seconds_total": sum(c["seconds"] for c in cells),
        "n_cells": len(status),
        "n_finished": len(cells),
        "cells": cells,
        "missing": missing,
        "summary": summarise_cells(cells),
        "notes": {
            "floor": f"{CLEAN_FLOOR}: full fine-tune on the clean training subsample, scored on the attack's "
                     "triggered test set: the ASR a model that never saw a trigger gets. ASR - floor and "
                     "CACC - floor are paired per seed (the same training subsample and test set).",
            "label_modes": "label modes: poison_rate is a share of the whole training set; dirty-label draws "
                           "the poisoned examples from the non-target classes and relabels them, clean-label "
                           "from the target class (labels unchanged), mixed-label from every class (the "
                           "non-target ones relabelled).",
            "w2sdefense": "W2SDefense here distils a clean teacher built on the same encoder into the backdoored "
                          "student (LoRA + head); both are the same size, so this is not weak-to-strong.",
        },
    }


def run_matrix(
    settings: MatrixSettings,
    grid: MatrixGrid,
    *,
    results_dir: str | os.PathLike,
    workdir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    command: str | None = None,
    preset: str | None = None,
    datasets: dict[str, Any] | None = None,
    dry_run: bool = False,
    progress: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every missing cell of ``grid`` and write ``output`` (default ``<results_dir>/matrix.json``).

    Args:
        settings: The settings (each cell's key holds those it reads: :meth:`MatrixSettings.for_cell`).
        grid: Datasets, attacks, label modes, defenses and seeds.
        results_dir: Holds ``matrix_cells/<key>.json`` (the cache of finished cells).
        workdir: Holds the shared models (backdoored, clean, teacher), the trainers' scratch output and one
            log file per cell (``logs/<key>.log``: what the trainers print).
        output: Where ``matrix.json`` goes; rewritten after every cell.
        command: The exact command line, recorded in ``matrix.json`` and the docs.
        preset: Name of the preset the settings came from (recorded).
        datasets: ``{name: DatasetDict}`` used instead of loading ``name``.
        dry_run: List the cells and whether each is cached; train nothing, write nothing.
        progress: tqdm bar over the cells to run.
        threads: torch threads (default: every usable CPU). The load average and the other torch processes
            seen are recorded per cell; a busy machine gets a loud warning.
        log: Where the one-line messages go.

    Returns:
        The ``matrix.json`` payload, plus ``run_stats`` (``cells_run``, ``models_trained``) not written to disk.
    """
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    begin = time.perf_counter()
    output = Path(output) if output is not None else Path(results_dir) / "matrix.json"
    status = cell_status(grid, settings, results_dir)
    todo = [spec for spec, _, record in status if record is None]
    done = [record for _, _, record in status if record is not None]
    log(f"{len(status)} cells: {len(done)} cached, {len(todo)} to run; estimated time for them: "
        f"{format_duration(_estimate(todo, done, settings))}")
    if dry_run:
        for spec, key, record in status:
            log(f"  {'cached ' if record else 'to run '} {key}  {spec.name}")
        return {"cells": done, "missing": [s.to_dict() for s in todo], "run_stats": {"cells_run": 0}}

    from .cells import MatrixContext

    machine = prepare_machine(threads, log=log)
    hardware = {**hardware_info(), "machine_at_start": machine}
    cell_hardware = {k: hardware[k] for k in _HARDWARE_PER_CELL}
    ctx = MatrixContext(settings, workdir, datasets=datasets)
    for name in dict.fromkeys(part for spec in todo for part in parse_dataset(spec.dataset)):
        ctx.dataset(name)  # load before the clock of the first cell starts
    if todo:
        ctx.tokenizer  # noqa: B018 - loads it
    index = {key: i for i, (_, key, _) in enumerate(status)}
    invocations = _previous_invocations(output, grid, settings, [r for _, _, r in status if r is not None])
    current = {"started_at": started_at, "command": command, "wall_seconds": 0.0, "cells_run": 0,
               "hardware": hardware}

    def write() -> dict:
        current["wall_seconds"] = time.perf_counter() - begin
        runs = invocations + ([current] if current["cells_run"] else [])
        payload = assemble(grid, settings, status, command=command, preset=preset, invocations=runs)
        write_json_atomic(output, payload)
        if current["cells_run"]:
            _record_invocation(Path(results_dir) / INVOCATIONS_FILE, current)
        return payload

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="matrix cells", unit="cell")
    try:
        for number, spec in enumerate(todo):
            if bar is not None:
                bar.set_description(spec.name)
            key = spec.key(settings)
            log_file = Path(workdir) / "logs" / f"{key}.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "w", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), \
                    MachineMonitor() as monitor:
                result = ctx.run_cell(spec)  # the trainers' printed logs go to the cell's log file
            busy = monitor.summary()
            if busy["busy"]:
                log(f"WARNING: {spec.name} ran on a busy machine (other processes used up to "
                    f"{busy['other_cpu_cores_max']} CPUs, {len(busy['other_torch_processes'])} other torch "
                    "processes): its wall time is not an idle figure.")
            record = {"key": key, "config": spec.config(settings), **spec.to_dict(), **result,
                      "hardware": cell_hardware, "machine": busy,
                      "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            write_json_atomic(cell_path(results_dir, key), record)
            status[index[key]] = (spec, key, record)
            done.append(record)
            current["cells_run"] += 1
            write()
            remaining = _estimate(todo[number + 1:], done, settings)
            if bar is not None:
                bar.set_postfix_str(f"CACC {result['cacc']:.3f} ASR {result['asr']:.3f}, "
                                    f"~{format_duration(remaining)} left")
                bar.update(1)
            else:
                log(f"[{number + 1}/{len(todo)}] {spec.name}: CACC {result['cacc']:.3f} "
                    f"ASR {result['asr']:.3f} ({result['seconds']:.0f} s, ~{format_duration(remaining)} left)")
    finally:
        if bar is not None:
            bar.close()
    payload = write()
    log(f"wrote {output}: {payload['n_finished']}/{payload['n_cells']} cells; this run {current['cells_run']} "
        f"cells in {format_duration(current['wall_seconds'])}, {len(ctx.trained)} shared models trained")
    return {**payload, "run_stats": {"cells_run": current["cells_run"], "models_trained": list(ctx.trained)}}


def _previous_invocations(output: Path, grid: MatrixGrid | None, settings: MatrixSettings | None,
                          cached: list[dict]) -> list[dict]:
    """The invocations recorded in an existing ``output`` of the same grid and settings (either check skipped
    when ``None``), keeping only those that finished at least one of the ``cached`` cells: a run whose cells
    were all deleted and re-run no longer counts towards the wall time."""
    try:
        previous = json.loads(output.read_text())
    except (OSError, ValueError):
        return []
    if isinstance(previous, list):  # the run log: invocations only
        previous = {"invocations": previous}
    if grid is not None and previous.get("grid") != grid.to_dict():
        return []
    if settings is not None and (settings_signature(previous.get("settings") or {})
                                 != settings_signature(settings.to_dict())):
        return []
    finished = [datetime.fromisoformat(r["finished_at"]) for r in cached if r.get("finished_at")]

    def produced_a_cached_cell(invocation: dict) -> bool:
        try:
            start = datetime.fromisoformat(invocation["started_at"])
        except (KeyError, TypeError, ValueError):
            return True  # no usable time stamp: keep it
        span = invocation.get("wall_seconds", 0.0) + 1.0  # finished_at is rounded to the second
        return any(0.0 <= (t - start).total_seconds() <= span for t in finished)

    return [i for i in previous.get("invocations") or [] if produced_a_cached_cell(i)]
