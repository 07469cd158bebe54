"""Frequency analysis on Rotten Tomatoes + MiniLM with dirty-label BadNets: full fine-tuning vs MuScleLoRA.

For each method the same poisoned training subsample is used, with the same probe set (clean and poisoned
*training* examples). Every `eval_every` steps the low/high-frequency relative errors of the clean and the
backdoor probe rows are recorded (hf_backdoor_defense.analysis.FrequencyAnalysisCallback). At the end CACC and
ASR are measured on a test subsample (hf_backdoor_defense.metrics.evaluate_backdoor).

Writes ``benchmarks/results/frequency<suffix>.json`` and ``docs/figures/frequency_{full_ft,musclelora,
comparison}<suffix>.png`` where the suffix is ``_quick`` / ``_reduced`` / empty for the three modes (the
``--quick`` smoke run puts its figures in ``benchmarks/results/`` instead, out of the docs).
``--replot`` redraws the figures of a mode from its JSON without training.

Usage:
    python benchmarks/frequency_analysis.py --quick      # smoke run: tiny sizes, proves the script works
    python benchmarks/frequency_analysis.py --reduced    # about 10 min on a loaded 2-core CPU
    python benchmarks/frequency_analysis.py              # full mode (see --help for sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import hardware_info, write_json  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hf_backdoor_defense.analysis import FrequencyAnalysisConfig, drop_steps, plot_frequency_comparison  # noqa: E402
from hf_backdoor_defense.analysis.experiment import analyze  # noqa: E402
from hf_backdoor_defense.analysis.history import finite_or_none  # noqa: E402
from hf_backdoor_defense.analysis.plot import plot_frequency_history  # noqa: E402
from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.attacks import BadNets  # noqa: E402
from hf_backdoor_defense.data import load_text_classification  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
METHODS = {"full_ft": ("full", "Full fine-tuning"), "musclelora": ("musclelora", "MuScleLoRA")}

MODES = {
    #            train  steps  batch  len  probe (clean, poisoned)  eval_every  test
    "quick": dict(
        train_size=200, steps=8, batch_size=16, max_length=32, probe=(24, 16), eval_every=4, test_size=48
    ),
    "reduced": dict(
        train_size=800,
        steps=30,
        batch_size=16,
        max_length=32,
        probe=(64, 64),
        eval_every=3,
        test_size=100,
        full_ft_lr=1e-4,
    ),
    "full": dict(
        train_size=3000,
        steps=400,
        batch_size=16,
        max_length=64,
        probe=(200, 200),
        eval_every=10,
        test_size=1000,
    ),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    mode.add_argument("--reduced", action="store_true", help="about 10 minutes on a loaded 2-core CPU")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full_ft_lr", type=float, default=None, help="default 5e-5 (reduced mode: 1e-4)")
    p.add_argument("--adapter_lr", type=float, default=5e-4)
    p.add_argument("--poison_rate", type=float, default=0.1)
    p.add_argument(
        "--replot", action="store_true", help="only redraw the figures from the mode's results JSON"
    )
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "reduced" if args.reduced else "full"
    args.suffix = "" if args.mode == "full" else f"_{args.mode}"
    return args


def write_atomic(path: Path, payload: dict) -> None:
    write_json(path, finite_or_none(payload))  # NaN / inf become null: strict JSON


def write_results(cli, sizes, config, runs, begin) -> dict:
    """Write everything measured so far (called after each method, so a stopped run keeps its cells)."""
    payload = {
        "benchmark": "frequency_analysis",
        "mode": cli.mode,
        "command": "python benchmarks/frequency_analysis.py"
        + ("" if cli.mode == "full" else f" --{cli.mode}"),
        "sizes": sizes,
        "learning_rates": {"full_ft": cli.full_ft_lr, "adapters": cli.adapter_lr},
        "config": config.to_dict(),
        "hardware": hardware_info(),
        "wall_seconds": time.perf_counter() - begin,
        "runs": runs,
    }
    write_atomic(RESULTS / f"frequency{cli.suffix}.json", payload)
    return payload


def plot_all(runs: dict, suffix: str) -> None:
    figures = RESULTS if suffix == "_quick" else FIGURES  # smoke-run figures stay out of the docs
    histories = {}
    for key, run in runs.items():
        title = METHODS[key][1]
        histories[title] = run["history"]
        plot_frequency_history(
            run["history"],
            figures / f"frequency_{key}{suffix}.png",
            title=f"{title}: MiniLM, Rotten Tomatoes, BadNets",
        )
    if len(histories) > 1:
        plot_frequency_comparison(
            histories,
            figures / f"frequency_comparison{suffix}.png",
            title="Low/high-frequency error of clean and backdoor training examples",
        )


def main(argv=None) -> int:
    cli = parse_args(argv)
    if cli.replot:
        plot_all(json.loads((RESULTS / f"frequency{cli.suffix}.json").read_text())["runs"], cli.suffix)
        return 0
    sizes = MODES[cli.mode]
    if cli.full_ft_lr is None:
        cli.full_ft_lr = sizes.get("full_ft_lr", 5e-5)
    begin = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = load_text_classification("rotten_tomatoes")
    splits = {"train": data["train"], "validation": data["validation"]}
    test = data["test"].shuffle(seed=1234).select(range(min(sizes["test_size"], len(data["test"]))))
    attack = BadNets(poison_rate=cli.poison_rate, target_label=1, label_mode="dirty", seed=cli.seed)
    config = FrequencyAnalysisConfig(eval_steps=sizes["eval_every"], max_length=sizes["max_length"])
    runs = {}
    for key in cli.methods:
        method, title = METHODS[key]
        callback, info, model = analyze(
            minilm_path(),
            splits,
            attack,
            method=method,
            steps=sizes["steps"],
            learning_rate=cli.full_ft_lr if method == "full" else cli.adapter_lr,
            batch_size=sizes["batch_size"],
            max_length=sizes["max_length"],
            train_size=sizes["train_size"],
            reference_size=96 if cli.mode != "quick" else 16,
            probe_clean=sizes["probe"][0],
            probe_poisoned=sizes["probe"][1],
            config=config,
            seed=cli.seed,
        )
        scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=sizes["max_length"])
        drops = drop_steps(callback.history)
        runs[key] = {**info, **scores, "drop_steps": drops, "history": callback.history}
        print(
            f"[{key}] CACC {scores['cacc']:.3f} ASR {scores['asr']:.3f} halved at steps {drops} "
            f"({info['wall_seconds']:.0f} s)",
            flush=True,
        )
        del model
        write_results(cli, sizes, config, runs, begin)
        plot_all(runs, cli.suffix)
    payload = write_results(cli, sizes, config, runs, begin)
    print(f"wrote {RESULTS / f'frequency{cli.suffix}.json'} in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
