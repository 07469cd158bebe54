"""``hbd poison``: write a poisoned training split and a triggered test set.

Output (``datasets.save_to_disk`` format, a ``DatasetDict``; reload with ``datasets.load_from_disk``):
``train`` (poisoned, with ``is_poisoned``), ``validation`` and ``test`` (clean, unchanged),
``triggered_test`` (non-target test examples with the trigger, labelled with the target, plus
``original_label``), and ``attack.json`` (the attack configuration and counts). The folder is built
next to the destination and renamed into place, so a crash never leaves a half-written output.

Example:
    $ hbd poison --dataset rotten_tomatoes --attack badnets --poison-rate 0.1 --output ./poisoned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import staged_directory
from ..attacks.base import LABEL_MODES


def add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attack")
    group.add_argument("--attack", required=True, choices=["badnets", "addsent"], help="Attack to apply.")
    group.add_argument(
        "--target-label", type=int, default=1, help="Label id the backdoor produces (default 1)."
    )
    group.add_argument(
        "--poison-rate", type=float, default=0.1, help="Share of the training set to poison (default 0.1)."
    )
    group.add_argument(
        "--label-mode", choices=list(LABEL_MODES), default="dirty",
        help="dirty: relabel triggered non-target examples; clean: trigger target examples only; mixed: trigger every class.",
    )
    group.add_argument(
        "--seed", type=int, default=0, help="Seed of selection and insert positions (default 0)."
    )
    group.add_argument(
        "--triggers", default=None, help="BadNets: comma-separated trigger words (default cf,mn,bb,tq)."
    )
    group.add_argument(
        "--num-triggers", type=int, default=None, help="BadNets: triggers per text (default 1)."
    )
    group.add_argument(
        "--sentence", default=None, help="AddSent: trigger sentence (default 'I watch this 3D movie')."
    )
    group.add_argument(
        "--text-column", default="text", help="Text column of a raw input file (default 'text')."
    )
    group.add_argument(
        "--label-column", default="label", help="Label column of a raw input file (default 'label')."
    )


def build_attack(args: argparse.Namespace):
    from ..attacks import build_attack

    triggers = None if args.triggers is None else tuple(t for t in (w.strip() for w in args.triggers.split(",")) if t)
    return build_attack(args.attack, target_label=args.target_label, poison_rate=args.poison_rate,
                        label_mode=args.label_mode, seed=args.seed, triggers=triggers,
                        num_triggers=args.num_triggers, sentence=args.sentence)


def load_splits(name_or_path: str, text_column: str = "text", label_column: str = "label"):
    """A DatasetDict with ``text``/``label`` columns: a ``save_to_disk`` folder (e.g. written by
    ``hbd poison``) or anything :func:`~hf_backdoor_defense.data.load_text_classification` reads."""
    from pathlib import Path

    path = Path(name_or_path)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        return load_from_disk(str(path))
    from ..data import load_text_classification

    return load_text_classification(name_or_path, text_column=text_column, label_column=label_column)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "poison",
        help="Poison a text-classification dataset (BadNets / AddSent).",
        description="Poison the train split and build the triggered test set; saved with datasets.save_to_disk.",
    )
    parser.add_argument(
        "--dataset", required=True, help="Built-in corpus name, local file/folder, or Hub name."
    )
    add_attack_arguments(parser)
    parser.add_argument("--output", required=True, help="Output folder (must be empty or absent).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty output folder.")
    parser.set_defaults(func=run)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"--output {output} is not empty; pass --overwrite to replace it.")


def run(args: argparse.Namespace) -> int:
    from datasets import DatasetDict

    output = Path(args.output).expanduser().resolve()
    _check_output(output, args.overwrite)
    attack = build_attack(args)
    splits = load_splits(args.dataset, args.text_column, args.label_column)
    for name in ("train", "test"):
        if name not in splits:
            raise ValueError(f"dataset {args.dataset!r} has no {name!r} split (splits: {list(splits)}).")
    result = DatasetDict({name: split for name, split in splits.items() if name != "train"})
    result["train"] = attack.poison(splits["train"])
    result["triggered_test"] = attack.triggered_test_set(splits["test"])
    summary = {
        **attack.to_dict(),
        "dataset": args.dataset,
        "n_train": len(result["train"]),
        "n_poisoned": int(sum(result["train"]["is_poisoned"])),
        "n_triggered_test": len(result["triggered_test"]),
    }

    with staged_directory(output) as staging:
        DatasetDict({k: result[k] for k in ("train", *[s for s in result if s != "train"])}).save_to_disk(
            str(staging)
        )
        (staging / "attack.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    print(
        f"poisoned {summary['n_poisoned']}/{summary['n_train']} training examples with {summary['attack']} "
        f"({args.label_mode}-label, target {args.target_label}); triggered test set: "
        f"{summary['n_triggered_test']} examples -> {output}"
    )
    return 0
