"""W2SDefense efficacy: unlearn a BadNets / AddSent backdoor in SmolLM2-135M with a MiniLM teacher.

Pipeline (per seed; Rotten Tomatoes, dirty-label attacks, target label 1):
    clean_full_ft      SmolLM2 + classification head fully fine-tuned on the clean training subsample: the
                       ASR floor (a model that never saw a trigger), evaluated against each attack
    backdoored         full fine-tuning on the poisoned training subsample (per attack): CACC/ASR "before"
    teacher            MiniLM (W2STeacher, projection 384 -> 576 -> 2) fully fine-tuned on the clean set
    plain_lora         the backdoored model + LoRA (q_proj, v_proj; head trainable), CE on the clean set
    w2sdefense         same LoRA, same clean set and budget, W2SDefense loss (preset: word for BadNets,
                       sentence for AddSent)

The clean defense set is drawn from the validation split (trusted data, never from the poisoned training
set); the test split is only used for the final numbers. Time per optimizer step of W2SDefense is reported
relative to plain LoRA (same batches; the difference is the teacher forward and the extra loss terms).

The results JSON is rewritten after every (seed, attack); an interrupted run continues with the same command
plus ``--resume`` (seeds and attacks may be added that way too). An existing output is never replaced without
``--overwrite``. The full fine-tunes (clean floor, backdoored models) are the slow part; with ``--workdir DIR``
they are kept and a later run with the same settings reuses them, so ``--resume --workdir DIR`` loses at most
the defenses of the (seed, attack) that was interrupted.

Usage:
    python benchmarks/w2sdefense_efficacy.py --quick              # smoke run: tiny subsamples, proves it works
    python benchmarks/w2sdefense_efficacy.py --preset reduced     # CPU-sized cells, 3 seeds
    python benchmarks/w2sdefense_efficacy.py --preset reduced --resume --workdir ~/w2s  # continue, reuse models
    python benchmarks/w2sdefense_efficacy.py                      # the issue's cells (see --help for sizes)
    python benchmarks/w2sdefense_efficacy.py --render benchmarks/results/w2sdefense_efficacy_reduced.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import apply_preset, hardware_info, previous_results, read_results, settings_of, write_json  # noqa: E402
from _common import summarise as mean_std  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_backdoor_defense.assets import minilm_path, smollm2_path  # noqa: E402
from hf_backdoor_defense.attacks import AddSent, BadNets  # noqa: E402
from hf_backdoor_defense.data import load_text_classification, tokenize_dataset  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402
from hf_backdoor_defense.models.teacher import train_teacher  # noqa: E402
from hf_backdoor_defense.trainers import W2SDefenseTrainer, W2SDefenseTrainingArguments  # noqa: E402

LOGGING_STEPS = 10  # 1 in --quick mode, so the W2S loss components are logged at least once
RESULTS = Path(__file__).resolve().parent / "results" / "w2sdefense_efficacy.json"
ATTACKS = {
    "badnets": (lambda seed: BadNets(poison_rate=0.1, target_label=1, label_mode="dirty", seed=seed), "word"),
    "addsent": (
        lambda seed: AddSent(poison_rate=0.1, target_label=1, label_mode="dirty", seed=seed),
        "sentence",
    ),
}


PRESETS = {
    # The cells. At 11 s per full-fine-tuning step of SmolLM2 (batch 16, length 48, one thread, measured
    # 2026-11-22), this is several hours per seed on this 2-core CPU.
    "full": dict(train_size=2000, clean_size=500, test_size=500, max_length=64, backdoor_epochs=2.0,
                 backdoor_lr=2e-5, defense_epochs=5.0, defense_lr=2e-4, teacher_epochs=10.0, teacher_lr=1e-4,
                 batch_size=16, seeds=[0, 1, 2]),
    # A CPU-sized version: fewer sentences, the same number of defense epochs (the authors' 5). Both budgets
    # were chosen on validation only (seed 0, 500 validation sentences outside the clean set):
    # - backdoor, w2sdefense_backdoor_sweep.py: BadNets ASR 76.6 % at lr 1e-4 x 2 epochs, 72.2 % at 2e-4 x 2,
    #   89.3 % at 1e-4 x 3 (CACC 80.8 / 79.8 / 79.8); 5e-5 x 2 had left it at 62.7 % on test in the first run.
    # - teacher, w2sdefense_teacher_sweep.py: on 200 clean sentences, 3 epochs at 5e-5 left MiniLM at 59.0 %
    #   accuracy (always "positive"), 10 epochs at 1e-4 reached 72.4 %.
    "reduced": dict(train_size=800, clean_size=200, test_size=400, max_length=48, backdoor_epochs=3.0,
                    backdoor_lr=1e-4, defense_epochs=5.0, defense_lr=2e-4, teacher_epochs=10.0, teacher_lr=1e-4,
                    batch_size=16, seeds=[0, 1, 2]),
    # Two optimizer steps per model, one attack, one seed: checks the plumbing, not the defense.
    "quick": dict(train_size=16, clean_size=16, test_size=16, max_length=16, backdoor_epochs=1.0,
                  backdoor_lr=2e-5, defense_epochs=1.0, defense_lr=2e-4, teacher_epochs=1.0, teacher_lr=5e-5,
                  batch_size=8, seeds=[0]),
}
#: Arguments that do not change a result (so a resumed run may differ in them); seeds and attacks are the grid.
NOT_SETTINGS = ("output", "resume", "overwrite", "render", "quick", "seeds", "attacks", "workdir")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="full",
                   help="sizes: full (the issue's cells), reduced (CPU-sized), quick (smoke run)")
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--train_size", type=int, default=None, help="poisoned training examples (from train)")
    p.add_argument("--clean_size", type=int, default=None, help="clean defense examples (from validation)")
    p.add_argument("--test_size", type=int, default=None, help="test examples (from test)")
    p.add_argument("--max_length", type=int, default=None)
    p.add_argument("--backdoor_epochs", type=float, default=None)
    p.add_argument("--backdoor_lr", type=float, default=None, help="full fine-tuning lr of the backdoored model")
    p.add_argument("--defense_epochs", type=float, default=None, help="authors: 5 epochs")
    p.add_argument("--defense_lr", type=float, default=None, help="authors: LoRA lr 2e-4")
    p.add_argument("--teacher_epochs", type=float, default=None, help="epochs of the MiniLM teacher's fine-tune")
    p.add_argument("--teacher_lr", type=float, default=None, help="learning rate of the MiniLM teacher's fine-tune")
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--attacks", nargs="+", default=None, choices=list(ATTACKS))
    p.add_argument("--output", type=Path, default=None,
                   help=f"default: {RESULTS} (other presets: *_<preset>.json)")
    p.add_argument("--resume", action="store_true",
                   help="keep the (seed, attack) results of an existing --output with the same settings, run the rest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the full fine-tunes (clean floor, backdoored models) here and reuse those with the "
                        "same settings on a later run (default: a temporary folder, removed at the end)")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only print the Markdown table of an existing results JSON (nothing is trained)")
    args = p.parse_args(argv)
    apply_preset(args, PRESETS, RESULTS)
    if args.attacks is None:
        args.attacks = list(ATTACKS)[:1] if args.preset == "quick" else list(ATTACKS)
    if args.preset == "quick":
        global LOGGING_STEPS
        LOGGING_STEPS = 1
    return args


def _targs(out, epochs, lr, bs, seed, cls=TrainingArguments, **kw):
    return cls(
        output_dir=str(out),
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=bs,
        per_device_eval_batch_size=64,
        save_strategy="no",
        report_to="none",
        logging_steps=LOGGING_STEPS,
        seed=seed,
        use_cpu=True,
        **kw,
    )


def student_tokenizer(base_path):
    """The SmolLM2 tokenizer with a padding token (its end-of-sequence token when it has none)."""
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def subsamples(data, args, seed, dev_size=0):
    """The seed's (train, clean, dev) draws: ``train_size`` training sentences; the clean defense set is the first
    ``clean_size`` validation sentences of the seed's shuffle, and the validation-only sweeps' ``dev_size`` dev
    sentences come right after them, so a dev sentence is never one the defense trained on."""
    val = data["validation"].shuffle(seed=seed)
    if dev_size and args.clean_size + dev_size > len(val):
        raise SystemExit(f"--dev_size: at most {len(val) - args.clean_size} validation sentences are left after the "
                         f"preset's {args.clean_size} clean ones; pass a smaller --dev_size.")
    train = data["train"].shuffle(seed=seed).select(range(min(args.train_size, len(data["train"]))))
    clean = val.select(range(min(args.clean_size, len(val))))
    return train, clean, val.select(range(args.clean_size, args.clean_size + dev_size))


def _student(path, tok, dtype=torch.float32):
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    return model


def _stage_settings(args, seed, data_name):
    """What a full fine-tune's weights depend on: a cached model is reused only when all of these match."""
    return {"data": data_name, "seed": seed, "train_size": args.train_size, "max_length": args.max_length,
            "epochs": args.backdoor_epochs, "lr": args.backdoor_lr, "batch_size": args.batch_size}


