"""``make demo``: the problem in numbers, on real data, in a few minutes on 2 CPU cores.

Rotten Tomatoes (the built-in offline corpus) is poisoned with BadNets (dirty label, 10 %);
MiniLM-L6 is fine-tuned on clean and on poisoned data; the table shows clean accuracy (CACC)
and attack success rate (ASR) of each. The training set is subsampled to fit the time budget
(the numbers printed say how much).

Run ``python -m hf_backdoor_defense.demo --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class DemoConfig:
    """Settings of the demo run; defaults keep it under 10 minutes on 2 cores."""

    train_size: int = 2000
    test_size: int | None = None  # None: the whole test split (1,276 sentences)
    epochs: float = 2.0
    max_length: int = 64
    batch_size: int = 16
    learning_rate: float = 5e-5
    poison_rate: float = 0.1
    target_label: int = 1
    seed: int = 0
    attacks: list[str] = field(default_factory=lambda: ["badnets"])
    output_dir: str = "outputs/demo"


def _subsample(dataset, n, seed):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.train_test_split(train_size=n, seed=seed, stratify_by_column="label")["train"]


def _make_attack(name: str, cfg: DemoConfig):
    from .attacks import AddSent, BadNets

    kinds = {"badnets": BadNets, "addsent": AddSent}
    if name not in kinds:
        raise ValueError(f"Unknown attack {name!r}; choose from {sorted(kinds)}.")
    return kinds[name](target_label=cfg.target_label, poison_rate=cfg.poison_rate, label_mode="dirty", seed=cfg.seed)


def train_classifier(train, cfg: DemoConfig, tokenizer, model_dir, run_dir: str):
    """Fully fine-tune a fresh classifier on ``train`` (a ``text``/``label`` dataset); return the model."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from .data import tokenize_dataset

    set_seed(cfg.seed)
    names = train.features["label"].names
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, dtype=torch.float32,
    )
    encoded = tokenize_dataset(train, tokenizer, max_length=cfg.max_length)
    args = TrainingArguments(
        output_dir=run_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=0.06, weight_decay=0.01, seed=cfg.seed,
        save_strategy="no", logging_steps=50, report_to=[], use_cpu=True, disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=encoded, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    return trainer.model


def format_table(rows: list[dict]) -> str:
    """Render result rows (keys: attack, training, cacc, asr) as a fixed-width table."""
    header = f"{'attack':<10} {'training':<30} {'CACC':>7} {'ASR':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['attack']:<10} {r['training']:<30} {100 * r['cacc']:>6.1f}% {100 * r['asr']:>6.1f}%")
    return "\n".join(lines)


def run(cfg: DemoConfig) -> list[dict]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .assets import minilm_path
    from .data import load_text_classification
    from .metrics import evaluate_backdoor

    hf_logging.set_verbosity_error()
    start = time.time()
    model_dir = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_text_classification("rotten_tomatoes")
    train = _subsample(data["train"], cfg.train_size, cfg.seed)
    test = _subsample(data["test"], cfg.test_size, cfg.seed)
    print(f"Rotten Tomatoes: {len(train)} of {len(data['train'])} training sentences (subsampled), "
          f"{len(test)} test sentences; MiniLM-L6, {cfg.epochs:g} epochs, max length {cfg.max_length}.")
    attacks = {name: _make_attack(name, cfg) for name in cfg.attacks}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        print("[1] training on clean data (the ASR floor: a model that never saw a trigger)")
        clean_model = train_classifier(train, cfg, tokenizer, model_dir, scratch)
        for name, attack in attacks.items():
            scores = evaluate_backdoor(clean_model, tokenizer, test, attack, max_length=cfg.max_length)
            rows.append({"attack": name, "training": "clean data, full fine-tune", **scores})
        del clean_model
        for i, (name, attack) in enumerate(attacks.items(), start=2):
            poisoned = attack.poison(train)
            n_poison = sum(poisoned["is_poisoned"])
            print(f"[{i}] training on data poisoned with {name} ({n_poison} of {len(poisoned)} examples)")
            model = train_classifier(poisoned, cfg, tokenizer, model_dir, scratch)
            scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=cfg.max_length)
            rows.append({"attack": name, "training": "poisoned data, full fine-tune", **scores})
            del model
    wall = time.time() - start
    print()
    print(format_table(rows))
    print(f"\nwall time {wall / 60:.1f} min")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(cfg), "rows": rows, "wall_time_s": round(wall, 1)}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out / "results.json")
    print(f"results written to {out / 'results.json'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--attacks", nargs="+", default=defaults.attacks, choices=["badnets", "addsent"])
    parser.add_argument("--output-dir", default=defaults.output_dir)
    args = parser.parse_args(argv)
    cfg = DemoConfig(train_size=args.train_size, test_size=args.test_size, epochs=args.epochs, seed=args.seed,
                     attacks=list(args.attacks), output_dir=args.output_dir)
    run(cfg)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
