"""``hbd purify``: purify a fine-tuned model (or PEFT adapter) with Fine-mixing, E-PUR or Fine-purifying.

Writes the purified model (safetensors) or adapter, the tokenizer, ``purification_report.json`` and a
``README.md`` model card into ``--output``. The output is built in a temporary sibling folder and renamed
into place; it may not be (or contain, or lie inside) an input folder, and a non-empty output folder is
refused unless ``--overwrite``.

Example:
    $ hbd purify --method fine-purifying --suspect ./backdoored --pretrained ./bert-base \\
        --clean-data clean.csv --ratio 0.3 --finetune-epochs 3 --output ./purified
    $ hbd purify --method e-pur+fine-purifying --suspect ./backdoored --pretrained ./bert-base \\
        --clean-data rotten_tomatoes --clean-split validation --num-clean 256 --output ./purified

Without ``--ratio`` the ratio is searched: each of ``--ratios`` is purified (and fine-tuned, with
``--finetune-epochs``) and scored on a clean dev set, and the most aggressive one within ``--budget`` of the
suspect's dev accuracy is kept; ``purification_report.json`` lists every ratio tried.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

METHODS = ("fine-mixing", "fine-purifying", "e-pur", "e-pur+fine-purifying", "e-pur+fine-mixing")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "purify",
        help="Purify a fine-tuned model or adapter (Fine-mixing, E-PUR, Fine-purifying).",
        description="Reset suspicious fine-tuned dimensions to the pre-trained weights, then fine-tune on clean data.",
    )
    parser.add_argument("--method", required=True, choices=METHODS, help="Purification method (or a composition).")
    parser.add_argument("--suspect", required=True, help="Fine-tuned model folder, or PEFT adapter folder.")
    parser.add_argument("--pretrained", default=None,
                        help="Pre-trained model folder or Hub id (full models); for adapters, the base model "
                             "(default: the adapter config's base_model_name_or_path).")
    parser.add_argument("--clean-data", required=True, help="Clean data: corpus name, or local CSV/JSON(L)/parquet file/folder.")
    parser.add_argument("--clean-split", default="train", help="Split of --clean-data to use (default 'train').")
    parser.add_argument("--num-clean", type=int, default=None, help="Use only the first N clean examples.")
    parser.add_argument("--ratio", type=float, default=None,
                        help="A fixed fraction of the dimensions reset. Without it, the ratio is chosen on a clean dev "
                             "set: the most aggressive of --ratios whose dev accuracy stays within --budget.")
    parser.add_argument("--ratios", type=float, nargs="+", default=None,
                        help="Ratios the search tries (default 0.1 0.3 0.5 0.7 0.9).")
    parser.add_argument("--budget", type=float, default=0.02,
                        help="Allowed dev-accuracy drop of the search, a fraction (default 0.02 = two points).")
    parser.add_argument("--dev-split", default=None,
                        help="Split of --clean-data holding the search's dev set (never test). Default: the last "
                             "--num-dev examples of --clean-split, kept apart from the clean set.")
    parser.add_argument("--num-dev", type=int, default=256,
                        help="Dev examples of the search (default 256; at most half of a shared split).")
    parser.add_argument("--ratio-of", default="moved", choices=("moved", "all"),
                        help="What the ratio counts: the dimensions fine-tuning moved (default) or all of them.")
    parser.add_argument("--num-tokens", type=int, default=200, help="E-PUR: embedding rows reset (default 200).")
    parser.add_argument("--mask", default="random", choices=("random", "magnitude"), help="Fine-mixing mask.")
    parser.add_argument("--scope", default="global", choices=("global", "per_tensor"), help="Ranking scope.")
    parser.add_argument("--estimator", default="example", choices=("example", "batch"),
                        help="Fine-purifying: empirical Fisher from per-example (default) or per-batch gradients.")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="Fine-purifying: score delta^2 / (H + eps)^alpha (default 1, the paper's).")
    parser.add_argument("--embeddings", default="exclude", choices=("exclude", "include"),
                        help="Fine-purifying: rank the word embeddings too (default: exclude; E-PUR handles them).")
    parser.add_argument("--head", default="keep", choices=("keep", "reinit", "purify"),
                        help="Classifier head (no pre-trained value): keep (default), reinit or purify.")
    parser.add_argument("--finetune-epochs", type=float, default=0.0,
                        help="Epochs of the clean fine-tune after purification (default 0: none).")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Fine-tune learning rate (default 2e-5 full model, 2e-4 adapter).")
    parser.add_argument("--warmup-ratio", type=float, default=0.0,
                        help="Fine-tune: fraction of its steps spent warming the learning rate up (default 0).")
    parser.add_argument("--batch-size", type=int, default=8, help="Batch size (Hessian and fine-tune).")
    parser.add_argument("--max-length", type=int, default=128, help="Truncation length (default 128).")
    parser.add_argument("--seed", type=int, default=0, help="Seed (random mask, fine-tune).")
    parser.add_argument("--load-in-4bit", action="store_true", help="Adapters: load the base model in 4-bit (nf4).")
    parser.add_argument("--pooling", default="cls", choices=("cls", "mean"),
                        help="Adapters: how the base classifier reads the encoder, as when the adapter was trained "
                             "(default cls; mean for a mean-pooled encoder). Full models: read from their config.")
    parser.add_argument("--output", required=True, help="Output folder (new or empty; see --overwrite).")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty output folder.")
    parser.set_defaults(func=run)


def build_purifier(args: argparse.Namespace):
    """The purifier (or composition) described by the command-line arguments."""
    from ..purification import EmbeddingPurification, FineMixing, FinePurifying, compose

    parts = []
    for name in args.method.split("+"):
        ratio = args.ratio if args.ratio is not None else 0.5  # a placeholder the ratio search replaces
        if name == "fine-mixing":
            parts.append(FineMixing(ratio=ratio, ratio_of=args.ratio_of, mask=args.mask, scope=args.scope,
                                    head=args.head, seed=args.seed))
        elif name == "fine-purifying":
            parts.append(FinePurifying(ratio=ratio, ratio_of=args.ratio_of, embeddings=args.embeddings,
                                       alpha=args.alpha, estimator=args.estimator, scope=args.scope, head=args.head,
                                       batch_size=args.batch_size, max_length=args.max_length))
        elif name == "e-pur":
            parts.append(EmbeddingPurification(num_tokens=args.num_tokens, head=args.head))
        else:  # pragma: no cover (argparse choices)
            raise ValueError(f"--method: unknown method {name!r}.")
    return parts[0] if len(parts) == 1 else compose(*parts)


def check_output(output: str, inputs: list[str | None], overwrite: bool) -> Path:
    """Resolve ``--output``; refuse input folders (either way nested), ancestors of input files, and non-empty
    folders without ``--overwrite`` (see :func:`hf_backdoor_defense.purification.pipeline.check_output_dir`)."""
    from ..purification.pipeline import check_output_dir

    return check_output_dir(output, inputs, overwrite)


def _searches(args: argparse.Namespace) -> bool:
    """Whether the ratio is searched: no fixed --ratio, and a method with a ratio (E-PUR alone has none)."""
    return args.ratio is None and args.method != "e-pur"


def split_clean_and_dev(splits, args: argparse.Namespace):
    """The clean set and, for a search, the dev set: ``--dev-split`` if given, else the last ``--num-dev``
    examples of ``--clean-split`` (at most half of it), which the clean set then leaves out."""
    if args.clean_split not in splits:
        raise ValueError(f"--clean-split {args.clean_split!r} is not a split of --clean-data: {list(splits)}.")
    clean, dev = splits[args.clean_split], None
    if _searches(args):
        if args.num_dev < 1:
            raise ValueError(f"--num-dev must be >= 1, got {args.num_dev}.")
        if args.dev_split is not None:
            if args.dev_split == "test":
                raise ValueError("--dev-split test: the search chooses a setting, so it must never read the test "
                                 "split; use validation (or leave --dev-split out to hold out part of --clean-split).")
            if args.dev_split not in splits:
                raise ValueError(f"--dev-split {args.dev_split!r} is not a split of --clean-data: {list(splits)}.")
            if args.dev_split == args.clean_split:
                raise ValueError("--dev-split equals --clean-split: leave --dev-split out to hold out the last "
                                 "--num-dev examples of it, or name another split.")
            dev = splits[args.dev_split]
            dev = dev.select(range(min(args.num_dev, len(dev))))
        else:
            n_dev = min(args.num_dev, len(clean) // 2)
            if n_dev < 1:
                raise ValueError(f"--clean-data: split {args.clean_split!r} has {len(clean)} example(s), too few to "
                                 "hold out a dev set for the ratio search; pass --ratio or --dev-split.")
            dev = clean.select(range(len(clean) - n_dev, len(clean)))
            clean = clean.select(range(len(clean) - n_dev))
    if args.num_clean is not None:
        clean = clean.select(range(min(args.num_clean, len(clean))))
    if len(clean) == 0:
        raise ValueError("--clean-data: the clean set is empty.")
    return clean, dev


def run(args: argparse.Namespace) -> int:
    from ..purification.base import check_ratio

    if args.ratio is not None:
        check_ratio(args.ratio, "--ratio")
    for ratio in args.ratios or ():
        check_ratio(ratio, "--ratios")
    if not 0.0 <= args.budget <= 1.0:
        raise ValueError(f"--budget must be a fraction in [0, 1] (0.02 = two accuracy points), got {args.budget}.")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio must lie in [0, 1), got {args.warmup_ratio}.")
    if args.num_clean is not None and args.num_clean < 1:
        raise ValueError(f"--num-clean must be >= 1, got {args.num_clean}.")
    out = check_output(args.output, [args.suspect, args.pretrained, args.clean_data], args.overwrite)

    import torch

    from ..data import load_text_classification
    from ..purification.adapters import is_adapter_dir
    from ..purification.pipeline import load_suspect, run_purification, write_purified

    torch.manual_seed(args.seed)
    clean, dev = split_clean_and_dev(load_text_classification(args.clean_data), args)
    num_labels = clean.features["label"].num_classes if hasattr(clean.features["label"], "num_classes") else None

    if not Path(args.suspect).is_dir():
        raise FileNotFoundError(f"--suspect {args.suspect} is not a folder.")
    if not args.pretrained and not is_adapter_dir(args.suspect):
        raise ValueError("--pretrained is required for a full model: the checkpoint the suspect was fine-tuned from.")
    quantization = None
    if args.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    bundle = load_suspect(args.suspect, args.pretrained, num_labels=num_labels, quantization_config=quantization,
                          pooling=args.pooling)
    finetune = None
    if args.finetune_epochs > 0:
        from ..trainers.purification import PurificationTrainingArguments

        lr = args.learning_rate if args.learning_rate is not None else (2e-4 if bundle.is_adapter else 2e-5)
        finetune = PurificationTrainingArguments(
            num_train_epochs=args.finetune_epochs, learning_rate=lr, warmup_steps=args.warmup_ratio,  # < 1: a ratio
            per_device_train_batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    search = {}
    if _searches(args):
        from ..purification.ratio_search import DEFAULT_RATIOS

        search = {"dev": dev, "ratios": args.ratios or list(DEFAULT_RATIOS), "budget": args.budget}
    try:
        result = run_purification(bundle, build_purifier(args), clean, finetune_args=finetune, **search)
    finally:
        if finetune is not None:
            shutil.rmtree(finetune.output_dir, ignore_errors=True)
    report = result.report
    report["inputs"] = {"suspect": str(args.suspect), "pretrained": args.pretrained, "clean_data": args.clean_data,
                        "clean_split": args.clean_split, "num_clean": len(clean),
                        "dev_split": (args.dev_split or f"{args.clean_split} (held out)") if dev is not None else None,
                        "num_dev": len(dev) if dev is not None else None}
    write_purified(out, result, bundle, dataset=args.clean_data)
    if "ratio_search" in report:
        _print_search(report["ratio_search"])
    print(f"Purified model written to {out} ({report['method']}, ratio {report.get('ratio')}, "
          f"{report.get('dims_reset_total', 0)} dimensions reset).")
    return 0


def _print_search(search: dict) -> None:
    """The ratios tried, as a table: dev accuracy after the fine-tune and the drop against the suspect."""
    print(f"Ratio search: suspect dev accuracy {100 * search['baseline_accuracy']:.1f} %, budget "
          f"{100 * search['budget']:.1f} points.")
    print("| ratio | dev accuracy | drop | within budget | dimensions reset |")
    print("|---:|---:|---:|:---:|---:|")
    for row in search["table"]:
        print(f"| {row['ratio']:.2f} | {100 * row['dev_accuracy']:.1f} | {100 * row['delta_acc']:+.1f} | "
              f"{'yes' if row['within_budget'] else 'no'} | {row['dims_reset_total']} |")
    note = "" if search["within_budget"] else " (no ratio met the budget: the least aggressive was kept)"
    print(f"Chosen ratio: {search['chosen']}{note}.")
