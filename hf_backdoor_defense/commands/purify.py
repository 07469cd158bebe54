"""``hbd purify``: purify a fine-tuned model (or PEFT adapter) with Fine-mixing, E-PUR or Fine-purifying.

Writes the purified model (safetensors) or adapter, the tokenizer, ``purification_report.json`` and a
``README.md`` model card into ``--output``. The output is built in a temporary sibling folder and renamed
into place; it may not be (or contain, or lie inside) an input folder, and a non-empty output folder is
refused unless ``--overwrite``.

Example:
    $ hbd purify --method fine-purifying --suspect ./backdoored --pretrained ./bert-base \\
        --clean-data clean.csv --ratio 0.3 --finetune-epochs 3 --output ./purified
    $ hbd purify --method e-pur+fine-purifying --suspect ./backdoored --pretrained ./bert-base \\
        --clean-data rotten_tomatoes --num-clean 256 --output ./purified
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
    parser.add_argument("--ratio", type=float, default=0.5, help="Fraction of dimensions reset (default 0.5).")
    parser.add_argument("--num-tokens", type=int, default=200, help="E-PUR: embedding rows reset (default 200).")
    parser.add_argument("--mask", default="random", choices=("random", "magnitude"), help="Fine-mixing mask.")
    parser.add_argument("--scope", default="global", choices=("global", "per_tensor"), help="Ranking scope.")
    parser.add_argument("--head", default="keep", choices=("keep", "reinit", "purify"),
                        help="Classifier head (no pre-trained value): keep (default), reinit or purify.")
    parser.add_argument("--finetune-epochs", type=float, default=0.0,
                        help="Epochs of the clean fine-tune after purification (default 0: none).")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Fine-tune learning rate (default 2e-5 full model, 2e-4 adapter).")
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
        if name == "fine-mixing":
            parts.append(FineMixing(ratio=args.ratio, mask=args.mask, scope=args.scope, head=args.head, seed=args.seed))
        elif name == "fine-purifying":
            parts.append(FinePurifying(ratio=args.ratio, scope=args.scope, head=args.head,
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


def run(args: argparse.Namespace) -> int:
    from ..purification.base import check_ratio

    check_ratio(args.ratio, "--ratio")
    if args.num_clean is not None and args.num_clean < 1:
        raise ValueError(f"--num-clean must be >= 1, got {args.num_clean}.")
    out = check_output(args.output, [args.suspect, args.pretrained, args.clean_data], args.overwrite)

    import torch

    from ..data import load_text_classification
    from ..purification.adapters import is_adapter_dir
    from ..purification.pipeline import load_suspect, run_purification, write_purified

    torch.manual_seed(args.seed)
    splits = load_text_classification(args.clean_data)
    if args.clean_split not in splits:
        raise ValueError(f"--clean-split {args.clean_split!r} not in {list(splits)}.")
    clean = splits[args.clean_split]
    if args.num_clean is not None:
        clean = clean.select(range(min(args.num_clean, len(clean))))
    if len(clean) == 0:
        raise ValueError("--clean-data: the clean set is empty.")
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
            num_train_epochs=args.finetune_epochs, learning_rate=lr, per_device_train_batch_size=args.batch_size,
            max_length=args.max_length, seed=args.seed)
    try:
        result = run_purification(bundle, build_purifier(args), clean, finetune_args=finetune)
    finally:
        if finetune is not None:
            shutil.rmtree(finetune.output_dir, ignore_errors=True)
    report = result.report
    report["inputs"] = {"suspect": str(args.suspect), "pretrained": args.pretrained, "clean_data": args.clean_data,
                        "clean_split": args.clean_split, "num_clean": len(clean)}
    write_purified(out, result, bundle, dataset=args.clean_data)
    print(f"Purified model written to {out} ({report['method']}, "
          f"{report.get('dims_reset_total', 0)} dimensions reset).")
    return 0
