"""``hbd evaluate``: CACC and ASR of a classifier (full model folder or PEFT adapter folder).

Example:
    $ hbd evaluate --model ./model --dataset rotten_tomatoes --attack badnets --json scores.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..atomic import write_json_atomic
from .poison import add_attack_arguments, build_attack, load_splits


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Clean accuracy (CACC) and attack success rate (ASR) of a classifier.",
        description="Evaluate a sequence classifier (model or PEFT adapter folder) against an attack.",
    )
    parser.add_argument(
        "--model", required=True, help="Model folder, or PEFT adapter folder (adapter_config.json)."
    )
    parser.add_argument(
        "--dataset", required=True, help="Corpus name, local file/folder, or a `hbd poison` output."
    )
    parser.add_argument("--split", default="test", help="Clean split to evaluate on (default 'test').")
    add_attack_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32, help="Prediction batch size (default 32).")
    parser.add_argument("--max-length", type=int, default=128, help="Truncation length (default 128).")
    parser.add_argument("--json", default=None, help="Also write the scores to this JSON file.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--pooling", default="cls", choices=("cls", "mean"),
                        help="Adapters: how the base classifier reads the encoder, as when the adapter was trained "
                             "(default cls; mean for a mean-pooled encoder). Full models: read from their config.")
    parser.set_defaults(func=run)


def load_classifier(path: str | os.PathLike, num_labels: int, pooling: str = "cls", base: str | None = None):
    """(model, tokenizer) from a full model folder or a PEFT adapter folder; local files only.

    A full model is loaded as it was saved (mean-pooled or [CLS]); an adapter's base is built with ``pooling``,
    from ``base`` when given, else from the adapter config's ``base_model_name_or_path``.
    """
    from transformers import AutoTokenizer

    import hf_backdoor_defense  # noqa: F401  (registers the MuScleLoRA adapter type with PEFT)

    from ..models import load_sequence_classifier

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder} is not a folder.")
    if (folder / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(str(folder))
        base_path = base or config.base_model_name_or_path
        if not base_path:
            raise ValueError(f"{folder / 'adapter_config.json'} has no `base_model_name_or_path`; set it.")
        try:
            base = load_sequence_classifier(base_path, pooling=pooling, num_labels=num_labels)
        except OSError as err:
            first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise FileNotFoundError(
                f"cannot load the adapter's base model {base_path!r}: {first_line}"
            ) from err
        model = PeftModel.from_pretrained(base, str(folder))
        tokenizer_path = folder if (folder / "tokenizer_config.json").is_file() else base_path
    else:
        model = load_sequence_classifier(str(folder))  # mean-pooled or [CLS], as it was saved
        tokenizer_path = folder
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def run(args: argparse.Namespace) -> int:
    from datasets import ClassLabel

    from ..metrics import evaluate_backdoor

    attack = build_attack(args)
    splits = load_splits(args.dataset, args.text_column, args.label_column)
    if args.split not in splits:
        raise ValueError(f"dataset {args.dataset!r} has no {args.split!r} split (splits: {list(splits)}).")
    test = splits[args.split]
    if "is_poisoned" in test.column_names:
        raise ValueError(f"split {args.split!r} is poisoned; evaluate on a clean split such as 'test'.")
    feature = test.features.get("label")
    num_labels = feature.num_classes if isinstance(feature, ClassLabel) else len(set(test["label"]))
    model, tokenizer = load_classifier(args.model, num_labels, pooling=args.pooling)
    scores = evaluate_backdoor(
        model,
        tokenizer,
        test,
        attack,
        batch_size=args.batch_size,
        max_length=args.max_length,
        disable_progress_bar=args.no_progress,
    )
    rows = [
        ("metric", "value", "n"),
        ("CACC", f"{100 * scores['cacc']:.2f}", str(scores["n_clean"])),
        ("ASR", f"{100 * scores['asr']:.2f}", str(scores["n_triggered"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if args.json:
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **scores,
            "model": str(args.model),
            "dataset": args.dataset,
            "split": args.split,
            **attack.to_dict(),
        }
        write_json_atomic(target, payload)
    return 0
