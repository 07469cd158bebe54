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

The results JSON is rewritten after every cell; an interrupted run continues with the same command plus
``--resume`` (seeds and attacks may be added that way too). An existing output is never replaced without
``--overwrite``.

Usage:
    python benchmarks/musclelora_efficacy.py --quick             # smoke run, a couple of minutes
    python benchmarks/musclelora_efficacy.py --preset reduced    # CPU-sized cells, 3 seeds
    python benchmarks/musclelora_efficacy.py                     # full cells, 3 seeds (see --help for sizes)
    python benchmarks/musclelora_efficacy.py --render benchmarks/results/musclelora_efficacy_reduced.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import (  # noqa: E402
    apply_preset,
    hardware_info,
    previous_results,
    read_results,
    settings_of,
    summarise,
    write_json,
)
from transformers import AutoTokenizer  # noqa: E402

from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.attacks import AddSent, BadNets  # noqa: E402
from hf_backdoor_defense.data import load_text_classification, tokenize_dataset  # noqa: E402
from hf_backdoor_defense.experiments import CellSettings  # noqa: E402
from hf_backdoor_defense.experiments import train_cell as experiments_train_cell  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "musclelora_efficacy.json"
CLEAN_CELLS = ("clean_full_ft", "clean_lora")
POISONED_CELLS = ("poisoned_full_ft", "poisoned_lora", "poisoned_musclelora")


PRESETS = {
    # The "full cells": more data and epochs than the demo, 3 seeds.
    "full": dict(train_size=2000, test_size=1000, epochs=3.0, batch_size=32, max_length=64, seeds=[0, 1, 2]),
    # CPU-sized: 1,200 sentences, 3 epochs, length 48 (about half the full preset's steps, at 3/4 the length).
    "reduced": dict(train_size=1200, test_size=600, epochs=3.0, batch_size=32, max_length=48, seeds=[0, 1, 2]),
    # 2 optimizer steps per cell, one attack, one seed: checks the plumbing, not the defense.
    "quick": dict(train_size=32, test_size=24, epochs=1.0, batch_size=16, max_length=32, seeds=[0]),
}
#: Arguments that do not change a result (so a resumed run may differ in them); seeds and attacks are the grid.
NOT_SETTINGS = ("output", "resume", "overwrite", "render", "quick", "seeds", "attacks")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="full",
                   help="sizes: full (the issue's cells), reduced (CPU-sized), quick (smoke run)")
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--train_size", type=int, default=None, help="training examples (subsample of train)")
    p.add_argument("--test_size", type=int, default=None, help="test examples (subsample of test)")
    p.add_argument(
        "--reference_size", type=int, default=None, help="clean reference examples (from validation; default 96)"
    )
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--max_length", type=int, default=None)
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
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--attacks", nargs="+", default=None, choices=["badnets", "addsent"])
    p.add_argument("--output", type=Path, default=None, help=f"default {RESULTS} (other presets: *_<preset>.json)")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells of an existing --output with the same settings and run the missing ones")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only print the Markdown table of an existing results JSON (nothing is trained)")
    args = p.parse_args(argv)
    apply_preset(args, PRESETS, RESULTS)
    if args.reference_size is None:
        args.reference_size = 16 if args.preset == "quick" else 96
    if args.attacks is None:
        args.attacks = ["badnets"] if args.preset == "quick" else ["badnets", "addsent"]
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


def summarise_rows(rows: list[dict]) -> tuple[dict, dict | None]:
    """``(table, step_ratio)``: mean ± std of CACC / ASR per ``attack/cell`` over seeds, and the MuScleLoRA /
    LoRA time-per-step ratio over the (seed, attack) pairs that have both."""
    table = {}
    for row in rows:
        table.setdefault(f"{row['attack']}/{row['cell']}", []).append(row)
    table = {key: {"cacc": summarise([r["cacc"] for r in these]), "asr": summarise([r["asr"] for r in these]),
                   "adapter": these[0]["adapter"], "n_seeds": len(these),
                   "runs": sorted(these, key=lambda r: r["seed"])}
             for key, these in sorted(table.items())}
    per_step = {(r["seed"], r["attack"], r["cell"]): r["seconds_per_step"] for r in rows}
    ratios = [per_step[(s, a, "poisoned_musclelora")] / per_step[(s, a, "poisoned_lora")]
              for (s, a, c) in per_step if c == "poisoned_musclelora" and (s, a, "poisoned_lora") in per_step]
    return table, (summarise(ratios) if ratios else None)


LABELS = {"clean_full_ft": "clean full FT (floor)", "clean_lora": "clean LoRA (CACC reference)",
          "poisoned_full_ft": "poisoned full FT", "poisoned_lora": "poisoned LoRA",
          "poisoned_musclelora": "poisoned MuScleLoRA"}


