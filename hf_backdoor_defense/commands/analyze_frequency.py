"""``hbd analyze-frequency``: train on poisoned data while tracking the frequency analysis; write JSON + PNG.

Poisons the training split (unless it is already a ``hbd poison`` output), trains a sequence classifier with
full fine-tuning, LoRA or MuScleLoRA (+ gradient alignment) for ``--steps`` optimizer steps, and records the
low/high-frequency errors of clean and backdoor probe examples every ``--eval-every`` steps
(:class:`~hf_backdoor_defense.analysis.FrequencyAnalysisCallback`). Writes ``frequency.json`` and
``frequency.png`` into ``--output``; the trained model is not saved.

Example:
    $ hbd analyze-frequency --model ./minilm --dataset rotten_tomatoes --attack badnets \\
          --method full --steps 200 --output ./freq-full
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .poison import add_attack_arguments, build_attack, load_splits

METHODS = ("full", "lora", "musclelora")
DEFAULT_LR = {"full": 5e-5, "lora": 5e-4, "musclelora": 5e-4}
ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "mpnet",
    "camembert",
    "modernbert",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze-frequency",
        help="Track low/high-frequency errors of clean and backdoor examples during training.",
        description="Train on poisoned data with the frequency analysis; write frequency.json and frequency.png.",
    )
    parser.add_argument(
        "--model",
        "--model-dir",
        dest="model",
        required=True,
        help="Local model folder (a pretrained encoder/decoder; a new classifier head is added).",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="Corpus name (e.g. rotten_tomatoes), local file/folder, or a `hbd poison` output.",
    )
    add_attack_arguments(parser)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--method", choices=METHODS, default="full", help="full | lora | musclelora (default full)."
    )
    group.add_argument("--steps", type=int, default=200, help="Optimizer steps (default 200).")
    group.add_argument(
        "--learning-rate", type=float, default=None, help="Default 5e-5 (full) or 5e-4 (lora, musclelora)."
    )
    group.add_argument("--batch-size", type=int, default=16, help="Training batch size (default 16).")
    group.add_argument(
        "--max-length", type=int, default=64, help="Sequence length, training and probes (default 64)."
    )
    group.add_argument("--train-size", type=int, default=None, help="Seeded subsample of the train split.")
    group.add_argument(
        "--reference-size",
        type=int,
        default=96,
        help="musclelora: clean reference examples from the validation split (default 96).",
    )
    group = parser.add_argument_group("frequency analysis")
    group.add_argument("--eval-every", type=int, default=10, help="Probe every N steps (default 10).")
    group.add_argument("--probe-clean", type=int, default=200, help="Clean probe examples (default 200).")
    group.add_argument(
        "--probe-poisoned", type=int, default=200, help="Poisoned probe examples (default 200)."
    )
    group.add_argument(
        "--sigma-mode",
        choices=["relative", "absolute"],
        default="relative",
        help="Kernel widths relative to the median distance (default) or absolute (paper).",
    )
    group.add_argument(
        "--sigmas",
        type=float,
        nargs="+",
        default=None,
        help="Kernel widths (default: 25 in [0.05, 0.2] relative, [2, 8] absolute).",
    )
    group.add_argument(
        "--pooling",
        choices=["flatten", "mean"],
        default="flatten",
        help="Embedding points: fixed-length flatten (default, paper) or mean.",
    )
    group.add_argument(
        "--embedding-source",
        choices=["current", "initial"],
        default="current",
        help="Embeddings of the current model (default, paper) or of the initial one.",
    )
    parser.add_argument("--output", required=True, help="Folder for frequency.json and frequency.png.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)


def build_model(model_path: str, method: str, num_labels: int):
    """(model, tokenizer, description) for a method; local files only, a fresh classification head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(model_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder} is not a folder.")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=num_labels)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if method == "full":
        return model, tokenizer, "full fine-tuning"
    from peft import LoraConfig, get_peft_model

    if method == "lora":
        config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=32)
        return get_peft_model(model, config), tokenizer, "LoRA r=8 alpha=32 (peft default targets)"
    from ..tuners.musclelora import MuScleLoRAConfig

    return (
        get_peft_model(model, MuScleLoRAConfig(task_type="SEQ_CLS")),
        tokenizer,
        "MuScleLoRA (defaults) + GA",
    )


