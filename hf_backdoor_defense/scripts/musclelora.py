"""MuScleLoRA on a (4-bit) Llama-2 trained on poisoned data, launched with Accelerate.

``--task classification`` (default): poisons the training split with the chosen attack, trains a MuScleLoRA
(or LoRA) adapter on a sequence classifier with the `MuScleLoRATrainer` (gradient alignment on a clean
reference set drawn from the validation split, or the plain baseline with ``--gradient_alignment false``),
then measures CACC / ASR on the clean and triggered test sets on the main process and writes
``results.json`` (and the adapter) into ``--output_dir``.

``--task instruction``: the same on a causal LM tuned on poisoned prompt/response pairs (targeted refusal or
sentiment steering) with `MuScleLoRASFTTrainer`; the evaluation reports the clean response loss and the
generative ASR of greedy generations on triggered prompts (see `hf_backdoor_defense.scripts.instruction`).

Examples:
    # 4-bit Llama-2-7B, one process per GPU (DDP)
    $ accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/musclelora_llama2.py \\
        --config recipes/configs/musclelora_llama2.yaml
    # the LoRA baseline on the same data
    $ accelerate launch recipes/musclelora_llama2.py --config recipes/configs/musclelora_llama2.yaml \\
        --peft_type lora --gradient_alignment false --output_dir outputs/llama2-lora
    # the offline demo: SmolLM2-135M in 4-bit on 2 CPU cores, LoRA vs MuScleLoRA
    $ accelerate launch recipes/musclelora_llama2.py --config recipes/configs/demo.yaml
    # instruction tuning with a targeted-refusal backdoor (offline demo)
    $ accelerate launch recipes/musclelora_llama2.py --config recipes/configs/instruction_demo.yaml
"""

from __future__ import annotations

import copy
import gc
import sys
import time
from pathlib import Path

from hf_backdoor_defense.atomic import write_json_atomic
from hf_backdoor_defense.scripts.data import build_classification_data, build_instruction_data
from hf_backdoor_defense.scripts.instruction import format_instruction_table, train_one_instruction
from hf_backdoor_defense.scripts.loading import (
    build_peft_config,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_path,
)
from hf_backdoor_defense.scripts.outputs import (
    RESULTS_FILE,
    format_table,
    launch_record,
    push_results,
    run_metrics,
)
from hf_backdoor_defense.scripts.utils import (
    ModelArguments,
    ScriptArguments,
    check_launch_supported,
    check_recipe_output_dir,
    config_value,
    parse_args,
    run_cli,
    script_parser,
)


def make_parser(subparsers=None):
    """The script's `trl.TrlParser` (or its sub-command of a TRL-style command line)."""
    from hf_backdoor_defense.trainers import MuScleLoRATrainingArguments

    return script_parser((ScriptArguments, ModelArguments, MuScleLoRATrainingArguments), "musclelora",
                         "Train a MuScleLoRA (or LoRA) adapter on poisoned data and measure CACC / ASR.", subparsers)


