"""MuScleLoRA efficacy on Rotten Tomatoes + MiniLM: CACC / ASR against dirty-label BadNets and AddSent.

Cells (per attack, per seed):
    clean_full_ft        full fine-tuning on clean data: the ASR floor (a model that never saw a trigger)
    clean_lora           LoRA on clean data: the CACC reference for the defended model
    poisoned_full_ft     full fine-tuning on poisoned data (no defense)
    poisoned_lora        LoRA on poisoned data (no defense)
    poisoned_musclelora  MuScleLoRA adapter + gradient alignment on poisoned data (the defense)

The clean cells do not depend on the attack; they are trained once per seed and evaluated against each
attack's triggered test set. The reference set is drawn from the validation split (trusted clean data, never
from the training set); the test split is used only for the final numbers. Also reported: the time per
optimizer step of MuScleLoRA relative to LoRA (the floor is 1 + reference batch / train batch).

Usage:
    python benchmarks/musclelora_efficacy.py --quick        # smoke run, a couple of minutes
    python benchmarks/musclelora_efficacy.py                # full cells, 3 seeds (see --help for sizes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.atomic import write_json_atomic  # noqa: E402
from hf_backdoor_defense.attacks import AddSent, BadNets  # noqa: E402
from hf_backdoor_defense.data import load_text_classification, tokenize_dataset  # noqa: E402
from hf_backdoor_defense.experiments import CellSettings  # noqa: E402
from hf_backdoor_defense.experiments import train_cell as experiments_train_cell  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "musclelora_efficacy.json"
CLEAN_CELLS = ("clean_full_ft", "clean_lora")
POISONED_CELLS = ("poisoned_full_ft", "poisoned_lora", "poisoned_musclelora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="tiny subsample, 1 seed, 1 epoch: proves the script runs"
    )
    p.add_argument("--train_size", type=int, default=2000, help="training examples (subsample of train)")
    p.add_argument("--test_size", type=int, default=1000, help="test examples (subsample of test)")
    p.add_argument(
        "--reference_size", type=int, default=96, help="clean reference examples (from validation)"
    )
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--full_ft_lr", type=float, default=5e-5)
    p.add_argument(
        "--adapter_lr", type=float, default=2e-3, help="learning rate of LoRA and MuScleLoRA cells"
    )
    p.add_argument(
        "--alignment_start_epoch", type=float, default=None,
        help="override the encoder preset's alignment_start_epoch (paper: 1; before it, steps whose reference "
             "loss is under min_reference_loss use the raw gradient)",
    )
    p.add_argument("--min_reference_loss", type=float, default=None, help="override the preset's 0.4")
    p.add_argument("--max_raw_gradient_ratio", type=float, default=None, help="override the preset's 0.1")
    p.add_argument("--poison_rate", type=float, default=0.1)
    p.add_argument("--target_label", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--attacks", nargs="+", default=["badnets", "addsent"], choices=["badnets", "addsent"])
    p.add_argument("--output", type=Path, default=None, help=f"default {RESULTS} (quick: *_quick.json)")
    args = p.parse_args(argv)
    if args.output is None:
        args.output = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS
    if args.quick:
        # 2 optimizer steps per cell, one attack, one seed: checks the plumbing, not the defense
        args.train_size, args.test_size, args.reference_size = 32, 24, 16
        args.epochs, args.batch_size, args.max_length, args.seeds = 1.0, 16, 32, [0]
        args.attacks = args.attacks[:1]
    return args


def make_attack(name: str, seed: int, cli):
    cls = {"badnets": BadNets, "addsent": AddSent}[name]
    return cls(poison_rate=cli.poison_rate, target_label=cli.target_label, label_mode="dirty", seed=seed)


def train_cell(cell: str, train, reference, tokenizer, seed: int, cli, workdir: str):
    method = cell.split("_", 1)[1]  # full_ft / lora / musclelora
    settings = CellSettings(epochs=cli.epochs, batch_size=cli.batch_size, max_length=cli.max_length,
                            full_ft_lr=cli.full_ft_lr, adapter_lr=cli.adapter_lr, seed=seed,
                            extra_args=alignment_overrides(cli) if method == "musclelora" else {})
    model, info = experiments_train_cell(method, train, tokenizer, minilm_path(), settings,
                                         reference=reference, workdir=workdir)
    return model, {"adapter": info["method"], "train_seconds": info["train_seconds"],
                   "seconds_per_step": info["seconds_per_step"]}


def alignment_overrides(cli) -> dict:
    """Gradient-alignment fields given on the command line (the rest come from the encoder preset)."""
    names = ("alignment_start_epoch", "min_reference_loss", "max_raw_gradient_ratio")
    return {n: getattr(cli, n) for n in names if getattr(cli, n) is not None}


def summarise(values):
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv=None) -> int:
    cli = parse_args(argv)
    begin = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_text_classification("rotten_tomatoes")
    runs: dict[str, dict[str, list]] = {}
    step_ratios = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in cli.seeds:
            train_clean = (
                data["train"].shuffle(seed=seed).select(range(min(cli.train_size, len(data["train"]))))
            )
            test = data["test"].shuffle(seed=1234).select(range(min(cli.test_size, len(data["test"]))))
            ref_raw = data["validation"].shuffle(seed=seed).select(range(cli.reference_size))
            reference = tokenize_dataset(ref_raw, tokenizer, max_length=cli.max_length)
            attacks = {name: make_attack(name, seed, cli) for name in cli.attacks}

            tok_clean = tokenize_dataset(train_clean, tokenizer, max_length=cli.max_length)
            for cell in CLEAN_CELLS:
                model, info = train_cell(cell, tok_clean, reference, tokenizer, seed, cli, workdir)
                for name, attack in attacks.items():
                    scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=cli.max_length)
                    runs.setdefault(f"{name}/{cell}", {}).setdefault("runs", []).append(
                        {"seed": seed, **scores, **info}
                    )
                del model

            for name, attack in attacks.items():
                poisoned = tokenize_dataset(attack.poison(train_clean), tokenizer, max_length=cli.max_length)
                times = {}
                for cell in POISONED_CELLS:
                    model, info = train_cell(cell, poisoned, reference, tokenizer, seed, cli, workdir)
                    scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=cli.max_length)
                    runs.setdefault(f"{name}/{cell}", {}).setdefault("runs", []).append(
                        {"seed": seed, **scores, **info}
                    )
                    times[cell] = info["seconds_per_step"]
                    del model
                step_ratios.append(times["poisoned_musclelora"] / times["poisoned_lora"])
                print(
                    f"[seed {seed}] {name}: "
                    + ", ".join(
                        f"{c}: CACC {runs[f'{name}/{c}']['runs'][-1]['cacc']:.3f} ASR {runs[f'{name}/{c}']['runs'][-1]['asr']:.3f}"
                        for c in CLEAN_CELLS + POISONED_CELLS
                    ),
                    flush=True,
                )

    table = {}
    for key, entry in runs.items():
        table[key] = {
            "cacc": summarise([r["cacc"] for r in entry["runs"]]),
            "asr": summarise([r["asr"] for r in entry["runs"]]),
            "adapter": entry["runs"][0]["adapter"],
            "runs": entry["runs"],
        }
    payload = {
        "benchmark": "musclelora_efficacy",
        "quick": cli.quick,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cli).items()},
        "model": "sentence-transformers all-MiniLM-L6-v2 (BertModel, 22.7M) + new classification head",
        "data": "Rotten Tomatoes sentences (project split); reference set from validation, metrics on test",
        "alignment": {"preset": "encoder (min_reference_loss 0.4, alignment_start_epoch 1, max_raw_gradient_ratio 0.1)",
                      "overrides": alignment_overrides(cli), "reference_batch": "= train batch"},
        "cells": table,
        "step_time_ratio_musclelora_vs_lora": summarise(step_ratios) if step_ratios else None,
        "step_time_ratio_floor": 2.0,
        "total_seconds": time.perf_counter() - begin,
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(cli.output, payload)
    print(f"\n{'cell':<34}{'CACC':>16}{'ASR':>16}")
    for key, row in sorted(table.items()):
        print(
            f"{key:<34}{row['cacc']['mean']:>9.3f}±{row['cacc']['std']:.3f}{row['asr']['mean']:>9.3f}±{row['asr']['std']:.3f}"
        )
    if step_ratios:
        print(
            f"step time MuScleLoRA / LoRA: {payload['step_time_ratio_musclelora_vs_lora']['mean']:.2f} (floor 2.0)"
        )
    print(f"wrote {cli.output} in {payload['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
