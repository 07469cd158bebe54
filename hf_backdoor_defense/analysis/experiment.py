"""One frequency-analysis run: train a sequence classifier on poisoned data (full fine-tune, LoRA or MuScleLoRA
with gradient alignment) with a :class:`~hf_backdoor_defense.analysis.FrequencyAnalysisCallback` attached.

``hbd analyze-frequency`` and ``benchmarks/frequency_analysis.py`` are thin layers over :func:`analyze`.

Example:
    >>> from hf_backdoor_defense.analysis.experiment import analyze
    >>> callback, info, model = analyze("./minilm", splits, BadNets(), method="musclelora", steps=200)  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["DEFAULT_LR", "ENCODER_TYPES", "METHODS", "analyze", "build_model"]

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

    from ..data import tokenize_dataset
    from ..trainers import MuScleLoRATrainer, MuScleLoRATrainingArguments
    from .callback import FrequencyAnalysisCallback, FrequencyAnalysisConfig
    from .probe import build_probe_set

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
