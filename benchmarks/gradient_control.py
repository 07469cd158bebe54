"""Benchmark: does Gradient Control keep the backdoor alive through the user's clean re-tuning?

MiniLM-L6 (offline asset) + LoRA (r=8 on query/value, head trained), BadNets dirty-label (trigger words
cf/mn/bb/tq, poison rate 0.1, target 1). For each domain shift (SpamAssassin collection 1 -> 2, Rotten
Tomatoes disjoint halves) and seed: a vanilla poisoned adapter (plain Trainer) and a Gradient Control
adapter (CLNorm + ILProj) are trained by the attacker, then re-tuned by the user on clean shifted data;
CACC and LFR after each stage. The Gradient Control adapters are also given to the adapter-mode
purifiers (Fine-mixing, Fine-purifying) to see how each defense fares against it.

The Gradient Control adapters also go to a re-tune with MuScleLoRA's gradient alignment
(``musclelora-retune``: 96 of the user's examples as the reference set, the same epochs and learning rate
as the plain re-tune).

Writes ``benchmarks/results/gradient_control.json`` for the full preset, ``gradient_control.<preset>.json``
for the others, after every run. An existing output is never replaced without ``--overwrite``; ``--resume``
keeps its runs (the settings must match; shifts and seeds are the grid, so more of them may be added) and runs
the missing ones. ``--workdir`` also keeps each finished run's adapters and scores, so a run interrupted half
way loses only its current (shift, seed, attacker).

Usage:
    python benchmarks/gradient_control.py --preset quick    # smoke test, a few minutes
    python benchmarks/gradient_control.py --preset reduced  # the demo recipe's sizes, 3 seeds (about 1.5 h on 2 cores)
    python benchmarks/gradient_control.py                   # full: 2,000 examples per stage, length 128, 3 seeds
    python benchmarks/gradient_control.py --preset reduced-e6 --shifts rotten_tomatoes --resume  # add a shift
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

from _common import hardware_info, previous_results, read_results, summarise, write_json  # noqa: E402

PRESETS = {
    "full": dict(seeds=[0, 1, 2], max_attacker_samples=2000, max_user_samples=2000, max_test_samples=1000,
                 attacker_epochs=5, user_epochs=3, max_length=128, batch_size=32, defense_clean=256,
                 learning_rate=5e-4),
    # The sizes, epochs and learning rate of recipes/configs/gradient_control_demo.yaml, on both shifts.
    "reduced": dict(seeds=[0, 1, 2], max_attacker_samples=1000, max_user_samples=1000, max_test_samples=400,
                    attacker_epochs=3, user_epochs=2, max_length=48, batch_size=16, defense_clean=256,
                    learning_rate=1e-3),
    # `reduced` with 6 attacker epochs: the budget at which vanilla LoRA learns the SpamAssassin backdoor
    # (77.9 % LFR after the attack, against 7 % at 3 epochs), chosen on the validation split with seed 0
    # (benchmarks/results/gradient_control.reduced.validation.json), never on test.
    "reduced-e6": dict(seeds=[0, 1, 2], max_attacker_samples=1000, max_user_samples=1000, max_test_samples=400,
                       attacker_epochs=6, user_epochs=2, max_length=48, batch_size=16, defense_clean=256,
                       learning_rate=1e-3),
    "quick": dict(seeds=[0], max_attacker_samples=48, max_user_samples=48, max_test_samples=48,
                  attacker_epochs=1, user_epochs=1, max_length=32, batch_size=16, defense_clean=16,
                  learning_rate=5e-4),
}
#: Entries of the stored settings that a resumed run may change: the seeds are the grid (the shifts are not stored
#: there; each run records its own).
NOT_SETTINGS = ("output", "resume", "overwrite", "seeds")
#: Reference examples of the MuScleLoRA re-tune defense (the paper's encoder reference size).
RETUNE_REFERENCE = 96


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full",
                        help="Sizes: full (the issue's cells), reduced (the demo recipe's sizes), quick (smoke).")
    parser.add_argument("--quick", action="store_true", help="Same as --preset quick.")
    parser.add_argument("--shifts", nargs="+", default=["spamassassin", "rotten_tomatoes"],
                        choices=["spamassassin", "rotten_tomatoes"])
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Override the seeds.")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="LoRA learning rate of both stages (default: the preset's).")
    parser.add_argument("--attacker-epochs", type=float, default=None,
                        help="Epochs of the attacker's poison training (default: the preset's).")
    parser.add_argument("--eval-split", choices=["test", "validation"], default="test",
                        help="Score every stage on the user's test split (default) or validation split; use "
                             "validation to choose settings such as the attacker budget.")
    parser.add_argument("--clnorm-alpha", type=float, default=1e-4)
    parser.add_argument("--no-defenses", action="store_true", help="Skip the defenses table.")
    parser.add_argument("--purify-finetune-epochs", type=float, default=3.0,
                        help="Epochs of the clean fine-tune in the 'fine-mixing+ft' / 'fine-purifying+ft' defenses "
                             "(on the same clean examples, at the preset's learning rate); 0 leaves them out.")
    parser.add_argument("--output", default=None, help="Results JSON (default benchmarks/results/...).")
    parser.add_argument("--workdir", default=None, help="Where the adapters go (default: a temp folder).")
    parser.add_argument("--resume", action="store_true",
                        help="Keep the runs of an existing --output made with the same settings; run the rest.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --output.")
    parser.add_argument("--render", metavar="JSON", default=None,
                        help="Only print the Markdown tables of an existing results JSON (nothing is trained).")
    return parser.parse_args(argv)


SHIFT_NAMES = {"spamassassin": "SpamAssassin collection 1 → 2", "rotten_tomatoes": "Rotten Tomatoes halves"}


def _pct(stat: dict) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def render_markdown(payload: dict) -> str:
    """The results as Markdown: per shift, CACC / LFR after the attack and after the user's re-tuning for both
    attackers, then each defense against the Gradient Control adapter (mean ± population std over seeds)."""
    seeds = sorted({r["seed"] for r in payload["runs"]}) or payload["settings"]["seeds"]
    missing = "" if payload.get("complete", True) else (
        f" **Incomplete: {len(payload['runs'])} runs finished; a shift shows once both attackers ran on it.**")
    lines = [f"CACC / LFR in %, mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
             f"preset `{payload['mode']}`, scored on the user's "
             f"{payload['settings'].get('eval_split', 'test')} split, total wall time "
             f"{payload['total_wall_s'] / 60:.0f} min.{missing}", "",
             "| Shift | Attacker | after the attack | after the user's re-tune | LFR gain (points) |",
             "|---|---|:---:|:---:|---:|"]
    for shift, cell in payload["summary"].items():
        for method in ("vanilla", "gradient_control"):
            m = cell[method]
            gain = f"{cell['lfr_gain_points']:+.1f}" if method == "gradient_control" else ""
            lines.append(f"| {SHIFT_NAMES.get(shift, shift)} | {method.replace('_', ' ')} | "
                         f"{_pct(m['attack_cacc'])} / {_pct(m['attack_lfr'])} | "
                         f"{_pct(m['retune_cacc'])} / {_pct(m['retune_lfr'])} | {gain} |")
    names = sorted({name for cell in payload["summary"].values() for name in cell["defenses_vs_gradient_control"]})
    if names:
        lines += ["", "Defenses run on the published Gradient Control adapter:", "",
                  "| Shift | " + " | ".join(names) + " |", "|---|" + ":---:|" * len(names)]
        for shift, cell in payload["summary"].items():
            scores = cell["defenses_vs_gradient_control"]
            lines.append(f"| {SHIFT_NAMES.get(shift, shift)} | " + " | ".join(
                f"{_pct(scores[n]['cacc'])} / {_pct(scores[n]['lfr'])}" if n in scores else "–" for n in names) + " |")
    lines += ["", "```bash", payload.get("command", "python benchmarks/gradient_control.py"), "```"]
    return "\n".join(lines)


def _mean_std(values):
    return summarise(values, ddof=0, keep_values=True)  # population std, as this benchmark always reported


def finished_run(config, defenses: dict) -> dict | None:
    """The scenario results already in ``config.output_dir`` (a ``--workdir`` of an interrupted benchmark) when
    they were made with the same config and hold every requested defense; else ``None`` (the run is redone)."""
    from dataclasses import asdict

    from hf_backdoor_defense.scenario import RESULTS_FILE

    try:
        with open(os.path.join(config.output_dir, RESULTS_FILE), encoding="utf-8") as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        return None
    same = previous.get("config") == json.loads(json.dumps(asdict(config)))
    return previous if same and all(f"defense/{name}" in previous["stages"] for name in defenses) else None


def summarise_runs(runs: list[dict], shifts) -> tuple[dict, dict]:
    """Per shift with both attackers run: mean ± std of CACC / LFR after each stage, the LFR gain and CACC gap of
    Gradient Control over vanilla after the re-tune, and each defense against Gradient Control; then the targets."""
    summary: dict[str, dict] = {}
    for shift in shifts:
        if {r["method"] for r in runs if r["shift"] == shift} != {"vanilla", "gradient_control"}:
            continue
        cell = {}
        for method in ("vanilla", "gradient_control"):
            rs = [r for r in runs if r["shift"] == shift and r["method"] == method]
            cell[method] = {
                "attack_lfr": _mean_std(r["stages"]["attack"]["lfr"] for r in rs),
                "attack_cacc": _mean_std(r["stages"]["attack"]["cacc"] for r in rs),
                "retune_lfr": _mean_std(r["stages"]["retune"]["lfr"] for r in rs),
                "retune_cacc": _mean_std(r["stages"]["retune"]["cacc"] for r in rs),
            }
        gc, va = cell["gradient_control"], cell["vanilla"]
        cell["lfr_gain_points"] = 100 * (gc["retune_lfr"]["mean"] - va["retune_lfr"]["mean"])
        cell["cacc_gap_points"] = 100 * (gc["retune_cacc"]["mean"] - va["retune_cacc"]["mean"])
        defenses: dict[str, list] = {}
        for r in runs:
            if r["shift"] != shift or r["method"] != "gradient_control":
                continue
            for stage, scores in r["stages"].items():
                if stage.startswith("defense/"):
                    defenses.setdefault(stage.split("/", 1)[1], []).append(scores)
        cell["defenses_vs_gradient_control"] = {
            name: {"lfr": _mean_std(s["lfr"] for s in scores), "cacc": _mean_std(s["cacc"] for s in scores)}
            for name, scores in defenses.items()
        }
        summary[shift] = cell
    targets = {
        "lfr_gain_ge_10_points_on_a_shift": any(c["lfr_gain_points"] >= 10 for c in summary.values()),
        "cacc_within_2_points": all(abs(c["cacc_gap_points"]) <= 2 for c in summary.values()),
    }
    return summary, targets


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render_markdown(read_results(args.render)))
        return 0
    from peft import LoraConfig

    from hf_backdoor_defense import assets
    from hf_backdoor_defense.attacks import BadNets
    from hf_backdoor_defense.purification import FineMixing, FinePurifying
    from hf_backdoor_defense.scenario import (
        RetuningScenarioConfig,
        alignment_retune_defense,
        purifier_defense,
        run_retuning_scenario,
    )
    from hf_backdoor_defense.trainers.purification import PurificationTrainingArguments

    preset = "quick" if args.quick else args.preset
    settings = dict(PRESETS[preset])
    if args.seeds:
        settings["seeds"] = args.seeds
    if args.learning_rate is not None:
        settings["learning_rate"] = args.learning_rate
    if args.attacker_epochs is not None:
        settings["attacker_epochs"] = args.attacker_epochs
    settings["eval_split"] = args.eval_split
    model_path = str(assets.minilm_path())
    workdir = args.workdir or tempfile.mkdtemp(prefix="hbd-gc-bench-")
    output = args.output or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        ("gradient_control" + ("" if preset == "full" else f".{preset}")
         + ("" if args.eval_split == "test" else f".{args.eval_split}") + ".json"),
    )
    retune_reference = min(RETUNE_REFERENCE, settings["max_user_samples"] // 2)
    stored_settings = {**settings, "clnorm_alpha": args.clnorm_alpha, "defense_ratio": 0.5,
                       "purify_finetune_epochs": args.purify_finetune_epochs, "retune_reference": retune_reference}
    # Refuse an existing output (or resume it) before anything is trained.
    previous = previous_results(argparse.Namespace(output=Path(output), resume=args.resume, overwrite=args.overwrite,
                                                   **stored_settings), NOT_SETTINGS, key="settings")
    runs: list[dict] = list(previous["runs"]) if previous else []
    shifts = list(dict.fromkeys([*args.shifts, *(r["shift"] for r in runs)]))
    wanted = {(shift, seed, method) for shift in args.shifts for seed in settings["seeds"]
              for method in ("vanilla", "gradient_control")}
    start_all = time.perf_counter()
    command = "python benchmarks/gradient_control.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save() -> dict:
        summary, targets = summarise_runs(runs, shifts)
        payload = {
            "benchmark": "gradient_control",
            "mode": preset,
            "command": command,
            "complete": wanted <= {(r["shift"], r["seed"], r["method"]) for r in runs},
            "model": "all-MiniLM-L6-v2 (offline asset)",
            "adapter": "LoRA r=8 alpha=16 on query/value + classifier head",
            "attack": "BadNets dirty-label, triggers cf/mn/bb/tq, 1 per text, poison rate 0.1, target 1",
            "settings": {**stored_settings,
                         "seeds": sorted({*settings["seeds"], *(r["seed"] for r in runs)})},
            "summary": summary,
            "targets": targets,
            "runs": runs,
            "total_wall_s": round(sum(r["wall_s"] for r in runs), 1),
            "this_invocation_wall_s": round(time.perf_counter() - start_all, 1),
            "hardware": hardware_info(),
        }
        write_json(output, payload)  # after every run, so an interrupted benchmark keeps what it measured
        return payload

    for shift in args.shifts:
        for seed in settings["seeds"]:
            for method in ("vanilla", "gradient_control"):
                if any((r["shift"], r["seed"], r["method"]) == (shift, seed, method) for r in runs):
                    continue  # kept from the --resume'd output
                defenses = {}
                if method == "gradient_control" and not args.no_defenses:
                    n = settings["defense_clean"]
                    # The purifiers reset only, and (as their papers use them) reset, then fine-tune on the same
                    # clean examples.
                    finetune = PurificationTrainingArguments(
                        num_train_epochs=args.purify_finetune_epochs, learning_rate=settings["learning_rate"],
                        per_device_train_batch_size=settings["batch_size"], max_length=settings["max_length"],
                        seed=seed, disable_tqdm=True)
                    purifiers = {"fine-mixing": FineMixing(ratio=0.5, ratio_of="all", seed=seed),
                                 "fine-purifying": FinePurifying(ratio=0.5, ratio_of="all", embeddings="include",
                                                                 estimator="batch", show_progress=False)}
                    for name, purifier in purifiers.items():
                        defenses[name] = purifier_defense(purifier, num_clean=n)
                        if args.purify_finetune_epochs > 0:
                            defenses[f"{name}+ft"] = purifier_defense(purifier, num_clean=n, finetune_args=finetune)
                    defenses["musclelora-retune"] = alignment_retune_defense(num_reference=retune_reference)
                config = RetuningScenarioConfig(
                    output_dir=os.path.join(workdir, f"{shift}-{method}-s{seed}"), shift=shift,
                    attacker_method=method, seed=seed, max_length=settings["max_length"],
                    max_attacker_samples=settings["max_attacker_samples"],
                    max_user_samples=settings["max_user_samples"], max_test_samples=settings["max_test_samples"],
                    eval_split=settings["eval_split"],
                    attacker_epochs=settings["attacker_epochs"], attacker_learning_rate=settings["learning_rate"],
                    user_epochs=settings["user_epochs"], user_learning_rate=settings["learning_rate"],
                    batch_size=settings["batch_size"], overwrite=True, disable_progress_bar=True,
                    gradient_control={"clnorm_alpha": args.clnorm_alpha},
                )
                t0 = time.perf_counter()
                result = finished_run(config, defenses)
                cached = result is not None
                if not cached:
                    result = run_retuning_scenario(
                        model_path, config, attack=BadNets(poison_rate=0.1, target_label=1, seed=seed),
                        peft_config=LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                               target_modules=["query", "value"]),
                        defenses=defenses,
                    )
                elapsed = sum(result["timings_s"].values()) if cached else time.perf_counter() - t0
                runs.append({"shift": shift, "seed": seed, "method": method, "stages": result["stages"],
                             "timings_s": result["timings_s"], "wall_s": round(elapsed, 1), "cached": cached})
                save()
                retune = result["stages"]["retune"]
                print(f"[{shift} seed={seed} {method}] attack LFR {result['stages']['attack']['lfr']:.3f} "
                      f"-> retune LFR {retune['lfr']:.3f}, CACC {retune['cacc']:.3f} ({elapsed:.0f}s"
                      f"{', from the workdir' if cached else ''})", file=sys.stderr)

    payload = save()
    print(json.dumps({"targets": payload["targets"], "total_wall_s": payload["total_wall_s"]}, indent=2))
    print(render_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
