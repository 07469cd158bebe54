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
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

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


def _local(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return p.resolve() if p.exists() else None


def check_output(output: str, inputs: list[str | None], overwrite: bool) -> Path:
    """Resolve ``output``; refuse input folders (either way nested), ancestors of input files, and non-empty
    folders without ``overwrite``."""
    out = Path(output).expanduser().resolve()
    for raw in inputs:
        src = _local(raw)
        if src is None:
            continue
        # A folder input may not be, contain or lie inside the output; a file input may not lie inside it.
        clash = out == src or out in src.parents or (src.is_dir() and src in out.parents)
        if clash:
            raise ValueError(f"--output {out} overlaps the input {src}: choose a folder outside every input.")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--output {out} exists and is not a folder.")
        if any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"--output {out} is not empty; pass --overwrite to replace it.")
    return out


def _load(args: argparse.Namespace, num_labels: int) -> tuple[Any, Any, Any, list[str]]:
    """(suspect, reference, tokenizer, head names) from the command-line paths."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..purification.adapters import is_adapter_dir, load_adapter_suspect

    suspect_dir = Path(args.suspect)
    if not suspect_dir.is_dir():
        raise FileNotFoundError(f"--suspect {suspect_dir} is not a folder.")
    if is_adapter_dir(suspect_dir):
        suspect = load_adapter_suspect(suspect_dir, args.pretrained, num_labels=num_labels,
                                       load_in_4bit=args.load_in_4bit)
        tok_source = suspect_dir if (suspect_dir / "tokenizer_config.json").is_file() else (
            args.pretrained or suspect.peft_config[suspect.active_adapter].base_model_name_or_path)
        return suspect, None, AutoTokenizer.from_pretrained(str(tok_source)), []
    if not args.pretrained:
        raise ValueError("--pretrained is required for a full model: the checkpoint the suspect was fine-tuned from.")
    suspect = AutoModelForSequenceClassification.from_pretrained(str(suspect_dir), trust_remote_code=False)
    reference, info = AutoModelForSequenceClassification.from_pretrained(
        args.pretrained, num_labels=suspect.config.num_labels, trust_remote_code=False, output_loading_info=True)
    # Parameters the pre-trained checkpoint lacks were freshly initialised: treat them as head.
    head = sorted(set(info.get("missing_keys", [])))
    tok_source = suspect_dir if (suspect_dir / "tokenizer_config.json").is_file() else args.pretrained
    return suspect, reference, AutoTokenizer.from_pretrained(str(tok_source)), head


def run(args: argparse.Namespace) -> int:
    from ..purification.base import check_ratio

    check_ratio(args.ratio, "--ratio")
    if args.num_clean is not None and args.num_clean < 1:
        raise ValueError(f"--num-clean must be >= 1, got {args.num_clean}.")
    out = check_output(args.output, [args.suspect, args.pretrained, args.clean_data], args.overwrite)

    import torch

    from ..data import load_text_classification

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

    suspect, reference, tokenizer, head = _load(args, num_labels)
    purifier = build_purifier(args)
    if head:
        for p in getattr(purifier, "purifiers", (purifier,)):
            p.head_names = tuple(head)
    result = purifier.purify(suspect, reference, clean, tokenizer=tokenizer)
    report = result.report
    report["inputs"] = {"suspect": str(args.suspect), "pretrained": args.pretrained, "clean_data": args.clean_data,
                        "clean_split": args.clean_split, "num_clean": len(clean)}
    if args.finetune_epochs > 0:
        from ..trainers.purification import PurificationTrainingArguments, finetune_clean

        adapter = reference is None
        lr = args.learning_rate if args.learning_rate is not None else (2e-4 if adapter else 2e-5)
        with tempfile.TemporaryDirectory(prefix="hbd-purify-ft-") as scratch:
            ft_args = PurificationTrainingArguments(
                output_dir=scratch, num_train_epochs=args.finetune_epochs, learning_rate=lr,
                per_device_train_batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
            if adapter:  # only the adapter (and its head copy) trains
                prefix = result.model.base_model.prefix
                active = result.model.active_adapter
                for name, param in result.model.named_parameters():
                    parts = name.split(".")
                    in_adapter = active in parts and any(p.startswith(prefix) for p in parts)
                    param.requires_grad_(in_adapter or f"modules_to_save.{active}." in name)
            finetune_clean(result.model, clean, tokenizer, ft_args)
        report["finetune"] = {"epochs": args.finetune_epochs, "learning_rate": lr, "batch_size": args.batch_size}
    _write(result.model, tokenizer, report, out, args)
    print(f"Purified model written to {out} ({report['method']}, "
          f"{report.get('dims_reset_total', 0)} dimensions reset).")
    return 0


def _write(model: Any, tokenizer: Any, report: dict, out: Path, args: argparse.Namespace) -> None:
    from ..purification.adapters import save_purified

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_purified(model, tmp, tokenizer, report)
        _card(tmp, model, report, args)
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            backup.rmdir()
            out.rename(backup)
            tmp.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _card(folder: Path, model: Any, report: dict, args: argparse.Namespace) -> None:
    peft_type = task_type = None
    base = args.pretrained
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        cfg = next(iter(peft_config.values()))
        peft_type = str(getattr(cfg.peft_type, "value", cfg.peft_type))
        task_type = str(getattr(cfg.task_type, "value", cfg.task_type))
        base = base or cfg.base_model_name_or_path
    try:
        from ..hub import write_model_card
    except ImportError:  # pragma: no cover (hub module absent)
        (folder / "README.md").write_text(f"# Purified model\n\nMethod: {report['method']}\n\n```json\n"
                                          f"{json.dumps(report.get('config', {}), indent=2, default=str)}\n```\n")
        return
    metrics = {"ratio": report.get("ratio"), "dims_reset": report.get("dims_reset_total")}
    write_model_card(folder, base_model=base, peft_type=peft_type, task_type=task_type,
                     defense=report["method"].split("+")[-1], metrics={k: v for k, v in metrics.items() if v is not None},
                     dataset=args.clean_data, extra_tags=["purification", *report["method"].split("+")])