def parse(argv=None):
    """(script_args, model_args, training_args); ``--use_cpu true`` is implied without CUDA."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Refuse impossible launches before TrainingArguments sets up DeepSpeed/FSDP or any model is loaded.
    check_launch_supported(config_value(argv, "gradient_alignment", True))
    return parse_args(make_parser(), argv)


def _runs(script_args, model_args, training_args):
    """(name, peft_type, gradient_alignment, output_dir, train_split) of each training run of this launch."""
    main_name = f"{model_args.peft_type}{'+ga' if training_args.gradient_alignment else ''}"
    root = Path(training_args.output_dir)
    runs = []
    if script_args.train_clean_floor:
        runs.append(("lora, clean data (ASR floor)", "lora", False, str(root / "clean_floor"), "clean_train"))
    if not script_args.compare_with_baseline:
        if not runs:
            return [(main_name, model_args.peft_type, training_args.gradient_alignment, training_args.output_dir,
                     "train")]
        return [*runs, (main_name, model_args.peft_type, training_args.gradient_alignment, str(root / "defense"),
                        "train")]
    return [
        *runs,
        ("lora (baseline)", "lora", False, str(root / "baseline"), "train"),
        (main_name, model_args.peft_type, training_args.gradient_alignment, str(root / "defense"), "train"),
    ]


def train_one(name, peft_type, gradient_alignment, output_dir, script_args, model_args, training_args, data,
              attack, label_names):
    """Train one adapter, save it, evaluate it on the main process; return (trainer, metrics or None)."""
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, set_seed

    from hf_backdoor_defense.data import tokenize_dataset
    from hf_backdoor_defense.metrics import evaluate_backdoor
    from hf_backdoor_defense.trainers import MuScleLoRATrainer

    state = PartialState()
    run_model_args = copy.copy(model_args)
    run_model_args.peft_type = peft_type
    if peft_type == "lora":
        run_model_args.scales = run_model_args.multiscale_alpha = run_model_args.multiscale_target_modules = None
    args = copy.deepcopy(training_args)
    args.output_dir = output_dir
    args.gradient_alignment = gradient_alignment
    args.push_to_hub = False  # the recipe pushes itself, with the project's model card
    set_seed(args.seed)

    model, tokenizer = load_model_and_tokenizer(
        run_model_args, "classification", num_labels=len(label_names), training_args=args, label_names=label_names
    )
    model = get_peft_model(model, build_peft_config(run_model_args, model, "classification"))
    if state.is_main_process:
        print(f"[{name}] ", end="")
        model.print_trainable_parameters()
    with state.main_process_first():
        train = tokenize_dataset(data["train"], tokenizer, max_length=script_args.max_length)
        reference = tokenize_dataset(data["reference"], tokenizer, max_length=script_args.max_length)
    trainer = MuScleLoRATrainer(
        model=model,
        args=args,
        train_dataset=train,
        reference_dataset=reference if gradient_alignment else None,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    trainer.save_model(output_dir)  # the adapter (safetensors), written by the main process
    metrics = None
    if state.is_main_process:
        tokenizer.save_pretrained(output_dir)
        scores = evaluate_backdoor(trainer.model, tokenizer, data["test"], attack,
                                   batch_size=script_args.eval_batch_size, max_length=script_args.max_length)
        metrics = run_metrics(name, peft_type, gradient_alignment, output_dir, trainer, train_output, train_seconds,
                              state.num_processes, **scores)
        write_json_atomic(Path(output_dir) / RESULTS_FILE, metrics)
        print(f"[{name}] CACC {100 * scores['cacc']:.1f}%  ASR {100 * scores['asr']:.1f}%", flush=True)
    state.wait_for_everyone()
    return trainer, metrics


def main(argv=None, recipe="musclelora_llama2") -> dict | None:
    """Run the recipe; returns the results dict on the main process (None elsewhere)."""
    script_args, model_args, training_args = parse(argv)
    check_recipe_output_dir(script_args, training_args,
                            [resolve_model_path(model_args.model_name_or_path), script_args.dataset])
    from accelerate import PartialState

    state = PartialState()
    instruction = script_args.task == "instruction"
    with state.main_process_first():
        if instruction:
            data, attack = build_instruction_data(script_args, training_args.seed)
        else:
            data, attack = build_classification_data(script_args, training_args.seed, load_tokenizer(model_args))
    label_names = None if instruction else data["train"].features["label"].names
    results = launch_record(recipe, script_args, model_args, attack, task=script_args.task,
                            n_train=len(data["train"]), n_poisoned=int(sum(data["train"]["is_poisoned"])),
                            n_reference=len(data["reference"]), runs=[])
    trainer = None
    for name, peft_type, alignment, output_dir, train_split in _runs(script_args, model_args, training_args):
        if trainer is not None:  # free the previous run's model before loading the next one
            del trainer
            gc.collect()
        run_data = {**data, "train": data[train_split]}
        if instruction:
            trainer, metrics = train_one_instruction(name, peft_type, alignment, output_dir, script_args,
                                                     model_args, training_args, run_data, attack)
        else:
            trainer, metrics = train_one(name, peft_type, alignment, output_dir, script_args, model_args,
                                         training_args, run_data, attack, label_names)
        if metrics is not None:
            results["runs"].append(metrics)
    if not state.is_main_process:
        return None
    results["table"] = (format_instruction_table if instruction else format_table)(results["runs"])
    print("\n" + results["table"], flush=True)
    if training_args.push_to_hub:
        defense = "musclelora" if training_args.gradient_alignment or model_args.peft_type == "musclelora" else None
        commit = push_results(trainer.model, training_args, script_args, model_args, results["runs"][-1], defense)
        results["hub"] = {"repo_id": training_args.hub_model_id, "commit": str(getattr(commit, "oid", commit))}
    path = write_json_atomic(Path(training_args.output_dir) / RESULTS_FILE, results)
    print(f"results written to {path}", flush=True)
    return results


if __name__ == "__main__":
    run_cli(main)
