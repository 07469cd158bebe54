"""``make demo-minilm``: the backdoor problem and the MuScleLoRA defense on an encoder, in numbers, on real data.

Rotten Tomatoes (the built-in offline corpus) is poisoned with BadNets and with AddSent (dirty
label, 10 % of the training set). MiniLM-L6 is trained on clean data (the ASR floor), then on each
poisoned set with full fine-tuning, LoRA and MuScleLoRA (adapter + gradient alignment on 96 trusted
examples from the validation split). The table shows clean accuracy (CACC) and attack success rate
(ASR) on the test split. The training set is subsampled to fit about 10 minutes on 2 CPU cores; the
output says how much.

Run ``python -m hf_backdoor_defense.demo --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_json_atomic

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class DemoConfig:
    """Settings of the demo run; the defaults keep it near 10 minutes on 2 CPU cores."""

    train_size: int = 800
    test_size: int | None = 800  # None: the whole test split (1,276 sentences)
    reference_size: int = 96
    epochs: float = 2.0
    max_length: int = 32
    batch_size: int = 16
    full_ft_lr: float = 1e-4
    adapter_lr: float = 1e-3
    poison_rate: float = 0.1
    target_label: int = 1
    seed: int = 0
    attacks: list[str] = field(default_factory=lambda: ["badnets", "addsent"])
    methods: list[str] = field(default_factory=lambda: ["full_ft", "lora", "musclelora"])
    output_dir: str = "outputs/demo"


def _subsample(dataset, n, seed):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.train_test_split(train_size=n, seed=seed, stratify_by_column="label")["train"]


def run(cfg: DemoConfig) -> list[dict]:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .assets import minilm_path
    from .attacks import ATTACKS
    from .data import load_text_classification, tokenize_dataset
    from .experiments import METHODS, CellSettings, format_table, train_cell
    from .metrics import evaluate_backdoor

    hf_logging.set_verbosity_error()
    start = time.time()
    model_dir = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_text_classification("rotten_tomatoes")
    train = _subsample(data["train"], cfg.train_size, cfg.seed)
    test = _subsample(data["test"], cfg.test_size, cfg.seed)
    reference = _subsample(data["validation"], cfg.reference_size, cfg.seed)
    settings = CellSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, max_length=cfg.max_length,
                            full_ft_lr=cfg.full_ft_lr, adapter_lr=cfg.adapter_lr, seed=cfg.seed)
    print(f"Rotten Tomatoes: {len(train)} of {len(data['train'])} training sentences (subsampled), "
          f"{len(test)} test sentences, {len(reference)} trusted reference sentences (validation split).\n"
          f"MiniLM-L6, {cfg.epochs:g} epochs, batch {cfg.batch_size}, max length {cfg.max_length}; "
          f"{100 * cfg.poison_rate:g} % dirty-label poison, target label {cfg.target_label}.")
    tok = lambda ds: tokenize_dataset(ds, tokenizer, max_length=cfg.max_length)  # noqa: E731
    reference_tok = tok(reference)
    attacks = {name: ATTACKS[name](target_label=cfg.target_label, poison_rate=cfg.poison_rate,
                                   label_mode="dirty", seed=cfg.seed) for name in cfg.attacks}
    rows = []
    jobs = [("clean", None, "full_ft")] + [(n, a, m) for n, a in attacks.items() for m in cfg.methods]
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, attack, method) in enumerate(jobs, start=1):
            if attack is None:
                print(f"\n[{i}/{len(jobs)}] clean data, {METHODS[method]} (the ASR floor: never saw a trigger)")
                model, info = train_cell(method, tok(train), tokenizer, model_dir, settings, workdir=scratch)
                for attack_name, each in attacks.items():
                    scores = evaluate_backdoor(model, tokenizer, test, each, max_length=cfg.max_length)
                    rows.append({"attack": attack_name, "training": "clean data, " + METHODS[method],
                                 **scores, **info})
                    print(f"    -> {attack_name}: CACC {100 * scores['cacc']:.1f}%  ASR {100 * scores['asr']:.1f}%")
            else:
                poisoned = attack.poison(train)
                print(f"\n[{i}/{len(jobs)}] {name}-poisoned data ({sum(poisoned['is_poisoned'])} of "
                      f"{len(poisoned)} examples), {METHODS[method]}")
                model, info = train_cell(method, tok(poisoned), tokenizer, model_dir, settings,
                                         reference=reference_tok, workdir=scratch)
                scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=cfg.max_length)
                rows.append({"attack": name, "training": "poisoned, " + METHODS[method], **scores, **info})
                print(f"    -> CACC {100 * scores['cacc']:.1f}%  ASR {100 * scores['asr']:.1f}%")
            del model
    rows.sort(key=lambda r: (cfg.attacks.index(r["attack"]), not r["training"].startswith("clean")))
    wall = time.time() - start
    print("\n" + format_table(rows))
    print(f"\nwall time {wall / 60:.1f} min")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(cfg), "rows": rows, "wall_time_s": round(wall, 1)}
    write_json_atomic(out / "results.json", payload)
    print(f"results written to {out / 'results.json'}")
    return rows


def main(argv: list[str] | None = None) -> int:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--test-size", type=int, default=defaults.test_size)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--attacks", nargs="+", default=defaults.attacks, choices=["badnets", "addsent"])
    parser.add_argument("--methods", nargs="+", default=defaults.methods, choices=["full_ft", "lora", "musclelora"])
    parser.add_argument("--output-dir", default=defaults.output_dir)
    args = parser.parse_args(argv)
    cfg = DemoConfig(train_size=args.train_size, test_size=args.test_size, epochs=args.epochs, seed=args.seed,
                     attacks=list(args.attacks), methods=list(args.methods), output_dir=args.output_dir)
    run(cfg)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
