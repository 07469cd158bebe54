"""What `fine_purifying.py` and `fine_mixing.py` share: the arguments of a purification run and its main loop.

A run purifies a *suspect* (a full fine-tuned classifier or a PEFT adapter folder, ``--model_name_or_path``)
against its clean pre-trained base θ₀ (``--base_model_name_or_path``) with a small clean set drawn from
``--reference_split`` (``--clean_samples`` examples; the ratio search, if asked, uses the next
``--dev_samples`` examples of the same split as its dev set), fine-tunes the purified model on the clean set
(the `TrainingArguments`: ``--num_train_epochs`` / ``--max_steps``, ``--learning_rate``, ...), measures CACC /
ASR of the suspect and of the purified model on ``--eval_split`` with the triggered copy made by ``--attack``,
and writes into ``--output_dir``: the purified model (safetensors), its tokenizer, ``purification_report.json``,
a model card and ``results.json``. The folder is built in a hidden sibling and renamed into place; an existing
non-empty ``--output_dir`` is refused unless ``--overwrite_output_dir``.

``--poison_first true`` makes the run self-contained (and offline): the suspect is first trained here on the
poisoned training split (``--poison_finetune full`` fine-tunes the whole base, ``adapter`` trains a
``--peft_type`` adapter), saved under ``<output_dir>/suspect`` and then purified like a downloaded one.

Quantised bases (``--load_in_4bit`` / ``--load_in_8bit``): the purifiers reset weights to θ₀, which quantised
weights cannot hold, so quantisation is accepted only when the suspect is a PEFT adapter (the adapter factors
and its head copy stay in full precision and are what gets purified and fine-tuned; the 4-bit base is frozen).
A full fine-tuned suspect must be loaded in fp32 / bf16 and is refused with ``--load_in_4bit``.

The purification recipes run in one process (a single GPU or the CPU): the purifiers need every weight of the
suspect and of θ₀ in that process, and the clean set is small. DeepSpeed, FSDP and multi-process launches are
refused with one line before anything is loaded.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_backdoor_defense.atomic import write_json_atomic
from hf_backdoor_defense.launch import launch_backend
from hf_backdoor_defense.options import HEAD_MODES
from hf_backdoor_defense.scripts.data import build_classification_data
from hf_backdoor_defense.scripts.loading import (
    build_peft_config,
    compute_dtype,
    load_model_and_tokenizer,
    load_tokenizer,
    quantization_config,
    resolve_model_path,
)
from hf_backdoor_defense.scripts.outputs import RESULTS_FILE, launch_record
from hf_backdoor_defense.scripts.utils import (
    ModelArguments,
    ScriptArguments,
    check_recipe_output_dir,
    convert_training_arguments,
    parse_args,
    script_parser,
)

POISON_FINETUNES = ("full", "adapter")
#: Errors the recipes report in one line with exit code 2 (``HBD_DEBUG=1`` shows the traceback).


@dataclass
class PurifyModelArguments(ModelArguments):
    r"""[`ModelArguments`] for purification: the suspect, its pre-trained base and how to load them.

    Args:
        model_name_or_path (`str` or `None`, defaults to `None`):
            The suspect: a local folder holding a full fine-tuned sequence classifier or a PEFT adapter
            (`adapter_config.json`). Leave it unset with `--poison_first true`.
        base_model_name_or_path (`str` or `None`, defaults to `None`):
            The clean pre-trained checkpoint θ₀ the suspect was fine-tuned from (Hub id, folder, or `"minilm"` /
            `"smollm2"` for the offline models). Required for full models and `--poison_first`; for an adapter
            it defaults to the adapter config's `base_model_name_or_path`.
        peft_type (`str`, defaults to `"lora"`):
            `--poison_first` with `--poison_finetune adapter` only: the adapter the suspect is trained with.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The suspect: a full fine-tuned classifier folder or a PEFT adapter folder."},
    )
    base_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Clean pre-trained base (theta_0): Hub id, folder, 'minilm' or 'smollm2'."},
    )
    peft_type: str = field(
        default="lora",
        metadata={"help": "--poison_first adapter: adapter type of the suspect.", "choices": ["lora", "musclelora"]},
    )


