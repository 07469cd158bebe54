"""``hbd push``: upload a saved adapter folder to the Hub with the project's model card
(``library_name: peft``, base model, tags, the defense and its CACC/ASR from a recipe's ``results.json``).

Only safetensors weights, JSON configs, tokenizer files and text files are uploaded; pickles such as
``training_args.bin`` are left out.

Example:
    $ hbd push --adapter outputs/demo-musclelora/defense --repo-id me/smollm2-musclelora \\
        --results outputs/demo-musclelora/results.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

#: File suffixes uploaded from the adapter folder (no pickled files).
UPLOAD_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".md")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="Upload an adapter folder to the Hugging Face Hub with a correct model card.",
        description="Upload a PEFT adapter folder (adapter_config.json + safetensors) with a model card that "
                    "names the defense and its CACC/ASR.",
    )
    parser.add_argument("--adapter", required=True, help="Adapter folder (with adapter_config.json).")
    parser.add_argument("--repo-id", required=True, help="Target repository, e.g. me/clean-adapter.")
    parser.add_argument("--results", default=None, help="results.json of the recipe run (CACC/ASR for the card).")
    parser.add_argument("--defense", default=None,
                        help="Defense named in the card (default: musclelora for MuScleLoRA adapters).")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in token).")
    parser.add_argument("--commit-message", default="Upload adapter with hf-backdoor-defense")
    parser.set_defaults(func=run)


def metrics_from_results(results: dict, adapter: Path) -> tuple[dict, dict]:
    """``(metrics, context)`` for the card from a recipe ``results.json``: the run saved in ``adapter`` (or the
    last run), its ``cacc``/``asr``, and the attack / dataset of the launch."""
    runs = results.get("runs")
    run = results
    if isinstance(runs, list) and runs:
        matching = [r for r in runs if r.get("output_dir") and Path(r["output_dir"]).resolve() == adapter.resolve()]
        run = matching[0] if matching else runs[-1]
    metrics = {k: run[k] for k in ("cacc", "asr") if k in run}
    attack = results.get("attack")
    if isinstance(attack, dict):
        attack = attack.get("attack")
    context = {"attack": str(attack).lower() if attack else None, "dataset": results.get("dataset")}
    return metrics, context


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import HfApi

    from ..hub import _is_offline, write_model_card

    adapter = Path(args.adapter)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--adapter {adapter}: no adapter_config.json (save the adapter there first).")
    if not any(adapter.glob("*.safetensors")):
        raise FileNotFoundError(f"--adapter {adapter}: no .safetensors weights to upload.")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    metrics, context = {}, {"attack": None, "dataset": None}
    if args.results is not None:
        results_file = Path(args.results)
        if not results_file.is_file():
            raise FileNotFoundError(f"--results {results_file}: no such file.")
        metrics, context = metrics_from_results(json.loads(results_file.read_text(encoding="utf-8")), adapter)
    if _is_offline():
        raise ValueError(f"cannot push to {args.repo_id!r}: HF_HUB_OFFLINE is set; unset it to upload.")
    peft_type = config.get("peft_type")
    defense = args.defense or ("musclelora" if str(peft_type).upper() == "MUSCLELORA" else None)
    api = HfApi(token=args.token)
    with tempfile.TemporaryDirectory(prefix="hbd-push-") as folder:
        for item in adapter.iterdir():
            if item.is_file() and item.suffix in UPLOAD_SUFFIXES and item.name != "README.md":
                shutil.copy2(item, Path(folder) / item.name)
        write_model_card(folder, base_model=config.get("base_model_name_or_path"), repo_id=args.repo_id,
                         peft_type=peft_type, task_type=config.get("task_type"), defense=defense,
                         metrics=metrics or None, **context)
        api.create_repo(repo_id=args.repo_id, private=args.private or None, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=args.repo_id, folder_path=folder, commit_message=args.commit_message,
                                 repo_type="model")
    print(f"pushed {adapter} to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0
