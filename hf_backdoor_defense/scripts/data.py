"""The scripts' data stage: the poisoned splits of ``--dataset`` under ``--attack`` (classification or
instruction pairs), from `ScriptArguments` to :func:`hf_backdoor_defense.data.poisoned.build_poisoned_splits`.

Example:
    >>> splits, attack = build_classification_data(script_args, seed=42, tokenizer=tokenizer)  # doctest: +SKIP
    >>> splits["train"], splits["reference"], attack.triggered_test_set(splits["test"])        # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_backdoor_defense.scripts.utils import GENERATIVE_ATTACK_NAMES

if TYPE_CHECKING:
    from hf_backdoor_defense.scripts.utils import ScriptArguments

def build_attack(script_args: ScriptArguments):
    from hf_backdoor_defense.attacks import build_attack

    return build_attack(script_args.attack, target_label=script_args.target_label,
                        poison_rate=script_args.poison_rate, label_mode=script_args.label_mode,
                        seed=script_args.attack_seed,
                        num_triggers=script_args.num_triggers)


def build_classification_data(script_args: ScriptArguments, seed: int, tokenizer=None):
    """``(splits, attack)``: ``splits`` has ``train`` (subsampled, then poisoned), ``clean_train`` (the same
    subsample, unpoisoned), ``reference`` (the clean ``reference_split``) and ``test`` (the clean ``eval_split``,
    subsampled); the attack gives the triggered test set. With ``script_args.trigger_room`` set, every split is
    cut to ``tokenizer``'s window before poisoning (see `fit_splits_to_window`)."""
    from hf_backdoor_defense.data import load_text_classification

    attack = build_attack(script_args)
    raw = load_text_classification(script_args.dataset)
    return _poisoned_splits(raw, attack, script_args, seed, tokenizer), attack


def fit_splits_to_window(splits: dict, script_args: ScriptArguments, tokenizer) -> dict:
    """:func:`hf_backdoor_defense.data.poisoned.fit_splits_to_window` with the recipe's window."""
    from hf_backdoor_defense.data.poisoned import fit_splits_to_window as fit

    return fit(splits, tokenizer, max_length=script_args.max_length, trigger_room=script_args.trigger_room)


def _poisoned_splits(raw, attack, script_args: ScriptArguments, seed: int, tokenizer=None, *,
                     stratify: bool = True) -> dict:
    """:func:`hf_backdoor_defense.data.poisoned.build_poisoned_splits` with the recipe's fields."""
    from hf_backdoor_defense.data.poisoned import build_poisoned_splits

    return build_poisoned_splits(
        raw, attack, seed=seed, train_size=script_args.max_train_samples, eval_size=script_args.max_eval_samples,
        reference_split=script_args.reference_split, eval_split=script_args.eval_split, stratify=stratify,
        tokenizer=tokenizer, max_length=script_args.max_length, trigger_room=script_args.trigger_room,
        dataset_name=script_args.dataset)


def load_instruction_splits(script_args: ScriptArguments, split_seed: int = 42):
    """:func:`hf_backdoor_defense.data.instructions.load_instruction_splits` with the recipe's columns."""
    from hf_backdoor_defense.data.instructions import load_instruction_splits as load

    return load(script_args.dataset, prompt_column=script_args.prompt_column,
                response_column=script_args.response_column, context_column=script_args.context_column,
                split_seed=split_seed)


def build_generative_attack(script_args: ScriptArguments):
    """The instruction-data poisoner named by ``script_args.attack`` (on ``prompt`` / ``response`` columns)."""
    from hf_backdoor_defense.attacks import SentimentSteering, TargetedRefusal

    kwargs = dict(poison_rate=script_args.poison_rate, seed=script_args.attack_seed,
                  position=script_args.trigger_position)
    if script_args.trigger is not None:
        kwargs["trigger"] = script_args.trigger
    if script_args.attack == "sentiment_steering":
        return SentimentSteering(sentiment=script_args.sentiment, **kwargs)
    if script_args.attack == "targeted_refusal":
        return TargetedRefusal(**kwargs)
    raise ValueError(f"attack={script_args.attack!r} is not an instruction attack: use {GENERATIVE_ATTACK_NAMES}.")


def build_instruction_data(script_args: ScriptArguments, seed: int):
    """``(splits, attack)`` for ``task="instruction"``: ``train`` (subsampled, then poisoned: the trigger in
    the prompt, the response replaced), ``reference`` (clean pairs of ``reference_split``) and ``test`` (clean
    pairs of ``eval_split``, subsampled); ``attack.triggered_prompts(test)`` gives the triggered prompts."""
    attack = build_generative_attack(script_args)
    splits = load_instruction_splits(script_args)
    return _poisoned_splits(splits, attack, script_args, seed, stratify=False), attack
