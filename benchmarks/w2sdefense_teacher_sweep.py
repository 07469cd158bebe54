"""Choose the W2SDefense teacher's fine-tuning budget on validation only (never the test split).

The MiniLM teacher (:func:`hf_backdoor_defense.trainers.teacher.train_teacher`) is fine-tuned on the same
clean validation sentences the W2SDefense benchmark gives it, for each (learning rate, epochs) pair, and scored
on other validation sentences: accuracy, and the ASR of BadNets triggers (a teacher that always answers the
target class has ASR 100 % and teaches the student nothing). Writes
``benchmarks/results/w2sdefense_teacher_sweep.json``.

Usage:
    python benchmarks/w2sdefense_teacher_sweep.py                      # 200 clean, 500 dev sentences, 4 settings
    python benchmarks/w2sdefense_teacher_sweep.py --settings 1e-4:10 2e-4:10
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

from _common import hardware_info, lr_epochs, settings_of, write_json  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.attacks import BadNets  # noqa: E402
from hf_backdoor_defense.data import load_text_classification  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402
from hf_backdoor_defense.models.teacher import train_teacher  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "w2sdefense_teacher_sweep.json"
SMOLLM2_HIDDEN = 576  # the student's hidden size: the teacher's projection width


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clean_size", type=int, default=200, help="clean sentences the teacher trains on")
    p.add_argument("--dev_size", type=int, default=500, help="other validation sentences it is scored on")
    p.add_argument("--max_length", type=int, default=48)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", type=lr_epochs, nargs="+",
                   default=[(5e-5, 3.0), (1e-4, 10.0), (2e-4, 10.0), (5e-5, 20.0)], help="LR:EPOCHS pairs")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    val = load_text_classification("rotten_tomatoes")["validation"].shuffle(seed=args.seed)
    if args.clean_size + args.dev_size > len(val):
        p.error(f"--clean_size + --dev_size must be at most {len(val)} (the validation split)")
    # The W2SDefense benchmark draws its clean set the same way: validation shuffled with the seed, first rows.
    clean, dev = val.select(range(args.clean_size)), val.select(range(args.clean_size, args.clean_size + args.dev_size))
    rows = []
    for lr, epochs in args.settings:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(output_dir=tmp, num_train_epochs=epochs, learning_rate=lr,
                                      per_device_train_batch_size=args.batch_size, save_strategy="no",
                                      report_to="none", seed=args.seed, use_cpu=True, disable_tqdm=True,
                                      logging_strategy="no")
            teacher, tok = train_teacher(minilm_path(), SMOLLM2_HIDDEN, clean, output_dir=tmp, args=targs,
                                         max_length=args.max_length, save=False)
        scores = evaluate_backdoor(teacher, tok, dev, BadNets(poison_rate=0.1, target_label=1, seed=args.seed),
                                   max_length=args.max_length, disable_progress_bar=True)
        rows.append({"lr": lr, "epochs": epochs, "dev_cacc": scores["cacc"], "dev_asr": scores["asr"],
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
        write_json(args.output, {"benchmark": "w2sdefense_teacher_sweep", "settings": settings_of(args),
                                 "split": "validation only", "rows": rows, "hardware": hardware_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
