"""The re-tuning scenario: does a published backdoored adapter survive the user's clean fine-tuning?

Stages (one call of :func:`run_retuning_scenario`):

1. **attack**: the attacker poisons its own training data, trains a PEFT adapter (plus the
   classification head) on a frozen base, with a plain ``Trainer`` ("vanilla") or with
   :class:`~hf_backdoor_defense.trainers.gradient_control.GradientControlTrainer`, and publishes it
   (``<output_dir>/attacker_adapter``).
2. **defenses** (optional): each defense callable receives the published adapter, loaded fresh and
   trainable, and returns the model to evaluate (see :func:`purifier_defense` for the post-hoc purifiers and
   :func:`alignment_retune_defense` for a re-tune with MuScleLoRA's gradient alignment).
3. **retune**: the user loads the published adapter (``is_trainable=True``) and re-tunes it on clean
   data from a *shifted* domain (``<output_dir>/user_adapter``).

After each stage CACC and LFR are measured on the user's clean test set (its validation set with
``eval_split="validation"``, for choosing settings) with :func:`hf_backdoor_defense.metrics.evaluate_backdoor`. The triggered test set holds only non-target
examples, so the label flip rate (share of triggered inputs classified as the target) equals the ASR
reported by the metrics module.

Built-in shifts: ``"spamassassin"`` (collection 1 -> collection 2) and ``"rotten_tomatoes"`` (two
disjoint, seeded halves of the training split); or ``shift="custom"`` with your own datasets.

Example:
    >>> from hf_backdoor_defense.scenario import RetuningScenarioConfig, run_retuning_scenario
    >>> config = RetuningScenarioConfig(output_dir="runs/gc", shift="spamassassin",
    ...                                 attacker_method="gradient_control", max_user_samples=1000)
    >>> results = run_retuning_scenario(str(assets.minilm_path()), config)   # doctest: +SKIP
    >>> results["stages"]["retune"]["lfr"]                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets

from .atomic import staged_directory, write_json_atomic
from .data.loading import subsample

__all__ = [
    "SHIFTS",
    "RetuningScenarioConfig",
    "ScenarioContext",
    "alignment_retune_defense",
    "load_shift",
    "purifier_defense",
    "run_retuning_scenario",
    "stage_metrics",
]

SHIFTS = ("spamassassin", "rotten_tomatoes", "custom")
ATTACKER_METHODS = ("vanilla", "gradient_control")
EVAL_SPLITS = ("test", "validation")
RESULTS_FILE = "scenario_results.json"


@dataclass
class RetuningScenarioConfig:
    """Settings of :func:`run_retuning_scenario`.

    Args:
        output_dir (`str`): folder for the adapters and ``scenario_results.json``.
        shift (`str`, defaults to `"spamassassin"`): `"spamassassin"`, `"rotten_tomatoes"` or `"custom"`.
        attacker_method (`str`, defaults to `"gradient_control"`): `"vanilla"` or `"gradient_control"`.
        seed (`int`, defaults to `0`): seed of the data split, training and the LoRA init.
        max_length (`int`, defaults to `128`): truncation length.
        trigger_room (`int` or `None`, defaults to `8`): before poisoning, every text (attacker, user and test
            sets) is cut to the whole words that fit in ``max_length`` minus the special tokens minus this many
            tokens, so a trigger inserted at a random word is inside what the model reads. Long texts
            (SpamAssassin mails) otherwise lose many triggers to truncation and the LFR measures the
            truncation, not the attack. ``None``: no cut.
        max_attacker_samples / max_user_samples / max_test_samples (`int` or `None`): caps, drawn with ``seed``.
        eval_split (`str`, defaults to `"test"`): the split of a built-in shift that every stage is scored on.
            ``"validation"`` scores on the user's validation split instead, so settings (an attacker budget, a
            learning rate) can be chosen without looking at the test split. With ``shift="custom"`` the caller's
            ``test_dataset`` is scored and this must stay ``"test"``.
        attacker_epochs (`float`, defaults to `10`): the paper's poison training length.
        attacker_learning_rate (`float`, defaults to `2e-4`).
        user_epochs (`float`, defaults to `5`): the paper's re-tuning length.
        user_learning_rate (`float`, defaults to `2e-4`).
        batch_size (`int`, defaults to `32`): per-device batch size of both stages (and of GC's poison batch).
        eval_batch_size (`int`, defaults to `64`).
        gradient_control (`dict`): extra ``GradientControlTrainingArguments`` fields (e.g. ``{"ilproj": False}``).
        overwrite (`bool`, defaults to `False`): replace an existing ``scenario_results.json``.
        disable_progress_bar (`bool`, defaults to `False`).
    """

    output_dir: str = field(metadata={"help": "Folder for the adapters and scenario_results.json."})
    shift: str = field(default="spamassassin", metadata={"help": "'spamassassin', 'rotten_tomatoes' or 'custom'."})
    attacker_method: str = field(default="gradient_control", metadata={"help": "'vanilla' or 'gradient_control'."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the training and the adapter init."})
    max_length: int = field(default=128, metadata={"help": "Truncation length."})
    trigger_room: int | None = field(
        default=8, metadata={"help": "Cut texts to max_length minus this many tokens before poisoning (None: no cut)."}
    )
    max_attacker_samples: int | None = field(default=None, metadata={"help": "Cap on the attacker's train set."})
    max_user_samples: int | None = field(default=None, metadata={"help": "Cap on the user's train set."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Cap on the user's test set."})
    eval_split: str = field(
        default="test", metadata={"help": "Split of a built-in shift that is scored: 'test' or 'validation'."}
    )
    attacker_epochs: float = field(default=10.0, metadata={"help": "Epochs of poison training (paper: 10)."})
    attacker_learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of poison training."})
    user_epochs: float = field(default=5.0, metadata={"help": "Epochs of the user's re-tuning (paper: 5)."})
    user_learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of the user's re-tuning."})
    batch_size: int = field(default=32, metadata={"help": "Per-device train batch size of both stages."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the evaluations."})
    gradient_control: dict = field(
        default_factory=dict, metadata={"help": "Extra GradientControlTrainingArguments fields."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing scenario_results.json."})
    disable_progress_bar: bool = field(default=False, metadata={"help": "Hide the progress bars."})

    def __post_init__(self):
        if self.shift not in SHIFTS:
            raise ValueError(f"`shift` must be one of {SHIFTS}, got {self.shift!r}.")
        if self.attacker_method not in ATTACKER_METHODS:
            raise ValueError(f"`attacker_method` must be one of {ATTACKER_METHODS}, got {self.attacker_method!r}.")
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"`eval_split` must be one of {EVAL_SPLITS}, got {self.eval_split!r}.")
        if self.shift == "custom" and self.eval_split != "test":
            raise ValueError("`eval_split` only applies to the built-in shifts: with shift='custom', pass the rows "
                             "to score (e.g. your validation set) as `test_dataset` and keep eval_split='test'.")
        for name in ("max_length", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        from .data.truncation import check_trigger_room

        check_trigger_room(self.trigger_room, self.max_length)
        for name in ("max_attacker_samples", "max_user_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1 or None, got {value}.")
        for name in ("attacker_epochs", "user_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")


@dataclass
class ScenarioContext:
    """What a defense callable gets besides the attacked model.

    Args:
        tokenizer: the tokenizer of the base model.
        model_name_or_path (`str`): the base model.
        adapter_dir (`str`): the published (attacked) adapter.
        user_train (`datasets.Dataset`): the user's clean training data (``text``/``label``).
        attack: the attack object (target label, trigger insertion).
        config (`RetuningScenarioConfig`): the scenario settings.
        output_dir (`str`): a folder reserved for this defense.
        load_base (`Callable[[], PreTrainedModel]`): returns a fresh copy of the base model.
    """

    tokenizer: Any
    model_name_or_path: str
    adapter_dir: str
    user_train: datasets.Dataset
    attack: Any
    config: RetuningScenarioConfig
    output_dir: str
    load_base: Callable[[], Any]


Defense = Callable[[Any, ScenarioContext], Any]


def purifier_defense(purifier, *, num_clean: int | None = 256, finetune_args=None) -> Defense:
    """Turn a :mod:`hf_backdoor_defense.purification` purifier into a scenario defense.

    The purifier runs on the attacked adapter (adapter mode: the reference is "no adapter") with the first
    ``num_clean`` examples of the user's clean data; with ``finetune_args`` (a
    ``PurificationTrainingArguments``) the purified adapter is then fine-tuned on the same examples.

    Example:
        >>> from hf_backdoor_defense.purification import FinePurifying
        >>> defenses = {"fine-purifying": purifier_defense(FinePurifying(ratio=0.3))}
    """

    def defend(model, context: ScenarioContext):
        clean = context.user_train
        if num_clean is not None:
            clean = clean.select(range(min(num_clean, len(clean))))
        result = purifier.purify(model, None, clean, tokenizer=context.tokenizer)
        purified = result.model
        if finetune_args is not None:
            from .trainers.purification import finetune_clean

            args = copy.deepcopy(finetune_args)
            args.output_dir = os.path.join(context.output_dir, "finetune")
            purified = finetune_clean(purified, clean, context.tokenizer, args)
        return purified

    return defend


def alignment_retune_defense(*, num_reference: int = 96, alignment_preset: str = "encoder",
                             epochs: float | None = None, learning_rate: float | None = None) -> Defense:
    """The user re-tunes the published adapter with MuScleLoRA's gradient alignment instead of plainly.

    The first ``num_reference`` examples of the user's clean data are the trusted reference set and the rest are
    the training data (so the two never overlap); the adapter is trained with
    :class:`~hf_backdoor_defense.trainers.musclelora.MuScleLoRATrainer` and ``alignment_preset`` (``"encoder"``:
    the paper's defaults for BERT-class models). ``epochs`` and ``learning_rate`` default to the scenario's user
    stage, so the defense gets the same budget as the plain re-tune it is compared with.

    Example:
        >>> defenses = {"musclelora-retune": alignment_retune_defense(num_reference=96)}
    """
    if num_reference < 1:
        raise ValueError(f"`num_reference` must be >= 1, got {num_reference}.")

    def defend(model, context: ScenarioContext):
        from transformers import DataCollatorWithPadding

        from .trainers import MuScleLoRATrainer, MuScleLoRATrainingArguments

        config, user, tokenizer = context.config, context.user_train, context.tokenizer
        if len(user) <= num_reference:
            raise ValueError(f"alignment_retune_defense: the user's data has {len(user)} examples, not more than "
                             f"num_reference={num_reference}; lower num_reference or give the user more data.")
        args = MuScleLoRATrainingArguments(
            **_training_kwargs(config, os.path.join(context.output_dir, "retune_run"),
                               config.user_epochs if epochs is None else epochs,
                               config.user_learning_rate if learning_rate is None else learning_rate, logging_steps=1),
            gradient_alignment=True, alignment_preset=alignment_preset,
        )
        _set_seed(config.seed + 1)  # the plain re-tune's seed
        trainer = MuScleLoRATrainer(
            model=model, args=args, train_dataset=_encode(user.select(range(num_reference, len(user))), tokenizer, config),
            reference_dataset=_encode(user.select(range(num_reference)), tokenizer, config),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.train()
        model.eval()
        steps = [{k: v for k, v in row.items() if k == "step" or k.startswith("alignment/")}
                 for row in trainer.state.log_history if any(k.startswith("alignment/") for k in row)]
        write_json_atomic(os.path.join(context.output_dir, "alignment_log.json"), {"log": steps})
        return model

    return defend


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_shift(shift: str, seed: int = 0, test_split: str = "test"
               ) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """``(attacker_train, user_train, user_test)`` of a built-in domain shift.

    * ``"spamassassin"``: the attacker trains on collection 1, the user on collection 2 and is tested on
      collection 2's ``test_split``.
    * ``"rotten_tomatoes"``: the training split is shuffled with ``seed`` and cut into two disjoint halves
      (attacker, user); the user is tested on the ``test_split``.

    ``test_split`` is ``"test"`` (default) or ``"validation"`` (to tune hyper-parameters without the test set).
    """
    from .data import load_text_classification

    if test_split not in EVAL_SPLITS:
        raise ValueError(f"`test_split` must be one of {EVAL_SPLITS}, got {test_split!r}.")
    if shift == "spamassassin":
        first = load_text_classification("spamassassin", collection=1)
        second = load_text_classification("spamassassin", collection=2)
        return first["train"], second["train"], second[test_split]
    if shift == "rotten_tomatoes":
        rt = load_text_classification("rotten_tomatoes")
        train = rt["train"].shuffle(seed=seed)
        half = len(train) // 2
        return train.select(range(half)), train.select(range(half, len(train))), rt[test_split]
    raise ValueError(f"Unknown built-in shift {shift!r}; use one of {SHIFTS[:-1]} or shift='custom' with datasets.")


def stage_metrics(model, tokenizer, test: datasets.Dataset, attack, *, batch_size: int = 64,
                  max_length: int = 128, disable_progress_bar: bool = False) -> dict:
    """CACC and LFR of ``model`` on the clean ``test`` set and its triggered copy (one scenario stage).

    The triggered test set holds only non-target examples, so the label flip rate equals the ASR of
    :func:`hf_backdoor_defense.metrics.evaluate_backdoor`; both keys are returned, with ``n_clean`` and
    ``n_triggered``.
    """
    from .metrics import evaluate_backdoor

    scores = evaluate_backdoor(model, tokenizer, test, attack, batch_size=batch_size, max_length=max_length,
                               disable_progress_bar=disable_progress_bar)
    return {"cacc": scores["cacc"], "lfr": scores["asr"], "asr": scores["asr"],
            "n_clean": scores["n_clean"], "n_triggered": scores["n_triggered"]}


def _num_labels(*sets: datasets.Dataset) -> int:
    feature = sets[0].features.get("label")
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    return int(max(max(ds["label"]) for ds in sets)) + 1


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


def run_retuning_scenario(
    model_name_or_path: str,
    config: RetuningScenarioConfig,
    *,
    attack=None,
    peft_config=None,
    attacker_dataset: datasets.Dataset | None = None,
    user_dataset: datasets.Dataset | None = None,
    test_dataset: datasets.Dataset | None = None,
    defenses: Mapping[str, Defense] | None = None,
    tokenizer=None,
) -> dict:
    """Run attack -> (defenses) -> user re-tuning and return CACC/LFR after each stage.

    Args:
        model_name_or_path (`str`): the frozen base (a local folder or a Hub name).
        config (`RetuningScenarioConfig`): the settings.
        attack: a :mod:`hf_backdoor_defense.attacks` object; default ``BadNets(seed=config.seed)`` (dirty label).
        peft_config: the adapter config; default ``LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16)``.
            Any PEFT type works (MuScleLoRA after ``import hf_backdoor_defense``).
        attacker_dataset / user_dataset / test_dataset: ``text``/``label`` datasets for ``shift="custom"``
            (they override the built-in shift's parts when given).
        defenses: ``{name: callable(model, ScenarioContext) -> model}``; see :func:`purifier_defense`.
        tokenizer: defaults to ``AutoTokenizer.from_pretrained(model_name_or_path)``.

    Returns:
        ``{"config", "attack", "stages": {"attack": {...}, "defense/<name>": {...}, "retune": {...}},
        "adapters", "timings_s"}``; each stage holds ``cacc``, ``lfr``, ``asr``, ``n_clean``, ``n_triggered``.
        The same dict is written to ``<output_dir>/scenario_results.json``.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .attacks import BadNets

    results_path = os.path.join(config.output_dir, RESULTS_FILE)
    if os.path.exists(results_path) and not config.overwrite:
        raise FileExistsError(f"{results_path} exists; pass overwrite=True (--overwrite) or another output_dir.")
    os.makedirs(config.output_dir, exist_ok=True)
    attack = attack if attack is not None else BadNets(seed=config.seed)
    peft_config = peft_config if peft_config is not None else LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16)

    if config.shift == "custom":
        if attacker_dataset is None or user_dataset is None or test_dataset is None:
            raise ValueError("shift='custom' needs `attacker_dataset`, `user_dataset` and `test_dataset`.")
        attacker_train, user_train, user_test = attacker_dataset, user_dataset, test_dataset
    else:
        attacker_train, user_train, user_test = load_shift(config.shift, config.seed, test_split=config.eval_split)
        attacker_train = attacker_dataset if attacker_dataset is not None else attacker_train
        user_train = user_dataset if user_dataset is not None else user_train
        user_test = test_dataset if test_dataset is not None else user_test
    attacker_train = subsample(attacker_train, config.max_attacker_samples, config.seed)
    user_train = subsample(user_train, config.max_user_samples, config.seed)
    user_test = subsample(user_test, config.max_test_samples, config.seed)
    num_labels = _num_labels(attacker_train, user_train, user_test)

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer = copy.copy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    if config.trigger_room is not None:  # before any poisoning, so every trigger lands inside the window
        from .data import fit_to_window

        attacker_train, user_train, user_test = (
            fit_to_window(d, tokenizer, max_length=config.max_length, trigger_room=config.trigger_room)
            for d in (attacker_train, user_train, user_test))

    def load_base():
        model = AutoModelForSequenceClassification.from_pretrained(
            model_name_or_path, num_labels=num_labels, trust_remote_code=False
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def evaluate(model) -> dict:
        return stage_metrics(model, tokenizer, user_test, attack, batch_size=config.eval_batch_size,
                             max_length=config.max_length, disable_progress_bar=config.disable_progress_bar)

    timings: dict[str, float] = {}
    stages: dict[str, dict] = {}
    adapters: dict[str, str] = {}

    # Stage 1: the attacker.
    start = time.perf_counter()
    _set_seed(config.seed)
    attacked = get_peft_model(load_base(), copy.deepcopy(peft_config))
    poisoned = attack.poison(attacker_train)
    n_poisoned = int(sum(poisoned["is_poisoned"]))
    _train(attacked, poisoned, tokenizer, config, stage="attacker", gradient_control=config.attacker_method ==
           "gradient_control")
    adapters["attacker"] = _save_adapter(attacked, os.path.join(config.output_dir, "attacker_adapter"))
    timings["attack_train"] = round(time.perf_counter() - start, 2)
    stages["attack"] = evaluate(attacked)
    del attacked

    # Stage 2: defenses on the published adapter.
    for name, defense in (defenses or {}).items():
        start = time.perf_counter()
        model = PeftModel.from_pretrained(load_base(), adapters["attacker"], is_trainable=True)
        context = ScenarioContext(tokenizer=tokenizer, model_name_or_path=str(model_name_or_path),
                                  adapter_dir=adapters["attacker"], user_train=user_train, attack=attack,
                                  config=config, output_dir=os.path.join(config.output_dir, f"defense-{name}"),
                                  load_base=load_base)
        defended = defense(model, context)
        defended = getattr(defended, "model", defended)  # accept a PurificationResult too
        stages[f"defense/{name}"] = evaluate(defended)
        timings[f"defense/{name}"] = round(time.perf_counter() - start, 2)

    # Stage 3: the user re-tunes the published adapter on clean, shifted data.
    start = time.perf_counter()
    _set_seed(config.seed + 1)
    user_model = PeftModel.from_pretrained(load_base(), adapters["attacker"], is_trainable=True)
    _train(user_model, user_train, tokenizer, config, stage="user", gradient_control=False)
    adapters["user"] = _save_adapter(user_model, os.path.join(config.output_dir, "user_adapter"))
    timings["user_retune"] = round(time.perf_counter() - start, 2)
    stages["retune"] = evaluate(user_model)

    results = {
        "config": asdict(config),
        "model": str(model_name_or_path),
        "peft_type": str(getattr(peft_config, "peft_type", type(peft_config).__name__)),
        "attack": {"name": type(attack).__name__, **_attack_dict(attack), "n_poisoned": n_poisoned},
        "data": {"attacker_train": len(attacker_train), "user_train": len(user_train), "user_test": len(user_test)},
        "stages": stages,
        "adapters": adapters,
        "timings_s": timings,
    }
    _atomic_write_json(results_path, results)
    return results


def _attack_dict(attack) -> dict:
    if hasattr(attack, "to_dict"):
        return {k: v for k, v in attack.to_dict().items() if isinstance(v, (str, int, float, bool, list, tuple))}
    return {}


def _set_seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _train(model, dataset, tokenizer, config: RetuningScenarioConfig, *, stage: str, gradient_control: bool):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from .trainers import GradientControlTrainer, GradientControlTrainingArguments

    epochs = config.attacker_epochs if stage == "attacker" else config.user_epochs
    if epochs == 0:
        return model
    lr = config.attacker_learning_rate if stage == "attacker" else config.user_learning_rate
    encoded = _encode(dataset, tokenizer, config, keep={"is_poisoned"} if gradient_control else set())
    common = _training_kwargs(config, os.path.join(config.output_dir, f"{stage}_run"), epochs, lr, logging_steps=10)
    collator = DataCollatorWithPadding(tokenizer)
    if gradient_control:
        gc = {"poison_batch_size": config.batch_size, **config.gradient_control}
        args = GradientControlTrainingArguments(**common, **gc)
        trainer = GradientControlTrainer(model=model, args=args, train_dataset=encoded, data_collator=collator)
    else:
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=encoded,
                          data_collator=collator)
    trainer.train()
    model.eval()
    return model


def _encode(dataset, tokenizer, config: RetuningScenarioConfig, keep: set = frozenset()):
    """``dataset`` tokenised to ``config.max_length``, keeping only the model inputs, the labels and ``keep``."""
    from .data import model_inputs, tokenize_dataset

    return model_inputs(tokenize_dataset(dataset, tokenizer, max_length=config.max_length), keep)


def _training_kwargs(config: RetuningScenarioConfig, output_dir: str, epochs: float, learning_rate: float,
                     *, logging_steps: int) -> dict:
    """The `TrainingArguments` every scenario training shares (no checkpoints, no reporting, the config's seed)."""
    return dict(output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate,
                per_device_train_batch_size=config.batch_size, save_strategy="no", report_to="none",
                logging_steps=logging_steps, seed=config.seed, disable_tqdm=config.disable_progress_bar,
                dataloader_num_workers=0)


def _save_adapter(model, path: str) -> str:
    """Save the adapter (safetensors) into a temporary sibling folder, then move it into place."""
    with staged_directory(path) as folder:
        model.save_pretrained(folder, safe_serialization=True)
    return path


def _atomic_write_json(path: str, payload: dict) -> None:
    write_json_atomic(path, payload)