@dataclass
class PurificationArguments:
    r"""The clean data, the ratio search, and the optional in-recipe suspect of a purification run.

    Parameters that control the clean data:

    Args:
        clean_samples (`int`, defaults to `256`):
            Size of the trusted clean set, drawn (seeded) from `--reference_split`. It estimates the Hessian
            (Fine-purifying), the token frequencies (E-PUR) and is the purification fine-tune's training set.
        dev_samples (`int`, defaults to `256`):
            Size of the clean dev set of the ratio search: the next examples of `--reference_split`, disjoint
            from the clean set. Unused without `--ratio_search`.

    Parameters that control the ratio:

    Args:
        ratio_search (`bool`, defaults to `True`):
            Choose the ratio among `--ratios`: each candidate is purified and fine-tuned, and the most aggressive
            one whose dev accuracy stays within `--budget` of the suspect's is kept. Never uses the test split.
            `--ratio_search false` purifies at `--ratio`.
        ratios (`list[float]`, defaults to `[0.1, 0.3, 0.5, 0.7, 0.9]`):
            Candidate ratios of the search.
        budget (`float`, defaults to `0.02`):
            Allowed dev-accuracy drop of the search (0.02 = two points).
        head (`str`, defaults to `"keep"`):
            The classifier head has no pre-trained value: `"keep"` it, `"reinit"` it (take θ₀'s fresh head) or
            `"purify"` it like the other weights.

    Parameters that control `--poison_first` (train the suspect here, for offline end-to-end runs):

    Args:
        poison_first (`bool`, defaults to `False`):
            Train the backdoored suspect on the poisoned training split before purifying it.
        poison_finetune (`str`, defaults to `"full"`):
            `"full"` fine-tunes the whole base; `"adapter"` trains a `--peft_type` adapter (a quantised base is
            allowed then).
        poison_epochs (`float`, defaults to `3.0`):
            Epochs of the suspect's training.
        poison_max_steps (`int`, defaults to `-1`):
            If > 0, the number of optimizer steps of the suspect's training (overrides `poison_epochs`).
        poison_learning_rate (`float` or `None`, defaults to `None`):
            Learning rate of the suspect's training; `None`: 5e-5 (full) or 5e-4 (adapter).
        poison_batch_size (`int`, defaults to `16`):
            Batch size of the suspect's training.
    """

    clean_samples: int = field(default=256, metadata={"help": "Size of the trusted clean set (from reference_split)."})
    dev_samples: int = field(
        default=256, metadata={"help": "Ratio search: size of the clean dev set (disjoint from the clean set)."}
    )
    ratio_search: bool = field(
        default=True, metadata={"help": "Choose the ratio on the dev set under the --budget accuracy drop "
                                        "(false: purify at --ratio)."}
    )
    ratios: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9], metadata={"help": "Candidate ratios of the search."}
    )
    budget: float = field(default=0.02, metadata={"help": "Ratio search: allowed dev-accuracy drop (0.02 = 2 points)."})
    head: str = field(
        default="keep",
        metadata={"help": "Classifier head (no pre-trained value): keep, reinit or purify.", "choices": list(HEAD_MODES)},
    )
    poison_first: bool = field(
        default=False, metadata={"help": "Train the backdoored suspect on the poisoned training split first."}
    )
    poison_finetune: str = field(
        default="full",
        metadata={"help": "--poison_first: 'full' fine-tune or 'adapter'.", "choices": list(POISON_FINETUNES)},
    )
    poison_epochs: float = field(default=3.0, metadata={"help": "--poison_first: epochs of the suspect's training."})
    poison_max_steps: int = field(
        default=-1, metadata={"help": "--poison_first: optimizer steps (> 0 overrides poison_epochs)."}
    )
    poison_learning_rate: float | None = field(
        default=None, metadata={"help": "--poison_first: learning rate; None = 5e-5 (full) or 5e-4 (adapter)."}
    )
    poison_batch_size: int = field(default=16, metadata={"help": "--poison_first: batch size."})

    def __post_init__(self) -> None:
        for name in ("clean_samples", "dev_samples", "poison_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"budget must be a fraction in [0, 1] (0.02 = two points), got {self.budget}.")
        if not self.ratios:
            raise ValueError("ratios is empty: give at least one candidate ratio.")
        bad = [r for r in self.ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"ratios must lie in [0, 1] (fractions of dimensions reset), got {bad}.")
        if self.head not in HEAD_MODES:
            raise ValueError(f"head={self.head!r} is unknown: use one of {HEAD_MODES}.")
        if self.poison_finetune not in POISON_FINETUNES:
            raise ValueError(f"poison_finetune={self.poison_finetune!r} is unknown: use one of {POISON_FINETUNES}.")
        if self.poison_epochs <= 0 and self.poison_max_steps <= 0:
            raise ValueError("poison_epochs and poison_max_steps are both <= 0: the suspect would not be trained.")


# ---------------------------------------------------------------------------------------------- checks
def check_single_process() -> None:
    """Refuse DeepSpeed, FSDP and multi-process launches before anything is loaded."""
    backend = launch_backend()
    if backend != "ddp/single":
        raise ValueError(
            f"the purification recipes cannot run under {backend}: the purifiers need every weight of the suspect "
            "and of the pre-trained model in one process. Launch with accelerate_configs/single_gpu.yaml or "
            "plain `python`."
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "the purification recipes run in one process (the purifiers work on whole weights and the clean set "
            "is small): launch with `accelerate launch --num_processes 1` or plain `python`."
        )


def _local_path(name: str | None) -> str | None:
    return None if name is None else resolve_model_path(name)


def window_tokenizer(model_args, purify_args):
    """The tokenizer whose window ``--trigger_room`` cuts the texts to: ``--tokenizer_name_or_path``, else the
    suspect folder's own tokenizer, else the clean base's; ``None`` when none of them is known."""
    candidates = [model_args.tokenizer_name_or_path]
    if not purify_args.poison_first and model_args.model_name_or_path is not None:
        suspect = Path(model_args.model_name_or_path).expanduser()
        if (suspect / "tokenizer_config.json").is_file():
            candidates.append(str(suspect))
    candidates.append(model_args.base_model_name_or_path)
    if not purify_args.poison_first and model_args.model_name_or_path is not None:
        config = Path(model_args.model_name_or_path).expanduser() / "adapter_config.json"
        if config.is_file():  # an adapter: its config names the base it was trained on
            candidates.append(json.loads(config.read_text()).get("base_model_name_or_path"))
    path = next((c for c in candidates if c), None)
    if path is None:
        return None
    source = copy.copy(model_args)
    source.tokenizer_name_or_path, source.model_name_or_path = None, path
    return load_tokenizer(source)


def check_arguments(script_args, model_args, purify_args, training_args, *, needs_full_model: bool = False) -> None:
    """Consistency checks across the argument groups; each error names the field and the fix."""
    from hf_backdoor_defense.purification.adapters import is_adapter_dir

    if script_args.task != "classification":
        raise ValueError(f"task={script_args.task!r}: the purification recipes purify sequence classifiers; "
                         "use --task classification.")
    if script_args.compare_with_baseline:
        raise ValueError("compare_with_baseline does not apply to purification: the results already compare "
                         "the suspect with the purified model.")
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if purify_args.poison_first:
        if model_args.model_name_or_path is not None:
            raise ValueError("model_name_or_path (a suspect) and poison_first=true exclude each other: drop one "
                             "(--poison_first trains the suspect itself).")
        if not model_args.base_model_name_or_path:
            raise ValueError("poison_first=true needs --base_model_name_or_path: the clean base the suspect is "
                             "trained from.")
        adapter = purify_args.poison_finetune == "adapter"
        if quantized and not adapter:
            raise ValueError(f"{flag} with poison_finetune='full': a full fine-tuned suspect cannot be purified "
                             "in 4-bit/8-bit (its weights are reset to the pre-trained values); use "
                             "--poison_finetune adapter, or drop the quantisation flag.")
    else:
        if model_args.model_name_or_path is None:
            raise ValueError("model_name_or_path is not set: pass the suspect folder (full model or PEFT adapter), "
                             "or --poison_first true to train one here.")
        suspect = Path(model_args.model_name_or_path).expanduser()
        if not suspect.is_dir():
            raise FileNotFoundError(f"model_name_or_path={model_args.model_name_or_path}: not a local folder; "
                                    "download the suspect first (e.g. `hf download ID --local-dir DIR`).")
        adapter = is_adapter_dir(suspect)
        if not adapter and not model_args.base_model_name_or_path:
            raise ValueError("base_model_name_or_path is required for a full fine-tuned suspect: the pre-trained "
                             "checkpoint it was fine-tuned from.")
        if quantized and not adapter:
            raise ValueError(f"{flag}: {suspect} is a full fine-tuned model, whose weights the purifiers reset "
                             "to the pre-trained values; quantised weights cannot hold them. Load it in "
                             "fp32/bf16 (drop the flag) or purify a PEFT adapter.")
    if needs_full_model and adapter:
        raise ValueError("epur=true resets input-embedding rows, which a PEFT adapter does not change: use it "
                         "on a full fine-tuned suspect (or set --epur false).")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the repository to create, e.g. me/my-model).")
    inputs = [model_args.model_name_or_path, _local_path(model_args.base_model_name_or_path), script_args.dataset]
    check_recipe_output_dir(script_args, training_args, inputs)


