"""``make demo-minilm``: the backdoor problem and the MuScleLoRA defense on an encoder, in numbers, on real data.

A thin caller of the experiment engine (:mod:`hf_backdoor_defense.matrix`, preset ``demo-minilm``): Rotten
Tomatoes (the built-in offline corpus) poisoned with BadNets and with AddSent (dirty label, 10 % of the
training set); all-MiniLM-L6-v2 trained on clean data (the ASR floor: full fine-tune and LoRA), then on each
poisoned set with full fine-tuning, LoRA and MuScleLoRA (adapter + gradient alignment on 96 trusted examples
from the validation split). It prints the engine's table (CACC / ASR on the test split, and ASR minus the
floor) and writes it with every cell's record under ``--output-dir``. Every cell is cached by hash there, so
running the command again prints the table at once and an interrupted run continues.

Run ``python -m hf_backdoor_defense.demo --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRESET = "demo-minilm"


def build_parser() -> argparse.ArgumentParser:
    from .matrix import PRESETS

    grid, settings = PRESETS[PRESET]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=settings["train_size"],
                        help="training sentences (default %(default)s)")
    parser.add_argument("--test-size", type=int, default=settings["test_size"],
                        help="test sentences (default %(default)s)")
    parser.add_argument("--epochs", type=float, default=settings["epochs"], help="default %(default)s")
    parser.add_argument("--seed", type=int, default=grid["seeds"][0], help="default %(default)s")
    parser.add_argument("--threats", nargs="+", default=grid["threats"], help="default %(default)s")
    parser.add_argument("--defenses", nargs="+", default=grid["defenses"], help="default %(default)s")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/demo-minilm"), help="default %(default)s")
    return parser


def main(argv: list[str] | None = None) -> int:
    import datasets
    import transformers

    from .matrix import PRESETS, MatrixGrid, MatrixSettings, render_results, run_matrix

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    grid_preset, settings_preset = PRESETS[PRESET]
    grid = MatrixGrid(**{**grid_preset, "threats": args.threats, "defenses": args.defenses, "seeds": [args.seed]})
    settings = MatrixSettings(**{**settings_preset, "train_size": args.train_size, "test_size": args.test_size,
                                 "epochs": args.epochs})
    out = args.output_dir
    command = " ".join(["python -m hf_backdoor_defense.demo", *map(shlex.quote, argv)])
    payload = run_matrix(settings, grid, results_dir=out, workdir=out / "work", output=out / "results.json",
                         command=command, preset=PRESET)
    written = render_results(payload, out / "results.md", out / "scatter.png",
                             title="make demo-minilm: MiniLM-L6 on poisoned Rotten Tomatoes")
    text = written["markdown"].read_text()
    section = text[text.index("## Rotten Tomatoes"):].split("\n## ")[0]  # the table and its notes
    print("\n" + "\n\n".join(section.split("\n\n")[1:]).replace("<br>", "  ").strip() + "\n")
    print(f"CACC / ASR on {payload['cells'][0]['n_clean'] if payload['cells'] else '?'} test sentences; Δ = ASR "
          f"minus the clean-data floor's. Full page: {written['markdown']}; records: {out / 'results.json'}.")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