def full_finetune(base_path, tok, train, args, seed, workroot, data_name):
    """Full fine-tuning of SmolLM2 + head on ``train`` (named ``data_name``: "clean", "badnets", ...); returns the
    saved folder.

    The folder is ``workroot/<data_name>-s<seed>-<hash of the settings>``. A folder that already holds a finished
    model with the same settings (its ``stage.json`` is written last) is reused instead of retrained, so a
    ``--workdir`` carries these 20-40 minute fine-tunes across interrupted runs and over to
    ``w2sdefense_backdoor_sweep.py``.
    """
    settings = _stage_settings(args, seed, data_name)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    workdir = Path(workroot) / f"{data_name}-s{seed}-{digest}"
    marker = workdir / "stage.json"
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        print(f"reusing the {data_name} full fine-tune of seed {seed} in {workdir}", file=sys.stderr, flush=True)
        return workdir
    torch.manual_seed(seed)
    model = _student(base_path, tok)
    enc = tokenize_dataset(train, tok, max_length=args.max_length)
    enc = enc.remove_columns(
        [c for c in enc.column_names if c not in ("input_ids", "attention_mask", "labels")]
    )
    trainer = Trainer(
        model=model,
        args=_targs(workdir, args.backdoor_epochs, args.backdoor_lr, args.batch_size, seed),
        train_dataset=enc,
        data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
    )
    started = time.time()
    trainer.train()
    trainer.save_model(str(workdir))
    write_json(marker, {"settings": settings, "seconds": time.time() - started})
    return workdir