def make_parser(method_arguments_class, name: str, help: str, subparsers=None):
    """The `trl.TrlParser` of a purification script whose own options are ``method_arguments_class``."""
    from transformers import TrainingArguments

    return script_parser(
        (ScriptArguments, PurifyModelArguments, PurificationArguments, method_arguments_class, TrainingArguments),
        name, help, subparsers,
    )


def parse(argv, method_arguments_class):
    """``(script_args, model_args, purify_args, method_args, training_args)``; refuses unsupported launches
    first. On a machine without CUDA ``--use_cpu true`` is implied."""
    check_single_process()
    return parse_args(make_parser(method_arguments_class, "purify", "Purify a suspect model."), argv)


# ---------------------------------------------------------------------------------------------- steps
def clean_and_dev(reference, purify_args, seed: int):
    """The clean set (first ``clean_samples`` of the shuffled reference split) and the dev set (the next
    ``dev_samples``; ``None`` without the ratio search)."""
    pool = reference.shuffle(seed=seed)
    n_clean = min(purify_args.clean_samples, len(pool))
    clean = pool.select(range(n_clean))
    if not purify_args.ratio_search:
        return clean, None
    n_dev = min(purify_args.dev_samples, len(pool) - n_clean)
    if n_dev < 1:
        raise ValueError(f"ratio_search: the reference split has {len(pool)} examples, all used by clean_samples="
                         f"{purify_args.clean_samples}; lower clean_samples to leave a dev set, or pass "
                         "--ratio_search false to purify at --ratio.")
    return clean, pool.select(range(n_clean, n_clean + n_dev))


