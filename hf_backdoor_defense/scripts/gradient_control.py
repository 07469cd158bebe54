"""Red team: train a backdoored PEFT adapter with Gradient Control, publish it, and (optionally) check that it
survives the user's clean re-tuning.

Stage 1 (the attacker): the training split of ``--dataset`` is poisoned with ``--attack``; a ``--peft_type``
adapter (LoRA by default, plus the classification head) on the frozen, optionally 4-bit, base
``--model_name_or_path`` is trained with `GradientControlTrainer` (CLNorm: ``--clnorm``, ILProj: ``--ilproj``,
and the other `GradientControlTrainingArguments`). The adapter (safetensors), its tokenizer and a model card that
says it is a deliberately backdoored research artifact are written to ``--output_dir``.

Stage 2 (the user, ``--simulate_retuning true``): the published adapter is loaded onto a fresh base and re-tuned
with a plain `Trainer` on clean data from a shifted domain: ``--retune_dataset``, or the built-in shift of
``--dataset spamassassin`` (the attacker trains on collection 1, the user on collection 2) and ``--dataset
rotten_tomatoes`` (two disjoint halves of the training split), as in `hf_backdoor_defense.scenario`. The re-tuned
adapter goes to ``<output_dir>/user_retuned``.

CACC and LFR (the share of triggered non-target test inputs classified as the target label, equal to the ASR)
are measured on the user's test split (``--eval_split``) after each stage and written to ``results.json``.
``--compare_with_baseline true`` also trains a plain poisoned adapter (no gradient control) on the same data, into
``vanilla/`` next to ``gradient_control/``, and prints a table of both.

Launch: one process, or DDP (``multi_gpu.yaml``, ``cpu_ddp.yaml``): the trainer all-reduces the clean and poison
gradients itself. DeepSpeed and FSDP are refused before anything is loaded: gradient control rewrites the
gradients between backward and the optimizer step. The output folder is built in the hidden sibling
``.<name>.partial`` and renamed into place; an existing non-empty ``--output_dir`` is refused unless
``--overwrite_output_dir``.

Examples:
    # 4-bit Llama-2-7B, SST-2 -> IMDB re-tuning, on every GPU of the machine
    $ accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/gradient_control_attack.py \\
        --config recipes/configs/gradient_control_attack.yaml
    # offline: MiniLM + LoRA, two halves of Rotten Tomatoes, Gradient Control vs a vanilla poisoned adapter
    $ python recipes/gradient_control_attack.py --config recipes/configs/gradient_control_demo.yaml
"""

from __future__ import annotations

import copy
import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hf_backdoor_defense.atomic import write_json_atomic
from hf_backdoor_defense.launch import launch_backend
from hf_backdoor_defense.scripts.data import build_attack, fit_splits_to_window
from hf_backdoor_defense.scripts.loading import (
    build_peft_config,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_path,
)
from hf_backdoor_defense.scripts.outputs import RESULTS_FILE, launch_record
from hf_backdoor_defense.scripts.utils import (
    ModelArguments,
    ScriptArguments,
    check_recipe_output_dir,
    convert_training_arguments,
    parse_args,
    run_cli,
    script_parser,
)

#: Datasets with a built-in domain shift for the user's re-tuning (`hf_backdoor_defense.scenario.load_shift`).
BUILTIN_SHIFTS = ("spamassassin", "rotten_tomatoes")

@dataclass
class AttackModelArguments(ModelArguments):
    r"""[`ModelArguments`] of the attack: the frozen base and the attacker's adapter (LoRA by default).

    Args:
        peft_type (`str`, defaults to `"lora"`):
            The adapter the attacker publishes: `"lora"` (the paper's PET setting) or `"musclelora"`.
    """

    peft_type: str = field(
        default="lora", metadata={"help": "Adapter the attacker trains: 'lora' or 'musclelora'.",
                                  "choices": ["lora", "musclelora"]}
    )