def _lora(model, r):
    cfg = LoraConfig(
        task_type="SEQ_CLS", r=r, lora_alpha=2 * r, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
    )
    return get_peft_model(model, cfg)


def _time_per_step(trainer, out):
    return out.metrics["train_runtime"] / max(trainer.state.global_step, 1)


def defend_plain_lora(path, tok, clean, args, seed, workdir):
    torch.manual_seed(seed)
    model = _lora(_student(path, tok), args.lora_r)
    enc = tokenize_dataset(clean, tok, max_length=args.max_length)
    enc = enc.remove_columns(
        [c for c in enc.column_names if c not in ("input_ids", "attention_mask", "labels")]
    )
    trainer = Trainer(
        model=model,
        args=_targs(workdir, args.defense_epochs, args.defense_lr, args.batch_size, seed),
        train_dataset=enc,
        data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
    )
    out = trainer.train()
    return model, _time_per_step(trainer, out)


def defend_w2s(path, tok, clean, teacher, teacher_tok, preset, args, seed, workdir, **loss_args):
    """W2SDefense on the backdoored model at ``path``; ``loss_args`` (``alpha_ce``, ``beta_kd``,
    ``gamma_feature``, ``temperature``, ``feature_distance``) override the preset's loss settings."""
    torch.manual_seed(seed)
    model = _lora(_student(path, tok), args.lora_r)
    targs = _targs(
        workdir,
        args.defense_epochs,
        args.defense_lr,
        args.batch_size,
        seed,
        cls=W2SDefenseTrainingArguments,
        preset=preset,
        max_length=args.max_length,
        teacher_max_length=args.max_length,
        **loss_args,
    )
    trainer = W2SDefenseTrainer(
        model=model,
        teacher=teacher,
        teacher_tokenizer=teacher_tok,
        processing_class=tok,
        args=targs,
        train_dataset=clean,
    )
    out = trainer.train()
    components = [h for h in trainer.state.log_history if "loss_ce" in h]
    return model, _time_per_step(trainer, out), components[-1] if components else {}


def evaluate(model, tok, test, attack, args, split_name="test"):
    r = evaluate_backdoor(model, tok, test, attack, batch_size=32, max_length=args.max_length, split_name=split_name)
    return {"cacc": r["cacc"], "asr": r["asr"], "n_clean": r["n_clean"], "n_triggered": r["n_triggered"]}


def make_teacher(base_path, clean, args, seed, output_dir):
    """The MiniLM teacher of a seed: fully fine-tuned on the clean defense set, its projection as wide as the
    SmolLM2 student's hidden size. Returns ``(teacher, teacher_tokenizer)``."""
    hidden = AutoConfig.from_pretrained(base_path).hidden_size
    teacher_args = _targs(output_dir, args.teacher_epochs, args.teacher_lr, args.batch_size, seed)
    return train_teacher(minilm_path(), hidden, clean, output_dir=output_dir, args=teacher_args,
                         max_length=args.max_length)


