"""Choose MuScleLoRA's training budget on the validation split only (the test split is never read here).

Trains one cell per (attack, setting) on a poisoned subsample of Rotten Tomatoes and scores CACC / ASR on
validation examples that are *not* in the reference set (the reference set is also drawn from validation).
A setting is ``method:learning_rate:epochs``; methods are those of :mod:`hf_backdoor_defense.experiments`
(``full_ft``, ``lora``, ``musclelora``), and ``clean-`` in front trains on the clean subsample instead (the
ASR floor and the CACC reference). Besides the scores, each row keeps the share of optimizer steps the
alignment spent in each mode (projection / mix / raw), which is what explains most failures.

Usage:
    python benchmarks/musclelora_validation_sweep.py --settings musclelora:5e-4:3 musclelora:1e-3:3 \\
        clean-lora:5e-4:3 --attacks addsent
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

from _common import hardware_info, write_json  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.attacks import AddSent, BadNets  # noqa: E402
from hf_backdoor_defense.data import load_text_classification, tokenize_dataset  # noqa: E402
from hf_backdoor_defense.experiments import CellSettings, train_cell  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402
from hf_backdoor_defense.trainers.gradient_alignment import MODES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "musclelora_validation_sweep.json"
ATTACKS = {"badnets": BadNets, "addsent": AddSent}


def parse_setting(text: str) -> dict:
    try:
        method, lr, epochs = text.split(":")
        clean = method.startswith("clean-")
        return {"name": text, "method": method.removeprefix("clean-"), "clean": clean,
                "lr": float(lr), "epochs": float(epochs)}
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--settings entry {text!r} must read method:learning_rate:epochs, e.g. musclelora:5e-4:3"
        ) from err


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", type=parse_setting, nargs="+", required=True)
    p.add_argument("--attacks", nargs="+", default=["badnets", "addsent"], choices=sorted(ATTACKS))
    p.add_argument("--train_size", type=int, default=2000)
    p.add_argument("--eval_size", type=int, default=800, help="validation examples scored (after the reference)")
    p.add_argument("--reference_size", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--poison_rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", nargs="*", default=[], help="extra trainer fields for musclelora cells, key=value")
    p.add_argument("--output", type=Path, default=RESULTS, help="results JSON; rows are appended")
    return p.parse_args(argv)


def mode_shares(log_history: list[dict]) -> dict:
    rows = [r for r in log_history if "alignment/projection_share" in r]
    if not rows:
        return {}
    return {m: sum(r[f"alignment/{m}_share"] for r in rows) / len(rows) for m in MODES if f"alignment/{m}_share" in rows[0]}


def coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def main(argv=None) -> int:
    cli = parse_args(argv)
    extra = {k: coerce(v) for k, v in (item.split("=", 1) for item in cli.extra)}
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_text_classification("rotten_tomatoes")
    validation = data["validation"].shuffle(seed=cli.seed)
    reference = tokenize_dataset(validation.select(range(cli.reference_size)), tokenizer,
                                 max_length=cli.max_length)
    stop = min(len(validation), cli.reference_size + cli.eval_size)
    held_out = validation.select(range(cli.reference_size, stop))
    train = data["train"].shuffle(seed=cli.seed).select(range(cli.train_size))
    previous = []
    if cli.output.exists():
        import json

        previous = json.loads(cli.output.read_text())["rows"]
    rows = list(previous)
    with tempfile.TemporaryDirectory() as workdir:
        for attack_name in cli.attacks:
            attack = ATTACKS[attack_name](poison_rate=cli.poison_rate, target_label=1, label_mode="dirty",
                                          seed=cli.seed)
            poisoned = tokenize_dataset(attack.poison(train), tokenizer, max_length=cli.max_length)
            clean = tokenize_dataset(train, tokenizer, max_length=cli.max_length)
            for s in cli.settings:
                settings = CellSettings(epochs=s["epochs"], batch_size=cli.batch_size, max_length=cli.max_length,
                                        full_ft_lr=s["lr"], adapter_lr=s["lr"], seed=cli.seed,
                                        extra_args=extra if s["method"] == "musclelora" else {})
                start = time.perf_counter()
                model, info = train_cell(s["method"], clean if s["clean"] else poisoned, tokenizer, minilm_path(),
                                         settings, reference=reference, workdir=workdir, disable_tqdm=True)
                scores = evaluate_backdoor(model, tokenizer, held_out, attack, max_length=cli.max_length,
                                           disable_progress_bar=True)
                row = {"attack": attack_name, **s, "cacc": scores["cacc"], "asr": scores["asr"],
                       "modes": mode_shares(info["log_history"]), "extra": extra if s["method"] == "musclelora" else {},
                       "seconds": time.perf_counter() - start, "train_size": cli.train_size,
                       "max_length": cli.max_length, "batch_size": cli.batch_size, "seed": cli.seed,
                       "reference_size": cli.reference_size}
                rows.append(row)
                print(f"{attack_name:<8} {s['name']:<26} CACC {scores['cacc']:.3f} ASR {scores['asr']:.3f} "
                      f"modes {({k: round(v, 2) for k, v in row['modes'].items()})} {row['seconds']:.0f}s",
                      flush=True)
                write_json(cli.output, {"benchmark": "musclelora_validation_sweep",
                                        "split_scored": "validation minus the reference examples",
                                        "hardware": hardware_info(), "rows": rows})
                del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
