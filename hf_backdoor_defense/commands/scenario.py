"""``hbd scenario``: attacker trains and publishes an adapter, the user re-tunes it on shifted clean data.

Prints (and writes to ``<output>/scenario_results.json``) CACC and LFR after each stage.

Example:
    $ hbd scenario --model ./minilm --shift spamassassin --attack badnets --attacker gradient_control \
          --output runs/gc-spam --max-user-samples 1000 --defense fine-purifying
    $ hbd scenario --model ./minilm --shift custom --attacker-data imdb.csv --user-data sst2.csv \
          --attack badnets --attacker vanilla --output runs/vanilla
"""

from __future__ import annotations

import argparse
import json

from .arguments import int_or_none
from .poison import add_attack_arguments, build_attack, load_splits

DEFENSES = ("fine-mixing", "fine-purifying", "musclelora-retune")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "scenario",
        help="Backdoored adapter vs the user's clean re-tuning (LFR/CACC after each stage).",
        description="Stage 1: the attacker trains a poisoned PEFT adapter (vanilla or Gradient Control) and "
        "publishes it. Optional: defenses run on it. Stage 2: the user re-tunes it on clean data from a "
        "shifted domain. CACC and LFR (label flip rate of triggered inputs) after each stage.",
    )
    parser.add_argument("--model", required=True, help="Base model folder or Hub name (frozen).")
    parser.add_argument("--shift", default="spamassassin", choices=["spamassassin", "rotten_tomatoes", "custom"],
                        help="Built-in domain shift, or 'custom' with --attacker-data/--user-data (default spamassassin).")
    parser.add_argument("--attacker-data", default=None, help="custom: attacker's data (its 'train' split is used).")
    parser.add_argument("--user-data", default=None,
                        help="custom: user's data ('train' split re-tunes, 'test' split evaluates).")
    parser.add_argument("--test-data", default=None, help="custom: user's test data (all rows); overrides the above.")
    parser.add_argument("--attacker", default="gradient_control", choices=["vanilla", "gradient_control"],
                        help="How the attacker trains the adapter (default gradient_control).")
    parser.add_argument("--output", required=True, help="Output folder (adapters + scenario_results.json).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing scenario_results.json.")
    add_attack_arguments(parser)
    train = parser.add_argument_group("training")
    train.add_argument("--attacker-epochs", type=float, default=10.0, help="Poison training epochs (default 10).")
    train.add_argument("--user-epochs", type=float, default=5.0, help="User re-tuning epochs (default 5).")
    train.add_argument("--attacker-lr", type=float, default=2e-4, help="Attacker learning rate (default 2e-4).")
    train.add_argument("--user-lr", type=float, default=2e-4, help="User learning rate (default 2e-4).")
    train.add_argument("--batch-size", type=int, default=32, help="Train batch size (default 32).")
    train.add_argument("--max-length", type=int, default=128, help="Truncation length (default 128).")
    train.add_argument("--trigger-room", type=int_or_none, default=8,
                       help="Cut texts to max-length minus this many tokens before poisoning, so triggers are not "
                            "truncated away (default 8; 'none': no cut).")
    train.add_argument("--max-attacker-samples", type=int, default=None, help="Cap on the attacker's train set.")
    train.add_argument("--max-user-samples", type=int, default=None, help="Cap on the user's train set.")
    train.add_argument("--max-test-samples", type=int, default=None, help="Cap on the test set.")
    train.add_argument("--eval-split", choices=["test", "validation"], default="test",
                       help="Built-in shifts: score every stage on the user's test split (default) or its "
                            "validation split, to choose settings without touching the test split.")
    train.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8; alpha = 2r).")
    gc = parser.add_argument_group("gradient control")
    gc.add_argument("--no-clnorm", action="store_true", help="Disable CLNorm.")
    gc.add_argument("--no-ilproj", action="store_true", help="Disable ILProj.")
    gc.add_argument("--clnorm-alpha", type=float, default=1e-4, help="CLNorm step size (default 1e-4).")
    gc.add_argument("--anchor-layer", type=int, default=None, help="CLNorm anchor layer (default: middle).")
    gc.add_argument("--ilproj-mode", choices=["always", "on_conflict"], default="always")
    gc.add_argument("--beta-schedule", choices=["lower_half", "upper_half", "all", "none"], default="lower_half")
    parser.add_argument("--defense", action="append", choices=DEFENSES, default=[],
                        help="Also evaluate this defense on the published adapter (repeatable).")
    parser.add_argument("--defense-clean-samples", type=int, default=256,
                        help="Clean user examples given to each defense (default 256): the purifiers' clean "
                        "set; musclelora-retune's reference set (it re-tunes on the rest of the user's data).")
    parser.add_argument("--quiet", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)


def _whole(path: str, args):
    import datasets

    splits = load_splits(path, args.text_column, args.label_column)
    return datasets.concatenate_datasets([splits[name] for name in splits])


def run(args: argparse.Namespace) -> int:
    from peft import LoraConfig

    import hf_backdoor_defense  # noqa: F401  (registers MuScleLoRA with PEFT)

    from ..scenario import (
        RetuningScenarioConfig,
        alignment_retune_defense,
        purifier_defense,
        run_retuning_scenario,
    )

    attacker_ds = user_ds = test_ds = None
    if args.attacker_data:
        attacker_ds = load_splits(args.attacker_data, args.text_column, args.label_column)["train"]
    if args.user_data:
        user_splits = load_splits(args.user_data, args.text_column, args.label_column)
        user_ds = user_splits["train"]
        test_ds = user_splits["test"] if "test" in user_splits else None
    if args.test_data:
        test_ds = _whole(args.test_data, args)
    gradient_control = {
        "clnorm": not args.no_clnorm, "ilproj": not args.no_ilproj, "clnorm_alpha": args.clnorm_alpha,
        "anchor_layer": args.anchor_layer, "ilproj_mode": args.ilproj_mode, "beta_schedule": args.beta_schedule,
    }
    config = RetuningScenarioConfig(
        output_dir=args.output, shift=args.shift, attacker_method=args.attacker, seed=args.seed,
        max_length=args.max_length, trigger_room=args.trigger_room, max_attacker_samples=args.max_attacker_samples,
        max_user_samples=args.max_user_samples, max_test_samples=args.max_test_samples,
        eval_split=args.eval_split, attacker_epochs=args.attacker_epochs, attacker_learning_rate=args.attacker_lr,
        user_epochs=args.user_epochs, user_learning_rate=args.user_lr, batch_size=args.batch_size,
        gradient_control=gradient_control, overwrite=args.overwrite, disable_progress_bar=args.quiet,
    )
    defenses = {}
    for name in args.defense:
        from ..purification import FineMixing, FinePurifying

        if name == "musclelora-retune":
            defenses[name] = alignment_retune_defense(num_reference=args.defense_clean_samples)
            continue
        purifier = FineMixing(seed=args.seed) if name == "fine-mixing" else FinePurifying(show_progress=not args.quiet)
        defenses[name] = purifier_defense(purifier, num_clean=args.defense_clean_samples)
    results = run_retuning_scenario(
        args.model, config, attack=build_attack(args),
        peft_config=LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=2 * args.lora_r),
        attacker_dataset=attacker_ds, user_dataset=user_ds, test_dataset=test_ds, defenses=defenses,
    )
    print(json.dumps({"stages": results["stages"], "adapters": results["adapters"]}, indent=2))
    return 0
