"""The scripts' output stage: the record of a training run, the CACC / ASR table and the Hub upload with
the project's model card. Files are written with :mod:`hf_backdoor_defense.atomic`.
"""

from __future__ import annotations

RESULTS_FILE = "results.json"
"""Each run's folder and the launch's ``--output_dir`` get one."""


def launch_record(recipe: str, script_args, model_args, attack, **extra) -> dict:
    """The head of a launch's ``results.json``: which recipe ran on which model (and its quantisation), data,
    evaluation split, trigger room and attack; ``extra`` holds the recipe's own entries (``runs``, sizes)."""
    quantization = "4bit" if model_args.load_in_4bit else "8bit" if model_args.load_in_8bit else None
    return {"recipe": recipe, "model_name_or_path": model_args.model_name_or_path, "quantization": quantization,
            "dataset": script_args.dataset, "eval_split": script_args.eval_split,
            "trigger_room": script_args.trigger_room, "attack": attack.to_dict(), **extra}


def run_metrics(name: str, peft_type: str, gradient_alignment: bool, output_dir: str, trainer, train_output,
                train_seconds: float, world_size: int, **extra) -> dict:
    """The record of one training run that every recipe writes to ``<output_dir>/results.json``; ``extra`` holds
    the task's own fields (scores, losses) and goes between the identity and the training figures."""
    reference = getattr(trainer, "reference_dataset", None)
    return {
        "run": name,
        "peft_type": peft_type,
        "gradient_alignment": gradient_alignment,
        "output_dir": output_dir,
        **extra,
        "train_loss": train_output.training_loss,
        "train_seconds": round(train_seconds, 2),
        "global_steps": trainer.state.global_step,
        "n_reference_used": len(reference) if reference is not None else 0,
        "world_size": world_size,
    }


def format_table(rows: list[dict]) -> str:
    """A Markdown CACC/ASR table of ``rows`` (each with ``run``, ``cacc``, ``asr``)."""
    from hf_backdoor_defense.reporting import markdown_table, percent

    return markdown_table(["run", "CACC", "ASR"], [[r["run"], percent(r["cacc"]), percent(r["asr"])] for r in rows])


def push_results(model, training_args, script_args, model_args, metrics: dict, defense: str | None):
    """Upload the adapter with the project's model card (``library_name: peft``, defense, CACC/ASR)."""
    from hf_backdoor_defense.hub import push_adapter_to_hub

    repo_id = training_args.hub_model_id
    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/llama2-musclelora-sst2).")
    return push_adapter_to_hub(
        model,
        repo_id,
        defense=defense,
        metrics={k: metrics[k] for k in ("cacc", "asr") if k in metrics},
        attack=script_args.attack,
        dataset=script_args.dataset,
        private=training_args.hub_private_repo,
        token=training_args.hub_token,
        base_model=model_args.model_name_or_path,
    )
