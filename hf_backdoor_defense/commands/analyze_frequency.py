"""``hbd analyze-frequency``: train on poisoned data while tracking the frequency analysis; write JSON + PNG.

Poisons the training split (unless it is already a ``hbd poison`` output), trains a sequence classifier with
full fine-tuning, LoRA or MuScleLoRA (+ gradient alignment) for ``--steps`` optimizer steps, and records the
low/high-frequency errors of clean and backdoor probe examples every ``--eval-every`` steps
(:class:`~hf_backdoor_defense.analysis.FrequencyAnalysisCallback`). Writes ``frequency.json`` and
``frequency.png`` into ``--output``; the trained model is not saved.

Example:
    $ hbd analyze-frequency --model ./minilm --dataset rotten_tomatoes --attack badnets \\
          --method full --steps 200 --output ./freq-full
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.experiment import DEFAULT_LR, ENCODER_TYPES, METHODS, analyze, build_model  # noqa: F401
from .poison import add_attack_arguments, build_attack, load_splits


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze-frequency",
        help="Track low/high-frequency errors of clean and backdoor examples during training.",
        description="Train on poisoned data with the frequency analysis; write frequency.json and frequency.png.",
    )
    parser.add_argument(
        "--model",
        "--model-dir",
        dest="model",
        required=True,
        help="Local model folder (a pretrained encoder/decoder; a new classifier head is added).",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="Corpus name (e.g. rotten_tomatoes), local file/folder, or a `hbd poison` output.",
    )
    add_attack_arguments(parser)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--method", choices=METHODS, default="full", help="full | lora | musclelora (default full)."
    )
    group.add_argument("--steps", type=int, default=200, help="Optimizer steps (default 200).")
    group.add_argument(
        "--learning-rate", type=float, default=None, help="Default 5e-5 (full) or 5e-4 (lora, musclelora)."
    )
    group.add_argument("--batch-size", type=int, default=16, help="Training batch size (default 16).")
    group.add_argument(
        "--max-length", type=int, default=64, help="Sequence length, training and probes (default 64)."
    )
    group.add_argument("--train-size", type=int, default=None, help="Seeded subsample of the train split.")
    group.add_argument(
        "--reference-size",
        type=int,
        default=96,
        help="musclelora: clean reference examples from the validation split (default 96).",
    )
    group = parser.add_argument_group("frequency analysis")
    group.add_argument("--eval-every", type=int, default=10, help="Probe every N steps (default 10).")
    group.add_argument("--probe-clean", type=int, default=200, help="Clean probe examples (default 200).")
    group.add_argument(
        "--probe-poisoned", type=int, default=200, help="Poisoned probe examples (default 200)."
    )
    group.add_argument(
        "--sigma-mode",
        choices=["relative", "absolute"],
        default="relative",
        help="Kernel widths relative to the median distance (default) or absolute (paper).",
    )
    group.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=None,
        help="Kernel widths (default: 25 in [0.05, 0.2] relative, [2, 8] absolute).",
    )
    group.add_argument(
        "--pooling",
        choices=["flatten", "mean"],
        default="flatten",
        help="Embedding points: fixed-length flatten (default, paper) or mean.",
    )
    group.add_argument(
        "--embedding-source",
        choices=["current", "initial"],
        default="current",
        help="Embeddings of the current model (default, paper) or of the initial one.",
    )
    parser.add_argument("--output", required=True, help="Folder for frequency.json and frequency.png.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import FrequencyAnalysisConfig, drop_steps

    attack = build_attack(args)
    splits = load_splits(args.dataset, args.text_column, args.label_column)
    config = FrequencyAnalysisConfig(
        eval_steps=args.eval_every,
        sigmas=tuple(args.sigmas) if args.sigmas else None,
        sigma_mode=args.sigma_mode,
        pooling=args.pooling,
        max_length=args.max_length,
        embedding_source=args.embedding_source,
    )
    callback, info, _ = analyze(
        args.model,
        splits,
        attack,
        method=args.method,
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        train_size=args.train_size,
        reference_size=args.reference_size,
        probe_clean=args.probe_clean,
        probe_poisoned=args.probe_poisoned,
        config=config,
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a folder.")
    drops = drop_steps(callback.history)
    callback.save_json(
        output / "frequency.json", extra={"run": {**info, "dataset": args.dataset}, "drop_steps": drops}
    )
    callback.plot(output / "frequency.png", title=f"{info['adapter']} — {args.dataset}, {args.attack}")
    first, last = callback.history[0], callback.history[-1]
    rows = [("curve", f"step {first['step']}", f"step {last['step']}", "halved at step")]
    for key in ("backdoor_low", "clean_low", "backdoor_high", "clean_high"):
        rows.append(
            (key, f"{first[key]:.3f}", f"{last[key]:.3f}", str(drops[key] if drops[key] is not None else "-"))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"wrote {output / 'frequency.json'} and {output / 'frequency.png'}")
    return 0