def run_seed(seed, attack_names, args, base_path, tok, data, workroot, record):
    """Train the seed's teacher and clean floor model, then, per attack in ``attack_names``, the backdoored
    model and both defenses; ``record(name, result)`` is called after each attack (the script saves there)."""
    train, clean, _ = subsamples(data, args, seed)
    test = data["test"].shuffle(seed=seed).select(range(min(args.test_size, len(data["test"]))))
    teacher, teacher_tok = make_teacher(base_path, clean, args, seed, workroot / f"teacher{seed}")

    floor_path = full_finetune(base_path, tok, train, args, seed, workroot, "clean")
    floor_model = _student(floor_path, tok)
    attacks = {name: ATTACKS[name][0](seed) for name in attack_names}
    floor = {name: evaluate(floor_model, tok, test, atk, args) for name, atk in attacks.items()}
    del floor_model

    for name, attack in attacks.items():
        t0 = time.time()
        preset = ATTACKS[name][1]
        poisoned = attack.poison(train)
        bd_path = full_finetune(base_path, tok, poisoned, args, seed, workroot, name)
        bd_model = _student(bd_path, tok)
        before = evaluate(bd_model, tok, test, attack, args)
        teacher_metrics = evaluate(teacher, teacher_tok, test, attack, args)
        del bd_model
        lora_model, lora_step = defend_plain_lora(
            bd_path, tok, clean, args, seed, workroot / f"{name}{seed}_lora"
        )
        lora = evaluate(lora_model, tok, test, attack, args)
        del lora_model
        w2s_model, w2s_step, components = defend_w2s(
            bd_path, tok, clean, teacher, teacher_tok, preset, args, seed, workroot / f"{name}{seed}_w2s"
        )
        w2s = evaluate(w2s_model, tok, test, attack, args)
        del w2s_model
        result = {
            "preset": preset,
            "clean_floor": floor[name],
            "teacher": teacher_metrics,
            "backdoored": before,
            "plain_lora": lora,
            "w2sdefense": w2s,
            "sec_per_step": {"plain_lora": lora_step, "w2sdefense": w2s_step},
            "step_time_ratio": w2s_step / lora_step,
            "w2s_last_logged_components": {
                k: components.get(k) for k in ("loss_ce", "loss_kd", "loss_feature")
            },
            "seconds": time.time() - t0,  # this attack's models; the seed's teacher and floor are not in it
        }
        record(name, result)
        print(json.dumps({f"seed {seed}": {name: result}}, indent=1), flush=True)


CELLS = ("clean_floor", "teacher", "backdoored", "plain_lora", "w2sdefense")
#: "Clearly below plain LoRA's ASR": W2SDefense must remove at least this much more ASR than plain LoRA, on
#: average over the seeds (5 points, the same scale as the issue's floor target). A one-sentence difference
#: on ~170 triggered test sentences (0.6 points) is not a result.
CLEAR_ASR_MARGIN = 0.05


def summarise(runs, attacks):
    """Per attack: mean ± std of every cell's CACC / ASR over the seeds that have it, and the issue's targets.

    ``w2s_asr_gain_over_plain_lora`` is the per-seed difference plain LoRA's ASR − W2SDefense's. Its mean is the
    difference of the two means (the target reads that); its std is the paired one, so seed-to-seed spread in
    how well the backdoor was planted does not blur how steady the gain is.
    """
    summary = {}
    for name in attacks:
        done = [r["attacks"][name] for r in runs if name in r["attacks"]]
        if not done:
            continue
        cells = {"n_seeds": len(done)}
        for cell in CELLS:
            for metric in ("cacc", "asr"):
                cells[f"{cell}_{metric}"] = mean_std([r[cell][metric] for r in done])
        cells["w2s_asr_gain_over_plain_lora"] = mean_std(
            [r["plain_lora"]["asr"] - r["w2sdefense"]["asr"] for r in done])
        cells["step_time_ratio"] = statistics.fmean(r["step_time_ratio"] for r in done)
        floor, w2s = cells["clean_floor_asr"]["mean"], cells["w2sdefense_asr"]["mean"]
        cells["targets"] = {
            "asr_within_5pts_of_floor": w2s - floor <= 0.05,
            "cacc_within_1pt_of_backdoored": cells["backdoored_cacc"]["mean"]
            - cells["w2sdefense_cacc"]["mean"]
            <= 0.01,
            "asr_clearly_below_plain_lora": cells["w2s_asr_gain_over_plain_lora"]["mean"] >= CLEAR_ASR_MARGIN,
            "step_time_ratio_le_1.3": cells["step_time_ratio"] <= 1.3,
        }
        summary[name] = cells
    return summary


