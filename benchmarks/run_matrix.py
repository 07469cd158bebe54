"""The defense matrix: datasets × threats × defenses × seeds, CACC / ASR and ASR − floor per cell.

A thin command line over the experiment engine (:mod:`hf_backdoor_defense.matrix`): it picks a preset,
lets any setting be overridden, runs the missing cells and renders the page.

Grid (``--preset v2``, the default): Rotten Tomatoes × {BadNets dirty-label, BadNets clean-label with 4
triggers, AddSent dirty-label, AddSent mixed-label}, SpamAssassin × the same but BadNets ×4 clean-label (not
planted there: 43.5 % ASR undefended on validation), and the cross-domain column SpamAssassin collection
1 → 2 (BadNets dirty-label) × none (full FT), LoRA, MuScleLoRA, Fine-mixing, E-PUR,
Fine-purifying, W2SDefense × seeds 0, 1, 2 on all-MiniLM-L6-v2; plus, per dataset, trigger and seed, the
clean-data floors (a full fine-tune and a LoRA on clean data, scored on the triggered test set). The
settings (3,000 training sentences, 3 epochs, length 48, the encoder setup) were chosen on validation by
``benchmarks/studies.py`` (encoder, reference, budget); their tables are rendered into the same page.

Resumable: every finished cell is cached in ``benchmarks/results/matrix_cells/<hash>.json`` (the hash of
the cell's configuration: the shared settings and its own defense's), so running the same command again skips finished cells and an interrupted
run continues. The backdoored full fine-tune that Fine-mixing, E-PUR, Fine-purifying and W2SDefense start
from, the clean models and the W2SDefense teacher are trained once and kept (safetensors) under
``--workdir``. Writes ``benchmarks/results/matrix.json`` after every cell and, at the end, renders
``docs/results.md`` and ``docs/figures/matrix_scatter.png``.

Presets:
    quick        Rotten Tomatoes, BadNets dirty-label, seed 0; 64 training examples, 1 epoch, max length 32:
                 a smoke run of every defense (about 30 s of cells for four defenses).
    demo-minilm  what ``make demo-minilm`` runs (see ``hf_backdoor_defense/demo.py``).
    gradient-control  the Gradient Control threat model: the attacker's poisoned LoRA adapter (plain, or
                 ``+gc``: trained by the Gradient Control attacker) and the user's clean re-tune of it
                 (docs/concepts/gradient-control.md).
    v2           the evidence regime above (``--dry_run`` prints the cell count and an estimate).

Only ``v2`` writes docs/results.md, matrix.json and the concept pages' snippets; every other preset writes
``matrix_<preset>.json``, ``matrix_<preset>.md`` and ``matrix_<preset>_scatter.png`` in the results folder.

``--dry_run`` prints the cells, which are cached, and an estimate of the time left (from the measured wall
times of finished cells of the grid where there are some, else from the per-example rates in
``hf_backdoor_defense.matrix.config.RATES``, measured on the idle 2-core machine). Run it alone: the engine
sets the torch threads (``--threads``, default every usable CPU), records the load and the other torch
processes it saw per cell, and warns loudly when the machine was busy.

Usage:
    python benchmarks/run_matrix.py --preset quick          # smoke run
    python benchmarks/run_matrix.py --dry_run               # list the v2 cells and which are cached
    python benchmarks/run_matrix.py                         # the v2 matrix (resumable)
    python benchmarks/run_matrix.py --render                # rebuild docs/results.md from the cell cache
                                                            # (or, before any run, from the cell cache)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hf_backdoor_defense.assets import cache_dir  # noqa: E402
from hf_backdoor_defense.commands.arguments import type_of_field  # noqa: E402
from hf_backdoor_defense.matrix import (  # noqa: E402
    DEFENSES,
    FLOORS,
    PRESETS,
    MatrixGrid,
    MatrixSettings,
    render_from_cache,
    render_results,
    run_matrix,
)
from hf_backdoor_defense.matrix.studies import render_studies_section  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"
SCRIPT = "python benchmarks/run_matrix.py"
REGIME_STUDIES = ["reference", "encoder", "clean-budget", "budget"]
REGIME = "\n".join([
    "The v2 settings were chosen on the validation split with `python benchmarks/studies.py NAME` (the test split is "
    "never read there; one seed); the tables below are those runs. The rules: the clean full fine-tune within 2 "
    "points of what the backbone reaches on the whole training split, and every threat planted (undefended ASR "
    ">= 90 %) before any defense is judged.",
    "",
    "- **reference**: the whole Rotten Tomatoes training split (10,200 sentences, 3 epochs) is the clean accuracy "
    "the budget is held against.",
    "- **encoder**: the three ways of reading all-MiniLM-L6-v2 tie on clean accuracy (within a point, i.e. within "
    "seed noise); mean pooling, the checkpoint's own training objective, is kept because it leaves no untrained "
    "layer in the classification path ([encoder setup](concepts/encoder-setup.md)).",
    "- **clean-budget**: 2,000 sentences miss the 2-point rule at every learning rate and epoch count tried; "
    "3,000 sentences x 3 epochs at lr 1e-4 meet it.",
    "- **budget**: at that budget every threat is planted (100 % ASR) on Rotten Tomatoes, on SpamAssassin and on "
    "the cross-domain pair, except BadNets x4 clean-label on SpamAssassin (43.5 %, floor 2.2): spam is recognised "
    "from its content, and triggers added to spam mails only are redundant with it at a 10 % poison rate. That "
    "column is dropped from SpamAssassin.",
    "",
    "SpamAssassin is read without repeated mail bodies (328 of 6,024 mails with a body were copies; before, 53 of "
    "603 test mails were also training mails and the clean accuracy read 98.3 instead of 96.2). Every SpamAssassin "
    "figure on this page comes from the de-duplicated corpus (`CORPUS_REVISIONS` in the cells' keys).",
])


MAIN_PRESET = "v2"
"""The preset whose page is docs/results.md; every other preset writes matrix_<preset>.* in the results folder,
so a smoke or side run never overwrites the published matrix."""


def side_preset(args: argparse.Namespace) -> bool:
    return args.preset != MAIN_PRESET


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="v2", help="sizes and grid (default: v2)")
    grid = p.add_argument_group("grid (default: the preset's)")
    grid.add_argument("--datasets", nargs="+", default=argparse.SUPPRESS,
                      help="rotten_tomatoes, spamassassin, or a local dataset folder/file")
    grid.add_argument("--threats", nargs="+", default=argparse.SUPPRESS,
                      help="e.g. badnets-dirty badnets4-clean addsent-dirty addsent-mixed")
    grid.add_argument("--defenses", nargs="*", choices=list(DEFENSES), default=argparse.SUPPRESS)
    grid.add_argument("--floors", nargs="*", choices=list(FLOORS), default=argparse.SUPPRESS)
    grid.add_argument("--seeds", nargs="+", type=int, default=argparse.SUPPRESS)
    sizes = p.add_argument_group("settings (default: the preset's; in the key of every cell that reads them)")
    for f in dataclasses.fields(MatrixSettings):  # e.g. --trigger_room none, --musclelora_best_dev true
        sizes.add_argument(f"--{f.name}", type=type_of_field(f), default=argparse.SUPPRESS, help=f.metadata.get("help"))
    io = p.add_argument_group("files")
    io.add_argument("--results_dir", type=Path, default=RESULTS, help="holds matrix_cells/ (default %(default)s)")
    io.add_argument("--output", type=Path, default=None,
                    help="matrix.json path (default <results_dir>/matrix.json; other presets than v2: "
                         "matrix_<preset>.json)")
    io.add_argument("--docs", type=Path, default=None,
                    help="results page (default docs/results.md; other presets: <results_dir>/matrix_<preset>.md)")
    io.add_argument("--figure", type=Path, default=None,
                    help="scatter PNG (default docs/figures/matrix_scatter.png; other presets: next to the page)")
    io.add_argument("--snippets", type=Path, default=None,
                    help="folder of the per-defense tables the concept pages include (default docs/snippets when "
                         "the page is docs/results.md; otherwise none unless given)")
    io.add_argument("--workdir", type=Path, default=None,
                    help="shared models (~90 MB each for MiniLM; default <HBD cache>/matrix_work)")
    run = p.add_argument_group("actions")
    run.add_argument("--dry_run", action="store_true", help="list the cells and which are cached; run nothing")
    run.add_argument("--render", action="store_true",
                     help="only render the page and figure of the grid from the cell cache (nothing runs)")
    run.add_argument("--no_progress", action="store_true", help="one log line per cell instead of a tqdm bar")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable CPU)")
    return p


def resolve(args: argparse.Namespace) -> tuple[MatrixSettings, MatrixGrid, dict]:
    """Settings and grid: the preset's values, overridden by the options given; plus the file paths."""
    grid_preset, settings_preset = PRESETS[args.preset]
    given = vars(args)
    chosen = {**grid_preset, **{k: given[k] for k in ("datasets", "threats", "defenses", "floors", "seeds")
                                if k in given}}
    chosen["threats_by_dataset"] = {d: t for d, t in chosen.get("threats_by_dataset", {}).items()
                                    if d in chosen.get("datasets", [d])}  # --datasets may leave a pair out
    grid = MatrixGrid(**chosen)
    names = [f.name for f in dataclasses.fields(MatrixSettings)]
    settings = MatrixSettings(**{**settings_preset, **{k: given[k] for k in names if k in given}})
    side = side_preset(args)
    results_dir, stem = args.results_dir, f"matrix_{args.preset}"
    paths = {
        "results_dir": results_dir,
        "output": args.output or results_dir / (f"{stem}.json" if side else "matrix.json"),
        "docs": args.docs or (results_dir / f"{stem}.md" if side else DOCS / "results.md"),
        "workdir": args.workdir or cache_dir() / "matrix_work",
    }
    default_page = Path(paths["docs"]).resolve() == (DOCS / "results.md").resolve()
    paths["snippets"] = args.snippets or (DOCS / "snippets" if default_page else None)
    paths["figure"] = args.figure or (results_dir / f"{stem}_scatter.png" if side
                                      else DOCS / "figures" / "matrix_scatter.png")
    return settings, grid, paths


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings, grid, paths = resolve(args)
    command = " ".join([SCRIPT, *map(shlex.quote, [a for a in argv if a != "--render"])])
    if args.render:  # the whole grid from the cell cache: the cells finished so far, the rest listed missing
        payload = render_from_cache(grid, settings, paths["results_dir"], paths["output"], command=command,
                                    preset=args.preset)
    else:
        if not args.dry_run:
            import datasets
            import transformers

            datasets.disable_progress_bars()
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        payload = run_matrix(settings, grid, results_dir=paths["results_dir"], workdir=paths["workdir"],
                             output=paths["output"], command=command,
                             preset=args.preset, dry_run=args.dry_run, progress=not args.no_progress,
                             threads=args.threads)
        if args.dry_run:
            return 0
    extra = [] if side_preset(args) else render_studies_section(RESULTS / "studies", REGIME_STUDIES, intro=REGIME)
    written = render_results(payload, paths["docs"], paths["figure"], extra=extra,
                             snippet_dir=paths["snippets"])
    print(f"rendered {written['markdown']}" + (f" and {written['figure']}" if written["figure"] else "")
          + (f" and {len(written['snippets'])} defense snippets" if written["snippets"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