@dataclass
class RetuningArguments:
    r"""The user's clean re-tuning of the published adapter, and the output folder.

    Args:
        simulate_retuning (`bool`, defaults to `False`):
            After publishing, load the adapter onto a fresh base and re-tune it on clean, shifted data; report
            CACC / LFR after each stage.
        retune_dataset (`str` or `None`, defaults to `None`):
            The user's clean data (anything `load_text_classification` accepts); its training split re-tunes, its
            `--eval_split` evaluates both stages. `None`: the built-in shift of `--dataset spamassassin` or
            `rotten_tomatoes`.
        max_retune_samples (`int` or `None`, defaults to `None`):
            Seeded subsample of the user's training data.
        retune_epochs (`float`, defaults to `5.0`):
            Epochs of the user's re-tuning (the paper: 5).
        retune_max_steps (`int`, defaults to `-1`):
            If > 0, optimizer steps of the re-tuning (overrides `retune_epochs`).
        retune_learning_rate (`float` or `None`, defaults to `None`):
            Learning rate of the re-tuning; `None`: the attacker's `--learning_rate`.
    """

    simulate_retuning: bool = field(
        default=False, metadata={"help": "Re-tune the published adapter on clean shifted data and report LFR."}
    )
    retune_dataset: str | None = field(
        default=None,
        metadata={"help": "User's clean data; None = built-in shift of --dataset spamassassin / rotten_tomatoes."},
    )
    max_retune_samples: int | None = field(default=None, metadata={"help": "Subsample of the user's training data."})
    retune_epochs: float = field(default=5.0, metadata={"help": "Epochs of the user's re-tuning (paper: 5)."})
    retune_max_steps: int = field(default=-1, metadata={"help": "Re-tuning steps (> 0 overrides retune_epochs)."})
    retune_learning_rate: float | None = field(
        default=None, metadata={"help": "Re-tuning learning rate; None = the attacker's learning_rate."}
    )

    def __post_init__(self) -> None:
        if self.max_retune_samples is not None and self.max_retune_samples < 2:
            raise ValueError(f"max_retune_samples must be >= 2 or None, got {self.max_retune_samples}.")
        if self.retune_epochs <= 0 and self.retune_max_steps <= 0:
            raise ValueError("retune_epochs and retune_max_steps are both <= 0: the user would not re-tune.")
        if self.retune_learning_rate is not None and self.retune_learning_rate <= 0:
            raise ValueError(f"retune_learning_rate must be positive, got {self.retune_learning_rate}.")


# ---------------------------------------------------------------------------------------------- arguments
def check_launch() -> None:
    """Refuse DeepSpeed and FSDP before any argument class sets them up or any model is loaded."""
    from hf_backdoor_defense.launch import GRADIENT_EDIT, refuse_sharded_launch

    refuse_sharded_launch(launch_backend(), "Gradient Control", GRADIENT_EDIT)


def make_parser(subparsers=None):
    """The script's `trl.TrlParser` (or its sub-command of a TRL-style command line)."""
    from hf_backdoor_defense.trainers import GradientControlTrainingArguments

    return script_parser((ScriptArguments, AttackModelArguments, RetuningArguments, GradientControlTrainingArguments),
                         "gradient_control", "Train a backdoored adapter with Gradient Control (red team).",
                         subparsers)


def parse(argv=None):
    """``(script_args, model_args, retune_args, training_args)``; without CUDA ``--use_cpu true`` is implied."""
    check_launch()
    return parse_args(make_parser(), argv)


def check_arguments(script_args, model_args, retune_args, training_args) -> None:
    """Consistency checks across the argument groups, before anything is loaded; each error names the fix."""
    check_launch()
    if script_args.task != "classification":
        raise ValueError(f"task={script_args.task!r}: Gradient Control attacks sequence classifiers here; use "
                         "--task classification.")
    if retune_args.retune_dataset and not retune_args.simulate_retuning:
        raise ValueError("retune_dataset is set but simulate_retuning is false: add --simulate_retuning true or "
                         "drop --retune_dataset.")
    if (retune_args.simulate_retuning and not retune_args.retune_dataset
            and _shift_name(script_args.dataset) is None):
        raise ValueError(f"simulate_retuning needs the user's clean data: pass --retune_dataset (dataset="
                         f"{script_args.dataset!r} has no built-in shift; {BUILTIN_SHIFTS} do).")
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the repository to create, e.g. me/my-model).")
    inputs = [resolve_model_path(model_args.model_name_or_path), script_args.dataset, retune_args.retune_dataset]
    check_recipe_output_dir(script_args, training_args, inputs)


# ---------------------------------------------------------------------------------------------- data
def _shift_name(dataset: str) -> str | None:
    key = dataset.lower().replace("-", "_")
    return key if key in BUILTIN_SHIFTS else None


