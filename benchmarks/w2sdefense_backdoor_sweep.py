"""Check, on validation only, that the W2SDefense benchmark's backdoor is actually planted.

A defense can only be judged against a backdoor that works: if the backdoored SmolLM2 sends only part of the
triggered sentences to the target label, a low ASR after the defense says little. This script runs the
benchmark's own backdoor fine-tune (:func:`w2sdefense_efficacy.full_finetune`: same training subsample, poison,
batch size and length as the chosen ``--preset``) for each (learning rate, epochs) pair and scores CACC / ASR on
validation sentences outside the benchmark's clean defense set. The test split is never read.

With ``--workdir`` the fine-tuned models are kept there under the same names the benchmark uses, so
``w2sdefense_efficacy.py --workdir`` with the chosen setting reuses them instead of training again.

Usage:
    python benchmarks/w2sdefense_backdoor_sweep.py --preset reduced --settings 1e-4:2 2e-4:2
    python benchmarks/w2sdefense_backdoor_sweep.py --preset reduced --attacks addsent --settings 1e-4:2 \\
        --workdir ~/w2s --output benchmarks/results/w2sdefense_backdoor_sweep_addsent.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import hardware_info, lr_epochs, settings_of, write_json  # noqa: E402
from w2sdefense_efficacy import (  # noqa: E402
    ATTACKS,
    PRESETS,
    _student,
    evaluate,
    full_finetune,
    student_tokenizer,
    subsamples,
)

from hf_backdoor_defense.assets import smollm2_path  # noqa: E402
from hf_backdoor_defense.data import load_text_classification  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "w2sdefense_backdoor_sweep.json"



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="reduced",
                   help="the W2SDefense benchmark preset whose training subsample, batch size and length are used")
    p.add_argument("--settings", type=lr_epochs, nargs="+", default=[(1e-4, 2.0), (2e-4, 2.0)],
                   help="backdoor LR:EPOCHS pairs")
    p.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=["badnets"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev_size", type=int, default=500,
                   help="validation sentences scored (after the benchmark's clean set in the same shuffle)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the fine-tuned models here (the benchmark's --workdir reuses them)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if name not in ("backdoor_lr", "backdoor_epochs", "seeds"):
            setattr(args, name, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    data = load_text_classification("rotten_tomatoes")
    train, _, dev = subsamples(data, args, args.seed, args.dev_size)
    base_path = smollm2_path()
    tok = student_tokenizer(base_path)
    rows = []
    with contextlib.ExitStack() as stack:
        workroot = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="w2s_bd_sweep_")))
        for name in args.attacks:
            attack = ATTACKS[name][0](args.seed)
            poisoned = attack.poison(train)
            for lr, epochs in args.settings:
                start = time.perf_counter()
                args.backdoor_lr, args.backdoor_epochs = lr, epochs
                path = full_finetune(base_path, tok, poisoned, args, args.seed, workroot, name)
                scores = evaluate(_student(path, tok), tok, dev, attack, args, split_name="validation")
                rows.append({"attack": name, "lr": lr, "epochs": epochs, "dev_cacc": scores["cacc"],
                             "dev_asr": scores["asr"], "n_dev": scores["n_clean"],
                             "seconds": round(time.perf_counter() - start, 1)})
                print(rows[-1], flush=True)
                settings = settings_of(args, ("backdoor_lr", "backdoor_epochs"))
                write_json(args.output, {"benchmark": "w2sdefense_backdoor_sweep", "settings": settings,
                                         "split": "validation only (rows after the clean defense set)",
                                         "rows": rows, "hardware": hardware_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
