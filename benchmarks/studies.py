"""Validation studies that choose the benchmark settings, run through the matrix engine.

Each study (``hf_backdoor_defense.matrix.studies.STUDIES``) runs a few settings variants of one grid on the
validation split (the test split is never read), caches every cell by hash in
``benchmarks/results/studies/matrix_cells/`` and writes ``benchmarks/results/studies/<name>.json``. Its
backdoored and clean models are kept in ``--workdir``, where the matrix finds them again (same settings,
same seed), so a study's models are not trained twice.

Usage:
    python benchmarks/studies.py --list                   # the studies and their questions
    python benchmarks/studies.py encoder                  # run one (resumable: run it again to continue)
    python benchmarks/studies.py budget --dry_run         # list its cells and which are cached
    python benchmarks/studies.py encoder --render         # print its table from the JSON file
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_backdoor_defense.assets import cache_dir  # noqa: E402
from hf_backdoor_defense.matrix.studies import STUDIES, render_study, run_study  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "studies"
SCRIPT = "python benchmarks/studies.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", choices=list(STUDIES), help="the study to run")
    p.add_argument("--variants", nargs="+", default=None, help="run only these variants (default: all)")
    p.add_argument("--results_dir", type=Path, default=RESULTS, help="default %(default)s")
    p.add_argument("--workdir", type=Path, default=None, help="shared models (default <HBD cache>/matrix_work)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable CPU)")
    p.add_argument("--list", action="store_true", help="list the studies")
    p.add_argument("--dry_run", action="store_true", help="list the cells and which are cached; run nothing")
    p.add_argument("--render", action="store_true", help="print the study's table from its JSON file")
    p.add_argument("--figure", type=Path, default=None,
                   help="with --render: also draw ASR - floor against CACC - floor per variant into this PNG")
    p.add_argument("--no_progress", action="store_true", help="one log line per cell instead of a tqdm bar")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list or not args.study:
        for study in STUDIES.values():
            print(f"{study.name:10s} {study.question}\n{'':10s} variants: {', '.join(study.variants)}")
        return 0
    study = STUDIES[args.study]
    if args.render:
        payload = json.loads((args.results_dir / f"{study.name}.json").read_text())
        print("\n".join(render_study(payload)))
        if args.figure:
            from hf_backdoor_defense.matrix.render import plot_study

            written = plot_study(payload, args.figure)
            print(f"figure: {written}" if written else "figure: no cell is paired with its floor yet")
        return 0
    if not args.dry_run:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    command = " ".join([SCRIPT, *map(shlex.quote, argv)])
    payload = run_study(study, results_dir=args.results_dir, workdir=args.workdir or cache_dir() / "matrix_work",
                        variants=args.variants, command=command, threads=args.threads, dry_run=args.dry_run,
                        progress=not args.no_progress)
    if not args.dry_run:
        print("\n".join(render_study(payload)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