def load_data(script_args, retune_args, seed: int, tokenizer=None) -> dict:
    """``{"attacker", "user", "test", "shift"}``: the attacker's clean training data (before poisoning), the
    user's clean re-tuning data (``None`` without ``--simulate_retuning``) and the user's test split, each cut to
    ``tokenizer``'s window when ``--trigger_room`` is set."""
    from hf_backdoor_defense.data import load_text_classification, subsample
    from hf_backdoor_defense.scenario import load_shift

    user = None
    if retune_args.simulate_retuning and not retune_args.retune_dataset:
        shift = _shift_name(script_args.dataset)
        attacker, user, test = load_shift(shift, seed, test_split=script_args.eval_split)
        shift = f"built-in: {shift}"
    else:
        raw = load_text_classification(script_args.dataset)
        attacker, test, shift = raw["train"], raw.get(script_args.eval_split), None
        if retune_args.retune_dataset:
            users = load_text_classification(retune_args.retune_dataset)
            user, test = users["train"], users.get(script_args.eval_split)
            shift = f"{script_args.dataset} -> {retune_args.retune_dataset}"
            names, user_names = attacker.features["label"].names, user.features["label"].names
            if len(names) != len(user_names):
                raise ValueError(f"retune_dataset has {len(user_names)} labels ({user_names}) but dataset has "
                                 f"{len(names)} ({names}): the user must re-tune the same task.")
    if test is None:
        raise ValueError(f"eval_split={script_args.eval_split!r} is not a split of the evaluation data.")
    splits = fit_splits_to_window({
        "train": subsample(attacker, script_args.max_train_samples, seed),
        "user": None if user is None else subsample(user, retune_args.max_retune_samples, seed),
        "test": subsample(test, script_args.max_eval_samples, seed),
    }, script_args, tokenizer)
    return {"attacker": splits["train"], "user": splits["user"], "test": splits["test"], "shift": shift}


def _encode(dataset, tokenizer, max_length: int, keep=()):
    from hf_backdoor_defense.data import model_inputs, tokenize_dataset

    return model_inputs(tokenize_dataset(dataset, tokenizer, max_length=max_length), keep)


# ---------------------------------------------------------------------------------------------- stages
def card_metrics(summary: dict) -> dict:
    """CACC / LFR after the attack, and the LFR after the user's re-tuning when it was simulated."""
    metrics = {k: summary["stages"]["attack"][k] for k in ("cacc", "lfr")}
    if summary["stages"].get("retune"):
        metrics["LFR after the user's clean re-tuning"] = summary["stages"]["retune"]["lfr"]
    return metrics


def write_attack_card(folder: Path, model_args, script_args, summary: dict) -> None:
    """The published adapter's card: the research-artifact notice, the attack and its CACC / LFR."""
    from peft import PeftConfig

    from hf_backdoor_defense.attacks.gradient_control_trainer import BACKDOOR_NOTICE
    from hf_backdoor_defense.hub import write_model_card

    config = PeftConfig.from_pretrained(str(folder))
    write_model_card(
        folder, base_model=model_args.model_name_or_path, peft_type=str(getattr(config.peft_type, "value", config.peft_type)),
        task_type=str(getattr(config.task_type, "value", config.task_type)), defense=None,
        metrics=card_metrics(summary), attack=script_args.attack, dataset=script_args.dataset,
        extra_tags=["backdoor-attack", "gradient-control", "research-artifact"], notice=BACKDOOR_NOTICE,
    )


