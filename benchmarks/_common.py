"""Helpers every benchmark script shares: mean ± std over seeds, the machine description, atomic JSON, and the
``--resume`` / ``--overwrite`` rule for a results file.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they import
``from _common import ...``. The implementations live in the package (:mod:`hf_backdoor_defense.reporting`,
:mod:`hf_backdoor_defense.atomic`), where the matrix runner uses them too.

Example:
    >>> from _common import hardware_info, summarise, write_json   # doctest: +SKIP
    >>> write_json("benchmarks/results/x.json", {"cacc": summarise([0.8, 0.82]), "hardware": hardware_info()})  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from hf_backdoor_defense.atomic import write_json_atomic
from hf_backdoor_defense.reporting import hardware_info as _hardware_info
from hf_backdoor_defense.reporting import prepare_machine, summarise

# Every script that imports this module starts here: torch threads set (every usable CPU), how busy the
# machine is recorded, and a loud warning when another torch job or other load shares it.
MACHINE_AT_START = prepare_machine()


def hardware_info() -> dict:
    """The machine (``hf_backdoor_defense.reporting.hardware_info``) plus how busy it was when the script began."""
    return {**_hardware_info(), "machine_at_start": MACHINE_AT_START}

__all__ = [
    "apply_preset", "hardware_info", "lr_epochs", "previous_results", "read_results", "settings_of", "summarise", "write_json",
]


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (parents created); see ``write_json_atomic``."""
    return write_json_atomic(path, payload)


def settings_of(args: argparse.Namespace, not_settings: tuple[str, ...] = ()) -> dict:
    """The command-line arguments as JSON-ready values, without the names in ``not_settings``."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in not_settings}


def previous_results(args: argparse.Namespace, not_settings: tuple[str, ...], key: str = "args") -> dict | None:
    """The payload already in ``args.output`` that this run continues, or ``None`` to start afresh.

    ``args`` needs ``output``, ``resume`` and ``overwrite``. An existing output is refused unless ``--resume``
    (continue it: every argument outside ``not_settings`` must equal the one stored under ``payload[key]``,
    or the run stops naming those that differ) or ``--overwrite`` (start afresh). Nothing is trained before
    this check, so a refused run costs nothing.
    """
    if not args.output.is_file() or args.overwrite:
        return None
    if not args.resume:
        raise SystemExit(f"{args.output} exists: pass --resume to add the missing results to it, --overwrite to "
                         "replace it, or another --output.")
    previous = json.loads(args.output.read_text())
    old = {k: v for k, v in previous.get(key, {}).items() if k not in not_settings}
    now = settings_of(args, not_settings)
    differ = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
    if differ:
        raise SystemExit(f"--resume: {args.output} was made with other settings ({', '.join(differ)}); run with the "
                         "same ones, or pass --overwrite / another --output.")
    return previous


def apply_preset(args: argparse.Namespace, presets: dict[str, dict], results: Path) -> argparse.Namespace:
    """Fill every argument left at ``None`` from ``presets[args.preset]`` (``--quick`` = ``--preset quick``) and
    default ``args.output`` to ``results`` for the full preset, ``<stem>_<preset>.json`` beside it otherwise."""
    if getattr(args, "quick", False):
        args.preset = "quick"
    for name, value in presets[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.output is None:
        args.output = results if args.preset == "full" else results.with_name(f"{results.stem}_{args.preset}.json")
    return args


def lr_epochs(text: str) -> tuple[float, float]:
    """argparse type of a sweep's ``--settings`` entries: ``"1e-4:10"`` -> ``(1e-4, 10.0)`` (learning rate, epochs)."""
    lr, _, epochs = text.partition(":")
    try:
        return float(lr), float(epochs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LR:EPOCHS such as 1e-4:10, got {text!r}") from None


def read_results(path: str | os.PathLike) -> dict:
    """The results JSON at ``path`` (for ``--render``), or a clear stop when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--render: {path} does not exist; give the results JSON a run wrote (see --output).")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise SystemExit(f"--render: {path} is not a results JSON ({err}).") from None