LABELS = {"clean_floor": "clean-data floor", "teacher": "MiniLM teacher", "backdoored": "backdoored (before)",
          "plain_lora": "plain LoRA on the clean set", "w2sdefense": "W2SDefense"}


def render_markdown(report: dict) -> str:
    """CACC / ASR in % (mean ± sample std over seeds) per cell and attack, the step-time ratio and the targets."""
    summary, cfg = report["summary"], report["config"]
    attacks = list(summary)
    pm = lambda s: f"{round(100 * s['mean'], 1) + 0.0:.1f} ± {100 * s['std']:.1f}"  # noqa: E731 (+0.0: no "-0.0")
    seeds = sorted({r["seed"] for r in report["runs"]})
    out = [f"SmolLM2-135M student, MiniLM teacher; preset `{cfg.get('preset', 'full')}`: {cfg['train_size']} "
           f"training, {cfg['clean_size']} clean and {cfg['test_size']} test sentences, max length "
           f"{cfg['max_length']}; seeds {seeds}; total {report['total_seconds'] / 60:.0f} min."
           + ("" if report.get("complete", True) else " **Incomplete: the same command with --resume adds the rest.**"),
           "", "| Model | " + " | ".join(f"{a} CACC / ASR" for a in attacks) + " |",
           "|---|" + ":---:|" * len(attacks)]
    for cell in CELLS:
        out.append(f"| {LABELS[cell]} | "
                   + " | ".join(f"{pm(summary[a][f'{cell}_cacc'])} / {pm(summary[a][f'{cell}_asr'])}" for a in attacks)
                   + " |")
    out.append("| ASR points W2SDefense removes beyond plain LoRA (paired per seed) | "
               + " | ".join(pm(summary[a]["w2s_asr_gain_over_plain_lora"]) for a in attacks) + " |")
    out.append("| W2SDefense / plain LoRA time per step | "
               + " | ".join(f"{summary[a]['step_time_ratio']:.2f}×" for a in attacks) + " |")
    for target in next(iter(summary.values()))["targets"] if summary else ():
        out.append(f"| target: {target} | " + " | ".join(
            ("met" if summary[a]["targets"][target] else "missed") for a in attacks) + " |")
    out += ["", "```bash", report.get("command", "python benchmarks/w2sdefense_efficacy.py"), "```"]
    return "\n".join(out)


def main(argv=None):
    args = parse_args(argv)
    if args.render is not None:
        report = read_results(args.render)
        # re-summarised from the per-seed runs, so an older file is judged by the current target rules
        report["summary"] = summarise(report["runs"], list(dict.fromkeys(a for r in report["runs"] for a in r["attacks"])))
        print(render_markdown(report))
        return 0
    previous = previous_results(args, NOT_SETTINGS, key="config")
    base_path = smollm2_path()
    tok = student_tokenizer(base_path)
    data = load_text_classification("rotten_tomatoes")
    runs = previous["runs"] if previous else []
    earlier = float(previous["total_seconds"]) if previous else 0.0
    started = time.time()
    command = "python benchmarks/w2sdefense_efficacy.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save():
        report = {
            "benchmark": "w2sdefense_efficacy",
            "quick": args.preset == "quick",
            "config": settings_of(args),
            "command": command,
            "complete": all(any(r["seed"] == s and a in r["attacks"] for r in runs)
                            for s in args.seeds for a in args.attacks),
            "student": "SmolLM2-135M-Instruct (Llama) + classification head, fp32, CPU",
            "teacher": "all-MiniLM-L6-v2 W2STeacher (mean pooling, 384 -> 576 -> 2)",
            "dataset": "rotten_tomatoes (hf_backdoor_defense.data split); clean set from validation",
            "summary": summarise(runs, args.attacks),
            "runs": sorted(runs, key=lambda r: r["seed"]),
            "total_seconds": earlier + time.time() - started,
            "torch_threads": torch.get_num_threads(),
            "hardware": hardware_info(),
        }
        write_json(args.output, report)  # after every attack: an interrupted run keeps what it measured
        return report

    with contextlib.ExitStack() as stack:
        workroot = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="w2s_bench_")))
        for seed in args.seeds:
            run = next((r for r in runs if r["seed"] == seed), None)
            todo = [a for a in args.attacks if run is None or a not in run["attacks"]]
            if not todo:
                continue
            if run is None:
                run = {"seed": seed, "attacks": {}}
                runs.append(run)

            def record(name, result, run=run):
                run["attacks"][name] = result
                save()

            run_seed(seed, todo, args, base_path, tok, data, workroot, record)
    report = save()
    print(json.dumps(report["summary"], indent=2))
    print(render_markdown(report))
    print(f"wrote {args.output} in {report['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