def analyze(
    model_path: str,
    splits,
    attack,
    *,
    method: str = "full",
    steps: int = 200,
    learning_rate: float | None = None,
    batch_size: int = 16,
    max_length: int = 64,
    train_size: int | None = None,
    reference_size: int = 96,
    probe_clean: int = 200,
    probe_poisoned: int = 200,
    config=None,
    seed: int = 0,
    show_progress: bool = True,
):
    """Train one model on the poisoned train split with a `FrequencyAnalysisCallback`; return
    ``(callback, info, model)``: the history, a description of the run (method, sizes, wall time), the
    trained model (in eval mode)."""
    import time

    from transformers import DataCollatorWithPadding, set_seed

    from ..analysis import FrequencyAnalysisCallback, FrequencyAnalysisConfig, build_probe_set
    from ..data import tokenize_dataset
    from ..trainers.musclelora import MuScleLoRATrainer, MuScleLoRATrainingArguments

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}.")
    from ..data import subsample

    train = subsample(splits["train"], train_size, seed)
    poisoned = train if "is_poisoned" in train.column_names else attack.poison(train)
    probe = build_probe_set(poisoned, probe_clean, probe_poisoned, seed=seed)
    label_feature = poisoned.features.get("label")
    num_labels = getattr(label_feature, "num_classes", None) or len(set(poisoned["label"]))
    set_seed(seed)
    model, tokenizer, description = build_model(model_path, method, num_labels)
    align = method == "musclelora"
    reference = None
    if align:
        if "validation" not in splits:
            raise ValueError("--method musclelora needs a clean 'validation' split for the reference set.")
        reference = tokenize_dataset(splits["validation"], tokenizer, max_length=max_length)
        reference_size = min(reference_size, len(reference))
    model_type = getattr(model.config, "model_type", "")
    config = config or FrequencyAnalysisConfig(max_length=max_length)
    callback = FrequencyAnalysisCallback(probe, tokenizer, config, disable_progress_bar=not show_progress)
    with tempfile.TemporaryDirectory() as workdir:
        args = MuScleLoRATrainingArguments(
            output_dir=workdir,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate or DEFAULT_LR[method],
            seed=seed,
            gradient_alignment=align,
            alignment_preset=("encoder" if model_type in ENCODER_TYPES else "llm") if align else None,
            reference_size=reference_size if align else None,
            report_to=[],
            save_strategy="no",
            logging_steps=max(1, steps // 10),
            disable_tqdm=not show_progress,
        )
        trainer = MuScleLoRATrainer(
            model=model,
            args=args,
            train_dataset=tokenize_dataset(poisoned, tokenizer, max_length=max_length),
            reference_dataset=reference,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[callback],
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    info = {
        "method": method,
        "adapter": description,
        "model": str(model_path),
        "steps": trainer.state.global_step,
        "learning_rate": args.learning_rate,
        "batch_size": batch_size,
        "max_length": max_length,
        "train_size": len(poisoned),
        "n_poisoned_train": int(sum(poisoned["is_poisoned"])),
        "seed": seed,
        "attack": attack.to_dict(),
        "wall_seconds": seconds,
    }
    model.eval()
    return callback, info, model


def run(args: argparse.Namespace) -> int:
    from ..analysis import FrequencyAnalysisConfig, drop_steps

    attack = build_attack(args)
    splits = load_splits(args.dataset, args.text_column, args.label_column)
    config = FrequencyAnalysisConfig(
        eval_steps=args.eval_every,
        sigmas=tuple(args.sigmas) if args.sigmas else None,
        sigma_mode=args.sigma_mode,
        pooling=args.pooling,
        max_length=args.max_length,
        embedding_source=args.embedding_source,
    )
    callback, info, _ = analyze(
        args.model,
        splits,
        attack,
        method=args.method,
        steps=args.steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        train_size=args.train_size,
        reference_size=args.reference_size,
        probe_clean=args.probe_clean,
        probe_poisoned=args.probe_poisoned,
        config=config,
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a folder.")
    drops = drop_steps(callback.history)
    callback.save_json(
        output / "frequency.json", extra={"run": {**info, "dataset": args.dataset}, "drop_steps": drops}
    )
    callback.plot(output / "frequency.png", title=f"{info['adapter']} — {args.dataset}, {args.attack}")
    first, last = callback.history[0], callback.history[-1]
    rows = [("curve", f"step {first['step']}", f"step {last['step']}", "halved at step")]
    for key in ("backdoor_low", "clean_low", "backdoor_high", "clean_high"):
        rows.append(
            (key, f"{first[key]:.3f}", f"{last[key]:.3f}", str(drops[key] if drops[key] is not None else "-"))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"wrote {output / 'frequency.json'} and {output / 'frequency.png'}")
    return 0