def render_markdown(payload: dict) -> str:
    """CACC / ASR in % (mean ± sample std over seeds) per cell and attack, and the step-time ratio."""
    cfg, table = payload["settings"], payload["cells"]
    attacks = list(dict.fromkeys(k.split("/")[0] for k in table))
    pm = lambda s: f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"  # noqa: E731
    seeds = sorted({r["seed"] for row in table.values() for r in row["runs"]})
    out = [f"MiniLM on Rotten Tomatoes, dirty-label attacks at {100 * cfg['poison_rate']:.0f} %; preset "
           f"`{cfg.get('preset', 'full')}`: {cfg['train_size']} training and {cfg['test_size']} test sentences, "
           f"{cfg['epochs']:g} epochs, batch {cfg['batch_size']}, length {cfg['max_length']}, "
           f"{cfg['reference_size']} reference sentences; seeds {seeds}; total {payload['total_seconds'] / 60:.0f} min."
           + ("" if payload.get("complete", True) else " **Incomplete: the same command with --resume adds the rest.**"),
           "", "| Cell | " + " | ".join(f"{a} CACC / ASR" for a in attacks) + " |", "|---|" + ":---:|" * len(attacks)]
    for cell in CLEAN_CELLS + POISONED_CELLS:
        row = [table.get(f"{a}/{cell}") for a in attacks]
        out.append(f"| {LABELS[cell]} | "
                   + " | ".join(f"{pm(r['cacc'])} / {pm(r['asr'])}" if r else "–" for r in row) + " |")
    ratio = payload.get("step_time_ratio_musclelora_vs_lora")
    if ratio:
        out += ["", f"Time per optimizer step, MuScleLoRA / LoRA: {ratio['mean']:.2f} ± {ratio['std']:.2f} "
                    f"(floor {payload['step_time_ratio_floor']:.1f})."]
    out += ["", "```bash", payload.get("command", "python benchmarks/musclelora_efficacy.py"), "```"]
    return "\n".join(out)


def main(argv=None) -> int:
    cli = parse_args(argv)
    if cli.render is not None:
        print(render_markdown(read_results(cli.render)))
        return 0
    previous = previous_results(cli, NOT_SETTINGS, key="settings")
    rows: list[dict] = previous["rows"] if previous else []
    earlier = float(previous["total_seconds"]) if previous else 0.0
    done = {(r["seed"], r["attack"], r["cell"]) for r in rows}
    begin = time.perf_counter()
    command = "python benchmarks/musclelora_efficacy.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save() -> dict:
        table, ratio = summarise_rows(rows)
        payload = {
            "benchmark": "musclelora_efficacy",
            "quick": cli.preset == "quick",
            "settings": settings_of(cli),
            "command": command,
            "complete": all((s, a, c) in done for s in cli.seeds for a in cli.attacks
                            for c in CLEAN_CELLS + POISONED_CELLS),
            "model": "sentence-transformers all-MiniLM-L6-v2 (BertModel, 22.7M) + new classification head",
            "data": "Rotten Tomatoes sentences (project split); reference set from validation, metrics on test",
            "alignment": {"preset": "encoder (min_reference_loss 0.4, alignment_start_epoch 1, "
                                    "max_raw_gradient_ratio 0.1)",
                          "overrides": alignment_overrides(cli), "reference_batch": "= train batch"},
            "cells": table,
            "step_time_ratio_musclelora_vs_lora": ratio,
            "step_time_ratio_floor": 2.0,
            "rows": rows,
            "total_seconds": earlier + time.perf_counter() - begin,
            "torch_threads": torch.get_num_threads(),
            "hardware": hardware_info(),
        }
        write_json(cli.output, payload)  # after every cell: an interrupted run keeps what it measured (--resume)
        return payload

    def add(seed, attack, cell, scores, info):
        rows.append({"seed": seed, "attack": attack, "cell": cell, **scores, **info})
        done.add((seed, attack, cell))
        save()
        print(f"[seed {seed}] {attack}/{cell}: CACC {scores['cacc']:.3f} ASR {scores['asr']:.3f} "
              f"({info['seconds_per_step']:.2f} s/step)", flush=True)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_text_classification("rotten_tomatoes")
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
                missing = [a for a in attacks if (seed, a, cell) not in done]
                if not missing:
                    continue
                model, info = train_cell(cell, tok_clean, reference, tokenizer, seed, cli, workdir)
                for name in missing:
                    scores = evaluate_backdoor(model, tokenizer, test, attacks[name], max_length=cli.max_length)
                    add(seed, name, cell, scores, info)
                del model

            for name, attack in attacks.items():
                missing = [c for c in POISONED_CELLS if (seed, name, c) not in done]
                if not missing:
                    continue
                poisoned = tokenize_dataset(attack.poison(train_clean), tokenizer, max_length=cli.max_length)
                for cell in missing:
                    model, info = train_cell(cell, poisoned, reference, tokenizer, seed, cli, workdir)
                    scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=cli.max_length)
                    add(seed, name, cell, scores, info)
                    del model

    payload = save()
    print(render_markdown(payload))
    print(f"wrote {cli.output} in {payload['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
