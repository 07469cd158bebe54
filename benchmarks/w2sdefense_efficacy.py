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

Usage:
    python benchmarks/w2sdefense_efficacy.py --quick    # smoke run: tiny subsamples, proves the script works
    python benchmarks/w2sdefense_efficacy.py            # full run (see --help for sizes)
"""

from __future__ import annotations

import argparse
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
from _common import hardware_info, write_json  # noqa: E402
from _common import summarise as mean_std  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
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
from hf_backdoor_defense.trainers.teacher import train_teacher  # noqa: E402
from hf_backdoor_defense.trainers.w2sdefense import W2SDefenseTrainer, W2SDefenseTrainingArguments  # noqa: E402

LOGGING_STEPS = 10  # 1 in --quick mode, so the W2S loss components are logged at least once
RESULTS = Path(__file__).resolve().parent / "results" / "w2sdefense_efficacy.json"
ATTACKS = {
    "badnets": (lambda seed: BadNets(poison_rate=0.1, target_label=1, label_mode="dirty", seed=seed), "word"),
    "addsent": (
        lambda seed: AddSent(poison_rate=0.1, target_label=1, label_mode="dirty", seed=seed),
        "sentence",
    ),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="tiny subsamples, 1 seed, 1 epoch: proves the script runs"
    )
    p.add_argument("--train_size", type=int, default=2000, help="poisoned training examples (from train)")
    p.add_argument("--clean_size", type=int, default=500, help="clean defense examples (from validation)")
    p.add_argument("--test_size", type=int, default=500, help="test examples (from test)")
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--backdoor_epochs", type=float, default=2.0)
    p.add_argument("--backdoor_lr", type=float, default=2e-5)
    p.add_argument("--defense_epochs", type=float, default=5.0, help="authors: 5 epochs")
    p.add_argument("--defense_lr", type=float, default=2e-4, help="authors: LoRA lr 2e-4")
    p.add_argument("--teacher_epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--output", type=Path, default=None, help=f"default: {RESULTS} (quick: *_quick.json)")
    args = p.parse_args(argv)
    if args.output is None:
        args.output = RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS
    if args.quick:
        # Full fine-tuning of 135M parameters is the expensive part on a shared 2-core CPU: keep it to a
        # couple of optimizer steps per model and one attack.
        args.train_size, args.clean_size, args.test_size = 16, 16, 16
        args.max_length, args.backdoor_epochs, args.defense_epochs, args.teacher_epochs = 16, 1.0, 1.0, 1.0
        args.batch_size, args.seeds, args.attacks = 8, [0], args.attacks[:1]
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


def _student(path, tok, dtype=torch.float32):
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    return model


def full_finetune(base_path, tok, train, args, seed, workdir):
    """Full fine-tuning of SmolLM2 + head on ``train``; returns the saved folder."""
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
    trainer.train()
    trainer.save_model(str(workdir))
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


def defend_w2s(path, tok, clean, teacher, teacher_tok, preset, args, seed, workdir):
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


def evaluate(model, tok, test, attack, args):
    r = evaluate_backdoor(model, tok, test, attack, batch_size=32, max_length=args.max_length)
    return {"cacc": r["cacc"], "asr": r["asr"], "n_clean": r["n_clean"], "n_triggered": r["n_triggered"]}


def run_seed(seed, args, base_path, tok, data, workroot):
    t0 = time.time()
    train = data["train"].shuffle(seed=seed).select(range(min(args.train_size, len(data["train"]))))
    clean = data["validation"].shuffle(seed=seed).select(range(min(args.clean_size, len(data["validation"]))))
    test = data["test"].shuffle(seed=seed).select(range(min(args.test_size, len(data["test"]))))
    hidden = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2).config.hidden_size

    teacher_args = _targs(workroot / f"teacher{seed}", args.teacher_epochs, 5e-5, args.batch_size, seed)
    teacher, teacher_tok = train_teacher(
        minilm_path(),
        hidden,
        clean,
        output_dir=workroot / f"teacher{seed}",
        args=teacher_args,
        max_length=args.max_length,
    )
    result = {"seed": seed, "attacks": {}}

    floor_path = full_finetune(base_path, tok, train, args, seed, workroot / f"clean{seed}")
    floor_model = _student(floor_path, tok)
    attacks = {name: ATTACKS[name][0](seed) for name in args.attacks}
    floor = {name: evaluate(floor_model, tok, test, atk, args) for name, atk in attacks.items()}
    del floor_model

    for name, attack in attacks.items():
        preset = ATTACKS[name][1]
        poisoned = attack.poison(train)
        bd_path = full_finetune(base_path, tok, poisoned, args, seed, workroot / f"{name}{seed}")
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
        result["attacks"][name] = {
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
        }
        print(json.dumps({name: result["attacks"][name]}, indent=1), flush=True)
    result["seconds"] = time.time() - t0
    return result


def summarise(runs, attacks):
    summary = {}
    for name in attacks:
        cells = {}
        for cell in ("clean_floor", "teacher", "backdoored", "plain_lora", "w2sdefense"):
            for metric in ("cacc", "asr"):
                cells[f"{cell}_{metric}"] = mean_std(r["attacks"][name][cell][metric] for r in runs)
        cells["step_time_ratio"] = statistics.fmean(r["attacks"][name]["step_time_ratio"] for r in runs)
        floor, w2s = cells["clean_floor_asr"]["mean"], cells["w2sdefense_asr"]["mean"]
        cells["targets"] = {
            "asr_within_5pts_of_floor": w2s - floor <= 0.05,
            "cacc_within_1pt_of_backdoored": cells["backdoored_cacc"]["mean"]
            - cells["w2sdefense_cacc"]["mean"]
            <= 0.01,
            "asr_below_plain_lora": w2s < cells["plain_lora_asr"]["mean"],
            "step_time_ratio_le_1.3": cells["step_time_ratio"] <= 1.3,
        }
        summary[name] = cells
    return summary


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    base_path = smollm2_path()
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    data = load_text_classification("rotten_tomatoes")
    t0 = time.time()
    runs = []
    with tempfile.TemporaryDirectory(prefix="w2s_bench_") as tmp:
        for seed in args.seeds:
            runs.append(run_seed(seed, args, base_path, tok, data, Path(tmp)))
    report = {
        "benchmark": "w2sdefense_efficacy",
        "quick": args.quick,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "student": "SmolLM2-135M-Instruct (Llama) + classification head, fp32, CPU",
        "teacher": "all-MiniLM-L6-v2 W2STeacher (mean pooling, 384 -> 576 -> 2)",
        "dataset": "rotten_tomatoes (hf_backdoor_defense.data split); clean set from validation",
        "summary": summarise(runs, args.attacks),
        "runs": runs,
        "total_seconds": time.time() - t0,
        "torch_threads": torch.get_num_threads(),
        "hardware": hardware_info(),
    }
    write_json(args.output, report)
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.output} in {report['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
