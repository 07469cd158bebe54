"""``hbd scan``: is this model or adapter backdoored? Exit code 0 clean, 1 suspicious, 2 error.

Example:
    $ hbd scan --suspect ./downloaded-adapter --clean-data clean.csv --json scan.json
    $ hbd scan --suspect ./classifier --base bert-base-uncased --clean-data rotten_tomatoes --clean-split validation
"""

from __future__ import annotations

import argparse
import sys

from ..atomic import write_json_atomic
from .arguments import float_or_none


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="Scan a model or adapter for a backdoor (exit 0 clean, 1 suspicious, 2 error).",
        description="Look for a token that sends clean inputs to one label, without knowing the trigger. "
                    "Exit code 0: no backdoor found; 1: suspicious; 2: error.",
    )
    parser.add_argument("--suspect", required=True, help="Full model folder, or PEFT adapter folder.")
    parser.add_argument("--base", default=None,
                        help="Full model: its pre-trained checkpoint (adds embedding-drift candidates). Adapter: "
                             "its base model (default: the adapter config's base_model_name_or_path).")
    parser.add_argument("--clean-data", required=True, help="Clean texts of the task: corpus name or local file/folder.")
    parser.add_argument("--clean-split", default="validation", help="Split of --clean-data (default 'validation').")
    parser.add_argument("--num-clean", type=int, default=128, help="Clean inputs used (default 128).")
    parser.add_argument("--threshold", type=float, default=None,
                        help="Flip rate at or above which the model is reported suspicious (default: "
                             "ScanConfig's, calibrated on the benchmark's models; docs/howto/scan.md).")
    parser.add_argument("--candidates", type=int, default=30, help="Tokens tested per label and source (default 30).")
    parser.add_argument("--top-k", type=int, default=5, help="Candidates listed (default 5).")
    parser.add_argument("--max-clean-frequency", type=float_or_none, default=None,
                        help="Candidates in more than this share of the clean texts do not count toward the score "
                             "(default: all count; no cap raised the AUC on the benchmark's models).")
    parser.add_argument("--max-length", type=int, default=128, help="Truncation length (default 128).")
    parser.add_argument("--pooling", default="cls", choices=("cls", "mean"),
                        help="Adapters: how the base classifier reads the encoder (default cls).")
    parser.add_argument("--json", default=None, help="Write the report to this JSON file.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = _scan(args)
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        print(f"hbd scan: error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json:
        write_json_atomic(args.json, {"suspect": args.suspect, "base": args.base, "clean_data": args.clean_data,
                                      "clean_split": args.clean_split, **report.to_dict()})
    return 1 if report.suspicious else 0


def _scan(args: argparse.Namespace):
    from pathlib import Path

    from datasets import ClassLabel

    from ..data import load_text_classification
    from ..scan import ScanConfig, scan_model
    from .evaluate import load_classifier

    threshold = {} if args.threshold is None else {"threshold": args.threshold}
    config = ScanConfig(num_inputs=args.num_clean, candidates=args.candidates, top_k=args.top_k,
                        max_length=args.max_length, max_clean_frequency=args.max_clean_frequency,
                        show_progress=not args.no_progress, **threshold)
    splits = load_text_classification(args.clean_data)
    if args.clean_split not in splits:
        raise ValueError(f"--clean-split {args.clean_split!r} is not a split of --clean-data: {list(splits)}.")
    clean = splits[args.clean_split]
    if len(clean) == 0:
        raise ValueError("--clean-data: the clean split is empty.")
    feature = clean.features.get("label")
    num_labels = feature.num_classes if isinstance(feature, ClassLabel) else len(set(clean["label"]))
    is_adapter = (Path(args.suspect) / "adapter_config.json").is_file()
    model, tokenizer = load_classifier(args.suspect, num_labels, pooling=args.pooling,
                                       base=args.base if is_adapter else None)
    reference = None
    if args.base and not is_adapter:
        from ..models import is_mean_pooled, load_sequence_classifier

        reference = load_sequence_classifier(args.base, pooling="mean" if is_mean_pooled(model.config) else "cls",
                                             num_labels=model.config.num_labels)
        if reference.config.model_type != model.config.model_type:
            raise ValueError(f"--base is a {reference.config.model_type!r} model but the suspect is a "
                             f"{model.config.model_type!r}: pass the checkpoint the suspect was fine-tuned from.")
    return scan_model(model, tokenizer, clean, reference=reference, config=config)
