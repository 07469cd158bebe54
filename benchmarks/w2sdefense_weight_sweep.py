"""Sweep W2SDefense's loss weights on validation only, against plain LoRA on the same clean set.

The benchmark's reduced run showed W2SDefense at the authors' ``word`` weights (a, b, c) = (5, 0.001, 0.001)
ending where plain LoRA ends: weighted, the KL and feature terms give the adapter about 2 % of its gradient
(see ``w2sdefense_term_gradients.py``), and SmolLM2's final norm keeps ``||phi_s||^2`` near 2,300 while the
teacher's features sit near 150. This script asks whether other weights, the opt-in cosine feature distance,
or another defense learning rate do better.

Each setting trains one defense on the benchmark's clean defense set (same seed, teacher, backdoored model,
LoRA, budget as :mod:`w2sdefense_efficacy` with the chosen ``--preset``) and scores CACC / ASR on validation
sentences after that clean set. The test split is never read. ``lora`` is the plain-LoRA baseline.

A setting is ``lora`` or ``A:B:C`` (squared L2) or ``A:B:C:cosine``; the temperature stays at its default, 2.
``--defense_lr`` / ``--defense_epochs`` change the budget of every defense in the run alike.

Usage:
    python benchmarks/w2sdefense_weight_sweep.py --workdir ~/w2s --settings lora 5:0.001:0.001 5:1:0.001
    python benchmarks/w2sdefense_weight_sweep.py --workdir ~/w2s --settings 5:0.001:1:cosine \\
        --output benchmarks/results/w2sdefense_weight_sweep_cosine.json
    python benchmarks/w2sdefense_weight_sweep.py --workdir ~/w2s --defense_lr 1e-3 --settings lora 5:0.001:0.05 \\
        --output benchmarks/results/w2sdefense_weight_sweep_lr1e-3.json
    python benchmarks/w2sdefense_weight_sweep.py --render benchmarks/results/w2sdefense_weight_sweep.json
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

from _common import hardware_info, previous_results, read_results, settings_of, write_json  # noqa: E402
from w2sdefense_efficacy import (  # noqa: E402
    ATTACKS,
    PRESETS,
    defend_plain_lora,
    defend_w2s,
    evaluate,
    full_finetune,
    make_teacher,
    student_tokenizer,
    subsamples,
)

from hf_backdoor_defense.assets import smollm2_path  # noqa: E402
from hf_backdoor_defense.data import load_text_classification  # noqa: E402
from hf_backdoor_defense.trainers.w2sdefense_config import FEATURE_DISTANCES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "w2sdefense_weight_sweep.json"
NOT_SETTINGS = ("output", "resume", "overwrite", "render", "settings", "workdir")


def loss_setting(text: str) -> str:
    """argparse type of ``--settings``: ``lora``, ``A:B:C`` or ``A:B:C:DISTANCE``; returned normalised."""
    if text == "lora":
        return text
    parts = text.split(":")
    distance = parts.pop() if len(parts) == 4 else "squared_l2"
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        weights = []
    if len(weights) != 3 or min(weights) < 0 or distance not in FEATURE_DISTANCES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write 'lora' or A:B:C[:DISTANCE] with weights >= 0 and DISTANCE one of "
            f"{list(FEATURE_DISTANCES)}, e.g. 5:0.001:0.001 or 5:0.001:1:cosine"
        )
    return ":".join([*(f"{w:g}" for w in weights), distance])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="reduced",
                   help="the W2SDefense benchmark preset whose data sizes, backdoor and defense budget are used")
    p.add_argument("--settings", type=loss_setting, nargs="+", default=["lora", "5:0.001:0.001"],
                   help="defenses to score: 'lora' or loss weights A:B:C[:squared_l2|cosine]")
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--defense_lr", type=float, default=None,
                   help="learning rate of every defense (plain LoRA and W2SDefense alike); default: the preset's")
    p.add_argument("--defense_epochs", type=float, default=None, help="epochs of every defense; default: the preset's")
    p.add_argument("--attack", choices=list(ATTACKS), default="badnets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev_size", type=int, default=500,
                   help="validation sentences scored (after the benchmark's clean set in the same shuffle)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the backdoored full fine-tune is kept (the benchmark's --workdir: reused if there)")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--resume", action="store_true", help="keep the settings already in --output, run the rest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--render", type=Path, default=None, metavar="JSON", help="print a saved result as markdown")
    args = p.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if name != "seeds" and getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def render_markdown(report: dict) -> str:
    lines = [
        f"W2SDefense loss-weight sweep, {report['settings']['attack']}, seed {report['settings']['seed']}, "
        f"{report['settings']['preset']} preset, defenses at lr {report['settings']['defense_lr']:g} for "
        f"{report['settings']['defense_epochs']:g} epochs, {report['rows'][0]['n_dev'] if report['rows'] else 0} "
        "validation sentences (test split not read).",
        "",
        "| defense | a | b | c | distance | dev CACC | dev ASR | last loss_feature |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        w = r.get("weights") or {}
        feat = r.get("last_components", {}).get("loss_feature")
        lines.append(
            f"| {r['defense']} | {w.get('alpha_ce', '–')} | {w.get('beta_kd', '–')} | {w.get('gamma_feature', '–')} "
            f"| {w.get('feature_distance', '–')} | {100 * r['dev_cacc']:.1f} | {100 * r['dev_asr']:.1f} "
            f"| {'–' if feat is None else f'{feat:.4g}'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        print(render_markdown(read_results(args.render)))
        return 0
    previous = previous_results(args, NOT_SETTINGS, key="settings")
    rows = list(previous["rows"]) if previous else []
    done = {r["setting"] for r in rows}
    todo = [s for s in dict.fromkeys(args.settings) if s not in done]
    data = load_text_classification("rotten_tomatoes")
    train, clean, dev = subsamples(data, args, args.seed, args.dev_size)
    base_path = smollm2_path()
    tok = student_tokenizer(base_path)
    attack = ATTACKS[args.attack][0](args.seed)
    preset = ATTACKS[args.attack][1]

    def save(complete: bool) -> None:
        write_json(args.output, {
            "benchmark": "w2sdefense_weight_sweep", "settings": settings_of(args, NOT_SETTINGS),
            "split": "validation only (rows after the clean defense set)", "w2s_preset": preset,
            "complete": complete, "rows": rows, "hardware": hardware_info(),
        })

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="w2s_weight_sweep_")))
        workroot = args.workdir or scratch
        bd_path = full_finetune(base_path, tok, attack.poison(train), args, args.seed, workroot, args.attack)
        teacher = None
        for i, setting in enumerate(todo):
            start = time.perf_counter()
            if setting == "lora":
                model, step = defend_plain_lora(bd_path, tok, clean, args, args.seed, scratch / f"run{i}")
                weights, components = None, {}
            else:
                if teacher is None:
                    teacher, teacher_tok = make_teacher(base_path, clean, args, args.seed, scratch / "teacher")
                a, b, c, distance = setting.split(":")
                weights = {"alpha_ce": float(a), "beta_kd": float(b), "gamma_feature": float(c),
                           "feature_distance": distance}
                model, step, logged = defend_w2s(bd_path, tok, clean, teacher, teacher_tok, preset, args,
                                                 args.seed, scratch / f"run{i}", **weights)
                components = {k: logged.get(k) for k in ("loss_ce", "loss_kd", "loss_feature")}
            scores = evaluate(model, tok, dev, attack, args, split_name="validation")
            del model
            rows.append({"setting": setting, "defense": "plain LoRA" if weights is None else "W2SDefense",
                         "weights": weights, "dev_cacc": scores["cacc"], "dev_asr": scores["asr"],
                         "n_dev": scores["n_clean"], "n_dev_triggered": scores["n_triggered"],
                         "sec_per_step": step, "last_components": components,
                         "seconds": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
            save(complete=False)
        save(complete=True)
    print(render_markdown(read_results(args.output)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