def save_adapter(trainer, tokenizer, folder: Path, checkpoints: str) -> None:
    """Save the adapter (safetensors) and tokenizer on the main process; no pickled training arguments, and the
    Trainer's checkpoint folder is removed when it stayed empty (``save_strategy="no"``)."""
    trainer.model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    path = Path(checkpoints)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def train_attacker(name: str, use_gradient_control: bool, folder: Path, poisoned, data, label_names,
                   script_args, model_args, training_args, attack, state):
    """Stage 1: train and save the poisoned adapter; returns ``(trainer, summary)`` (metrics on the main process)."""
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from hf_backdoor_defense.scenario import stage_metrics
    from hf_backdoor_defense.trainers import GradientControlTrainer

    set_seed(training_args.seed)
    model, tokenizer = load_model_and_tokenizer(model_args, "classification", num_labels=len(label_names),
                                                training_args=training_args, label_names=label_names)
    model = get_peft_model(model, build_peft_config(model_args, model, "classification"))
    if state.is_main_process:
        print(f"[{name}] ", end="")
        model.print_trainable_parameters()
    with state.main_process_first():
        encoded = _encode(poisoned, tokenizer, script_args.max_length, keep=("is_poisoned",))
    args = copy.deepcopy(training_args)
    args.output_dir = str(folder / "checkpoints")
    args.push_to_hub = False  # the recipe publishes with its own model card
    collator = DataCollatorWithPadding(tokenizer)
    if use_gradient_control:
        trainer = GradientControlTrainer(model=model, args=args, train_dataset=encoded, processing_class=tokenizer,
                                         data_collator=collator)
    else:
        plain = convert_training_arguments(args, TrainingArguments)
        trainer = Trainer(model=model, args=plain, train_dataset=encoded.remove_columns("is_poisoned"),
                          processing_class=tokenizer, data_collator=collator)
    start = time.perf_counter()
    output = trainer.train()
    summary = {"run": name, "gradient_control": use_gradient_control, "train_loss": output.training_loss,
               "train_seconds": round(time.perf_counter() - start, 2), "global_steps": trainer.state.global_step,
               "world_size": state.num_processes}
    if use_gradient_control:
        summary["clnorm_weights"] = {str(k): v for k, v in trainer.layer_weights.items()}
    if state.is_main_process:
        save_adapter(trainer, tokenizer, folder, args.output_dir)
        summary["stages"] = {"attack": stage_metrics(trainer.model, tokenizer, data["test"], attack,
                                                     batch_size=script_args.eval_batch_size,
                                                     max_length=script_args.max_length)}
        attack_scores = summary["stages"]["attack"]
        print(f"[{name}] after the attack: CACC {100 * attack_scores['cacc']:.1f}%  "
              f"LFR {100 * attack_scores['lfr']:.1f}%", flush=True)
    state.wait_for_everyone()
    return trainer, summary


