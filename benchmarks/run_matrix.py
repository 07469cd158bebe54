"""The defense matrix: datasets × attacks × label modes × defenses × seeds, CACC / ASR per cell.

Grid (``--preset full``, the default): Rotten Tomatoes and SpamAssassin × BadNets and AddSent × dirty- and
clean-label, 10 % poison × none (full FT), LoRA, MuScleLoRA, Fine-mixing, E-PUR, Fine-purifying, W2SDefense
× seeds 0, 1, 2, on all-MiniLM-L6-v2, plus a clean-data floor (a full fine-tune on clean data scored on the
triggered test set) per dataset, attack and seed.

Resumable: every finished cell is cached in ``benchmarks/results/matrix_cells/<hash>.json`` (the hash of
the cell's full configuration), so running the same command again skips finished cells and an interrupted
run continues. The backdoored full fine-tune that Fine-mixing, E-PUR, Fine-purifying and W2SDefense start
from, the clean floor model and the W2SDefense teacher are trained once and kept (safetensors) under
``--workdir``. Writes ``benchmarks/results/matrix.json`` after every cell and, at the end, renders
``docs/results.md`` and ``docs/figures/matrix_scatter.png`` (``--preset quick`` renders to
``benchmarks/results/matrix_quick.md`` instead: smoke numbers stay out of the docs).

Presets (cell counts include the clean floors):
    quick     Rotten Tomatoes, BadNets, dirty-label, 7 defenses, seed 0; 64 training examples, 1 epoch,
              max length 32. 8 cells. Measured twice: 1.9 and 2.2 min of cells, 2.5 and 3.2 min in all
              with start-up (imports, data), depending on the other job's load.
    reduced   the full grid with seed 0 only; sized like `make demo`: 800 training examples, batch 16,
              length 32, 2 epochs, full fine-tuning at 1e-4; 400 test examples, 128 clean examples. 60 cells.
              The earlier 600-example / batch-32 / 5e-5 sizing ran 8 cells (one dataset x attack) in 6.5 min
              on the idle machine, but every full fine-tune stayed at the majority class.
    full      the full grid, seeds 0-2; 2,000 training examples, 3 epochs, 1,000 test examples, 256 clean
              examples. 180 cells. Estimated 39 h as measured here, ~6 h 40 min on an idle machine.

How the estimates were made: the quick run's cells took 9-22 s each (mean 14-16 s) at its tiny sizes, mostly
fixed cost (loading models, building trainers: ~6 s a cell). Per-example costs at max length 64, measured on
the same 2-core AMD EPYC with 1 torch thread while another job shared it (load average 4-5): full fine-tune
0.16-0.25 s per example and epoch, LoRA 0.15, MuScleLoRA 0.30-0.41, evaluation 0.035-0.086 s per example.
``hf_backdoor_defense.matrix.config.estimate_seconds`` adds these up per cell (shared models counted once);
``--dry_run`` prints that estimate for any options. "Idle machine" divides the per-example rates by 6 (and
halves the fixed cost per cell), the
gap between these measurements and the ~30 ms per example and epoch that the asset notes give for MiniLM
on two idle cores with 2 threads.
Once cells have finished, the estimates printed use their measured wall times instead.
Shared models need ~90 MB of disk each (full: 24 backdoored + 6 clean + 6 teachers, ~3.3 GB).

Any setting can be overridden (e.g. ``--train_size 500``); the overrides are part of every cell's key.

Usage:
    python benchmarks/run_matrix.py --preset quick          # smoke run
    python benchmarks/run_matrix.py --preset full --dry_run # list the cells and which are cached
    python benchmarks/run_matrix.py                         # the full matrix (resumable)
    python benchmarks/run_matrix.py --render                # rebuild docs/results.md from matrix.json
                                                            # (or, before any run, from the cell cache)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_backdoor_defense.assets import cache_dir  # noqa: E402
from hf_backdoor_defense.commands.arguments import int_or_none  # noqa: E402
from hf_backdoor_defense.matrix import (  # noqa: E402
    ATTACKS,
    DEFENSES,
    LABEL_MODES,
    PRESETS,
    MatrixGrid,
    MatrixSettings,
    cell_status,
    render_results,
    run_matrix,
)
from hf_backdoor_defense.matrix.runner import assemble  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"
SCRIPT = "python benchmarks/run_matrix.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="full", help="sizes and grid (default: full)")
    grid = p.add_argument_group("grid (default: the preset's)")
    grid.add_argument("--datasets", nargs="+", default=argparse.SUPPRESS,
                      help="rotten_tomatoes, spamassassin, or a local dataset folder/file")
    grid.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=argparse.SUPPRESS)
    grid.add_argument("--label_modes", nargs="+", choices=list(LABEL_MODES), default=argparse.SUPPRESS)
    grid.add_argument("--defenses", nargs="+", choices=list(DEFENSES), default=argparse.SUPPRESS)
    grid.add_argument("--seeds", nargs="+", type=int, default=argparse.SUPPRESS)
    sizes = p.add_argument_group("settings (default: the preset's; part of every cell's key)")
    for f in dataclasses.fields(MatrixSettings):
        kind = type(f.default) if f.default is not None else str
        if "None" in str(f.type) and kind is int:  # e.g. --trigger_room none
            kind = int_or_none
        sizes.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, help=f.metadata.get("help"))
    io = p.add_argument_group("files")
    io.add_argument("--results_dir", type=Path, default=RESULTS, help="holds matrix_cells/ (default %(default)s)")
    io.add_argument("--output", type=Path, default=None,
                    help="matrix.json path (default <results_dir>/matrix.json; quick: matrix_quick.json)")
    io.add_argument("--docs", type=Path, default=None,
                    help="results page (default docs/results.md; quick: <results_dir>/matrix_quick.md)")
    io.add_argument("--figure", type=Path, default=None,
                    help="scatter PNG (default docs/figures/matrix_scatter.png; quick: next to the page)")
    io.add_argument("--workdir", type=Path, default=None,
                    help="shared models (~90 MB each for MiniLM; default <HBD cache>/matrix_work)")
    run = p.add_argument_group("actions")
    run.add_argument("--dry_run", action="store_true", help="list the cells and which are cached; run nothing")
    run.add_argument("--render", action="store_true", help="only render the page and figure from matrix.json")
    run.add_argument("--no_progress", action="store_true", help="one log line per cell instead of a tqdm bar")
    return p


def resolve(args: argparse.Namespace) -> tuple[MatrixSettings, MatrixGrid, dict]:
    """Settings and grid: the preset's values, overridden by the options given; plus the file paths."""
    grid_preset, settings_preset = PRESETS[args.preset]
    given = vars(args)
    grid = MatrixGrid(**{**grid_preset, **{k: given[k] for k in ("datasets", "attacks", "label_modes",
                                                                 "defenses", "seeds") if k in given}})
    names = [f.name for f in dataclasses.fields(MatrixSettings)]
    settings = MatrixSettings(**{**settings_preset, **{k: given[k] for k in names if k in given}})
    quick = args.preset == "quick"
    results_dir = args.results_dir
    paths = {
        "results_dir": results_dir,
        "output": args.output or results_dir / ("matrix_quick.json" if quick else "matrix.json"),
        "docs": args.docs or (results_dir / "matrix_quick.md" if quick else DOCS / "results.md"),
        "workdir": args.workdir or cache_dir() / "matrix_work",
    }
    paths["figure"] = args.figure or (results_dir / "matrix_quick_scatter.png" if quick
                                      else DOCS / "figures" / "matrix_scatter.png")
    return settings, grid, paths


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings, grid, paths = resolve(args)
    command = " ".join([SCRIPT, *map(shlex.quote, [a for a in argv if a != "--render"])])
    if args.render and paths["output"].is_file():
        payload = json.loads(paths["output"].read_text())
    elif args.render:  # nothing has run: a page stating the plan, with the cached cells if there are any
        print(f"{paths['output']} does not exist: rendering the planned grid from the cell cache.")
        status = cell_status(grid, settings, paths["results_dir"])
        payload = assemble(grid, settings, status, command=command, preset=args.preset, invocations=[])
    else:
        if not args.dry_run:
            import datasets
            import transformers

            datasets.disable_progress_bars()
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        payload = run_matrix(settings, grid, results_dir=paths["results_dir"], workdir=paths["workdir"],
                             output=paths["output"], command=command,
                             preset=args.preset, dry_run=args.dry_run, progress=not args.no_progress)
        if args.dry_run:
            return 0
    written = render_results(payload, paths["docs"], paths["figure"])
    print(f"rendered {written['markdown']}" + (f" and {written['figure']}" if written["figure"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