def train_suspect(folder: Path, data, label_names, script_args, model_args, purify_args, training_args) -> dict:
    """``--poison_first``: train the backdoored suspect on ``data["train"]`` and save it (with its tokenizer)
    into ``folder``; returns a summary for results.json."""
    from peft import get_peft_model

    from hf_backdoor_defense.trainers.purification import PurificationTrainingArguments, finetune_clean

    adapter = purify_args.poison_finetune == "adapter"
    base_args = copy.copy(model_args)
    base_args.model_name_or_path = model_args.base_model_name_or_path
    model, tokenizer = load_model_and_tokenizer(base_args, "classification", num_labels=len(label_names),
                                                label_names=label_names)
    if adapter:
        model = get_peft_model(model, build_peft_config(base_args, model, "classification"))
    lr = purify_args.poison_learning_rate or (5e-4 if adapter else 5e-5)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hbd-poison-") as scratch:
        # A plain Trainer run on the poisoned text set (the clean-fine-tune trainer tokenises it the same way).
        args = convert_training_arguments(
            training_args, PurificationTrainingArguments, output_dir=scratch, num_train_epochs=purify_args.poison_epochs,
            max_steps=purify_args.poison_max_steps, learning_rate=lr,
            per_device_train_batch_size=purify_args.poison_batch_size, gradient_accumulation_steps=1,
            max_length=script_args.max_length, save_strategy="no", push_to_hub=False, report_to="none",
        )
        finetune_clean(model, data["train"], tokenizer, args)
    seconds = time.perf_counter() - start
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    del model
    gc.collect()
    return {"poison_finetune": purify_args.poison_finetune, "peft_type": model_args.peft_type if adapter else None,
            "learning_rate": lr, "epochs": purify_args.poison_epochs, "max_steps": purify_args.poison_max_steps,
            "n_train": len(data["train"]), "n_poisoned": int(sum(data["train"]["is_poisoned"])),
            "train_seconds": round(seconds, 2), "folder": "suspect"}