def retune(name: str, folder: Path, data, label_names, script_args, model_args, retune_args, training_args,
           attack, state) -> dict | None:
    """Stage 2: the user loads the published adapter and re-tunes it on clean data; returns the stage metrics
    (main process) and saves the re-tuned adapter into ``folder / "user_retuned"``."""
    from peft import PeftModel
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    from hf_backdoor_defense.scenario import stage_metrics

    set_seed(training_args.seed + 1)
    base, tokenizer = load_model_and_tokenizer(model_args, "classification", num_labels=len(label_names),
                                               training_args=training_args, label_names=label_names)
    model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    with state.main_process_first():
        encoded = _encode(data["user"], tokenizer, script_args.max_length)
    args = convert_training_arguments(
        training_args, TrainingArguments, output_dir=str(folder / "user_checkpoints"),
        num_train_epochs=retune_args.retune_epochs, max_steps=retune_args.retune_max_steps,
        learning_rate=retune_args.retune_learning_rate or training_args.learning_rate, push_to_hub=False,
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=encoded, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    scores = None
    if state.is_main_process:
        save_adapter(trainer, tokenizer, folder / "user_retuned", args.output_dir)
        scores = stage_metrics(trainer.model, tokenizer, data["test"], attack, batch_size=script_args.eval_batch_size,
                               max_length=script_args.max_length)
        scores["train_seconds"] = round(seconds, 2)
        scores["global_steps"] = trainer.state.global_step
        print(f"[{name}] after the user's re-tuning: CACC {100 * scores['cacc']:.1f}%  "
              f"LFR {100 * scores['lfr']:.1f}%", flush=True)
    state.wait_for_everyone()
    return scores


def format_table(runs: list[dict]) -> str:
    """A Markdown table of CACC / LFR after each stage, one row per run."""
    from hf_backdoor_defense.reporting import markdown_table, percent

    rows = [[run["run"], *(percent((run["stages"].get(stage) or {}).get(key))
                           for stage in ("attack", "retune") for key in ("cacc", "lfr"))] for run in runs]
    return markdown_table(["run", "CACC (attack)", "LFR (attack)", "CACC (re-tuned)", "LFR (re-tuned)"], rows)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict | None:
    """Run the recipe; returns the results dict on the main process (``None`` elsewhere)."""
    from accelerate import PartialState

    from hf_backdoor_defense.atomic import publish_directory, staging_path

    script_args, model_args, retune_args, training_args = parse(argv)
    check_arguments(script_args, model_args, retune_args, training_args)
    state = PartialState()
    output_dir = Path(training_args.output_dir).expanduser().resolve()
    staging = staging_path(output_dir)
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted run
        staging.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        results = _run(script_args, model_args, retune_args, training_args, staging, output_dir, state)
    except BaseException:
        if state.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if state.is_main_process:
        write_json_atomic(staging / RESULTS_FILE, results)
        publish_directory(staging, output_dir)
        print(f"adapter(s) and {RESULTS_FILE} written to {output_dir}", flush=True)
    state.wait_for_everyone()
    return results if state.is_main_process else None


def _run(script_args, model_args, retune_args, training_args, staging: Path, output_dir: Path, state) -> dict:
    with state.main_process_first():
        data = load_data(script_args, retune_args, training_args.seed, load_tokenizer(model_args))
        attack = build_attack(script_args)
        poisoned = attack.poison(data["attacker"])
    label_names = data["attacker"].features["label"].names
    runs = [("gradient_control", True)]
    if script_args.compare_with_baseline:
        runs.insert(0, ("vanilla", False))
    results = {
        **launch_record("gradient_control_attack", script_args, model_args, attack),
        "peft_type": model_args.peft_type,
        "shift": data["shift"],
        "n_attacker_train": len(poisoned),
        "n_poisoned": int(sum(poisoned["is_poisoned"])),
        "n_user_train": len(data["user"]) if data["user"] is not None else 0,
        "n_test": len(data["test"]),
        "gradient_control": {k: getattr(training_args, k) for k in (
            "clnorm", "clnorm_alpha", "anchor_layer", "clnorm_min_weight", "ilproj", "ilproj_mode", "beta_schedule",
            "poison_batch_size", "poison_loss_weight")},
        "runs": [],
    }
    for name, use_gc in runs:
        sub = staging / name if len(runs) > 1 else staging
        trainer, summary = train_attacker(name, use_gc, sub, poisoned, data, label_names, script_args, model_args,
                                          training_args, attack, state)
        del trainer  # free the attacker's model before the user's
        gc.collect()
        summary["output_dir"] = str(output_dir / name) if len(runs) > 1 else str(output_dir)
        if retune_args.simulate_retuning:
            scores = retune(name, sub, data, label_names, script_args, model_args, retune_args, training_args,
                            attack, state)
            if state.is_main_process:
                summary["stages"]["retune"] = scores
                summary["user_retuned_dir"] = str(Path(summary["output_dir"]) / "user_retuned")
        if state.is_main_process:
            write_attack_card(sub, model_args, script_args, summary)
        results["runs"].append(summary)
    if state.is_main_process:
        results["table"] = format_table(results["runs"])
        print("\n" + results["table"], flush=True)
        if training_args.push_to_hub:
            gc_run = next(r for r in results["runs"] if r["gradient_control"])
            folder = staging / "gradient_control" if len(runs) > 1 else staging
            results["hub"] = push_attack(folder, gc_run, label_names, script_args, model_args, training_args)
    return results


def push_attack(folder: Path, summary: dict, label_names, script_args, model_args, training_args) -> dict:
    """Upload the Gradient Control adapter saved in ``folder`` with the research-artifact card."""
    from peft import PeftModel

    from hf_backdoor_defense.attacks.gradient_control_trainer import BACKDOOR_NOTICE
    from hf_backdoor_defense.hub import push_adapter_to_hub

    repo_id = training_args.hub_model_id
    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/bert-sst2-gc-backdoor).")
    base, _ = load_model_and_tokenizer(model_args, "classification", num_labels=len(label_names),
                                       label_names=label_names)
    model = PeftModel.from_pretrained(base, str(folder))
    commit = push_adapter_to_hub(
        model, repo_id, metrics=card_metrics(summary), attack=script_args.attack, dataset=script_args.dataset,
        private=training_args.hub_private_repo, token=training_args.hub_token, base_model=model_args.model_name_or_path,
        extra_tags=["backdoor-attack", "gradient-control", "research-artifact"], notice=BACKDOOR_NOTICE,
        commit_message="Upload a deliberately backdoored research adapter (Gradient Control)",
    )
    return {"repo_id": repo_id, "commit": str(getattr(commit, "oid", commit))}


if __name__ == "__main__":
    run_cli(main)