def _scores(model, tokenizer, test, attack, script_args) -> dict:
    from hf_backdoor_defense.metrics import evaluate_backdoor

    return evaluate_backdoor(model, tokenizer, test, attack, batch_size=script_args.eval_batch_size,
                             max_length=script_args.max_length)


def _summary(report: dict) -> dict:
    keep = ("method", "mode", "ratio", "ratio_of", "dims_reset_total", "dims_moved", "dims_total", "finetune",
            "ratio_search")
    out = {k: report[k] for k in keep if k in report}
    tokens = report.get("tokens_reset") or []
    out["tokens_reset"] = [t.get("token") for t in tokens[:50]]
    out["n_tokens_reset"] = len(tokens)
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv, *, method_arguments_class, build_purifier: Callable[..., Any], defense: str, recipe: str,
         needs_full_model: Callable[[Any], bool] = lambda method_args: False) -> dict:
    """Run one purification recipe; returns the results dict (also written to ``results.json``).

    ``build_purifier(method_args, purify_args, script_args, training_args)`` makes the purifier; ``defense``
    names it in the model card; ``needs_full_model(method_args)`` is true when the method cannot act on an
    adapter (E-PUR).
    """
    import torch
    from transformers import set_seed

    from hf_backdoor_defense.atomic import staged_directory
    from hf_backdoor_defense.purification.pipeline import load_suspect, run_purification, save_purified_folder
    from hf_backdoor_defense.trainers.purification import PurificationTrainingArguments

    script_args, model_args, purify_args, method_args, training_args = parse(argv, method_arguments_class)
    check_arguments(script_args, model_args, purify_args, training_args,
                    needs_full_model=needs_full_model(method_args))
    purifier = build_purifier(method_args, purify_args, script_args, training_args)  # validates the options
    set_seed(training_args.seed)
    output_dir = Path(training_args.output_dir)
    data, attack = build_classification_data(script_args, training_args.seed, window_tokenizer(model_args, purify_args))
    label_names = data["train"].features["label"].names
    clean, dev = clean_and_dev(data["reference"], purify_args, training_args.seed)
    base = _local_path(model_args.base_model_name_or_path)
    results: dict[str, Any] = {
        **launch_record(recipe, script_args, model_args, attack),
        "defense": defense,
        "suspect": model_args.model_name_or_path,
        "base_model_name_or_path": model_args.base_model_name_or_path,
        "reference_split": script_args.reference_split,
        "n_clean": len(clean),
        "n_dev": len(dev) if dev is not None else 0,
        "n_test": len(data["test"]),
        "timings": {},
    }
    with staged_directory(output_dir) as folder:
        suspect_path = model_args.model_name_or_path
        if purify_args.poison_first:
            set_seed(training_args.seed)
            results["poison_first"] = train_suspect(folder / "suspect", data, label_names, script_args, model_args,
                                                    purify_args, training_args)
            results["suspect"] = str(output_dir / "suspect")
            suspect_path = folder / "suspect"
        start = time.perf_counter()
        bundle = load_suspect(suspect_path, base, num_labels=len(label_names),
                              quantization_config=quantization_config(model_args),
                              dtype=compute_dtype(model_args), trust_remote_code=model_args.trust_remote_code)
        results["suspect_type"] = "adapter" if bundle.is_adapter else "full"
        if torch.cuda.is_available() and not bundle.is_adapter:
            bundle.model.to("cuda")  # θ₀ stays on the CPU: the purifiers read it one tensor at a time
        results["suspect_metrics"] = _scores(bundle.model, bundle.tokenizer, data["test"], attack, script_args)
        print(f"[suspect] CACC {100 * results['suspect_metrics']['cacc']:.1f}%  "
              f"ASR {100 * results['suspect_metrics']['asr']:.1f}%", flush=True)
        with tempfile.TemporaryDirectory(prefix="hbd-purify-ft-") as scratch:
            finetune = convert_training_arguments(
                training_args, PurificationTrainingArguments, output_dir=scratch, max_length=script_args.max_length,
                save_strategy="no", push_to_hub=False, report_to="none",
            )
            set_seed(training_args.seed)
            result = run_purification(bundle, purifier, clean, finetune_args=finetune, dev=dev,
                                      ratios=purify_args.ratios if purify_args.ratio_search else None,
                                      budget=purify_args.budget)
        results["timings"]["purify_and_finetune_s"] = round(time.perf_counter() - start, 2)
        result.report["inputs"] = {"suspect": results["suspect"], "base_model_name_or_path": base,
                                   "dataset": script_args.dataset, "clean_split": script_args.reference_split,
                                   "num_clean": len(clean)}
        scores = _scores(result.model, bundle.tokenizer, data["test"], attack, script_args)
        results["purified_metrics"] = scores
        results["purification"] = _summary(result.report)
        print(f"[purified: {result.report['method']}] CACC {100 * scores['cacc']:.1f}%  "
              f"ASR {100 * scores['asr']:.1f}%", flush=True)
        save_purified_folder(folder, result, bundle, dataset=script_args.dataset, attack=script_args.attack,
                             metrics={"cacc": scores["cacc"], "asr": scores["asr"], "ratio": result.report.get("ratio")})
        write_json_atomic(folder / RESULTS_FILE, results)
    print(f"purified model and {RESULTS_FILE} written to {output_dir}", flush=True)
    if training_args.push_to_hub:
        results["hub"] = push_purified(result, bundle, results, script_args, training_args, defense)
        write_json_atomic(output_dir / RESULTS_FILE, results)
    return results


def push_purified(result, bundle, results, script_args, training_args, defense: str) -> dict:
    """Upload the purified model (or adapter) with the project's card: defense, base model, CACC / ASR."""
    from hf_backdoor_defense.hub import push_adapter_to_hub

    repo_id = training_args.hub_model_id
    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/bert-sst2-fine-purified).")
    metrics = {k: results["purified_metrics"][k] for k in ("cacc", "asr")}
    commit = push_adapter_to_hub(
        result.model, repo_id, defense=defense, metrics=metrics, attack=script_args.attack,
        dataset=script_args.dataset, private=training_args.hub_private_repo, token=training_args.hub_token,
        base_model=bundle.base_model, extra_tags=["purification", *str(result.report["method"]).split("+")],
    )
    return {"repo_id": repo_id, "commit": str(getattr(commit, "oid", commit))}
