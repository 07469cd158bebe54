"""W2SDefense on a (4-bit) Llama-2 classifier: unlearn its backdoor with a small clean teacher, with Accelerate.

Steps (ALGORITHMS.md §4, `hf_backdoor_defense.trainers.w2sdefense`):

1. The backdoored student: ``--model_name_or_path`` is the backdoored classifier itself (a Hub id or folder), or
   the clean base that ``--backdoored_adapter`` (a SEQ_CLS PEFT adapter holding the backdoor) is merged into,
   or, with ``--poison_first true``, the clean base on which the recipe first trains the backdoor itself
   (plain LoRA on the poisoned training split), so the whole pipeline runs offline. A merged student is
   saved once to ``<output_dir>/backdoored_model`` (safetensors) and reloaded (4-bit if asked).
2. The teacher: a small encoder (``--teacher_encoder``, BERT-class; ``minilm`` = the offline MiniLM) fully
   fine-tuned on the clean set with a head projecting to the student's hidden size, saved to
   ``<output_dir>/teacher``; or a saved teacher (``--teacher_name_or_path``).
3. Distillation: a LoRA adapter on the frozen student trained by `W2SDefenseTrainer` on the clean set
   (``--reference_split``, at most ``--clean_size`` examples; never the poisoned training split) with
   ``a*CE + b*T^2*KL + c*||phi_t - phi_s||^2`` (``--preset word|sentence|syntactic``).
4. CACC / ASR of the backdoored student (before), of the teacher and of the defended student (after) on the
   test split, in ``results.json``; ``--push_to_hub`` uploads the adapter with a ``w2sdefense`` card.

Examples:
    # offline end to end: SmolLM2-135M in 4-bit, backdoored in-recipe, MiniLM teacher
    $ accelerate launch recipes/w2sdefense_llama2.py --config recipes/configs/w2sdefense_demo.yaml
    # a backdoored Llama-2-7B classifier from the Hub, BERT-base teacher, one 4-bit student per GPU
    $ accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/w2sdefense_llama2.py \\
        --config recipes/configs/w2sdefense_llama2.yaml --model_name_or_path me/llama2-7b-sst2-backdoored
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

from hf_backdoor_defense.launch import launch_backend
from hf_backdoor_defense.scripts.data import build_classification_data
from hf_backdoor_defense.scripts.loading import (
    build_peft_config,
    compute_dtype,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_path,
)
from hf_backdoor_defense.scripts.outputs import RESULTS_FILE, format_table, launch_record, push_results
from hf_backdoor_defense.scripts.utils import (
    ModelArguments,
    ScriptArguments,
    check_recipe_output_dir,
    convert_training_arguments,
    parse_args,
    run_cli,
    script_parser,
)

SPECIAL_ENCODERS = ("minilm",)


@dataclass
class W2SModelArguments(ModelArguments):
    r"""[`ModelArguments`] for the student, with the LoRA adapter of the paper as default.

    Args:
        model_name_or_path (`str`, defaults to `"meta-llama/Llama-2-7b-hf"`):
            The backdoored sequence classifier; with `--backdoored_adapter` or `--poison_first`, the clean base
            model the backdoor is merged into / trained on.
        peft_type (`str`, defaults to `"lora"`):
            Adapter trained during distillation (the paper uses LoRA).
    """

    model_name_or_path: str = field(
        default="meta-llama/Llama-2-7b-hf",
        metadata={
            "help": "The backdoored classifier, or the clean base under --backdoored_adapter / --poison_first; "
            "'smollm2' = the offline SmolLM2-135M."
        },
    )
    peft_type: str = field(
        default="lora",
        metadata={"help": "Adapter trained by W2SDefense: 'lora' (paper) or 'musclelora'.",
                  "choices": ["lora", "musclelora"]},
    )


@dataclass
class W2SArguments:
    r"""Where the backdoored student and the teacher come from, and the W2SDefense loss.

    Parameters that control the backdoored student:

    Args:
        backdoored_adapter (`str` or `None`, defaults to `None`):
            Folder or Hub id of a SEQ_CLS PEFT adapter holding the backdoor; merged into `model_name_or_path`.
        poison_first (`bool`, defaults to `False`):
            Train the backdoor in the recipe first: a plain LoRA adapter (and head) on the poisoned training
            split, merged into `model_name_or_path`.
        backdoor_lora_r (`int`, defaults to `8`):
            `poison_first`: rank of the backdoor LoRA (alpha = 2 r, on the attention query / value projections).
        backdoor_learning_rate (`float`, defaults to `2e-4`):
            `poison_first`: learning rate of the backdoor training.
        backdoor_epochs (`float`, defaults to `3.0`):
            `poison_first`: epochs of the backdoor training.
        backdoor_max_steps (`int`, defaults to `-1`):
            `poison_first`: stop the backdoor training after this many steps (`-1`: use the epochs).

    Parameters that control the teacher:

    Args:
        teacher_name_or_path (`str` or `None`, defaults to `None`):
            A saved `W2STeacher` folder (as written to `<output_dir>/teacher`); skips teacher training. Its
            projection width must equal the student's hidden size.
        teacher_encoder (`str`, defaults to `"bert-base-uncased"`):
            Encoder fine-tuned as the teacher (Hub id or folder); `"minilm"` = the offline all-MiniLM-L6-v2.
        teacher_pooling (`str`, defaults to `"mean"`):
            `"mean"`, `"cls"` or `"pooler"`.
        teacher_learning_rate (`float`, defaults to `2e-5`):
            Learning rate of the teacher's full fine-tuning.
        teacher_epochs (`float`, defaults to `3.0`):
            Epochs of the teacher's fine-tuning.
        teacher_max_steps (`int`, defaults to `-1`):
            Stop the teacher's training after this many steps (`-1`: use the epochs).
        teacher_batch_size (`int`, defaults to `32`):
            Per-device batch size of the teacher's training.
        teacher_max_length (`int` or `None`, defaults to `None`):
            Teacher truncation length; `None` uses `max_length`.

    Parameters that control the distillation:

    Args:
        clean_size (`int` or `None`, defaults to `None`):
            Seeded, stratified subsample of `reference_split` used as the clean set (teacher training and
            distillation); `None`: the whole split.
        preset (`str` or `None`, defaults to `"word"`):
            Published loss weights: `"word"` (5, 0.001, 0.001, BadNets), `"sentence"` (3, 0.01, 0.001, AddSent),
            `"syntactic"` (1, 0.035, 0.002); fills the weights left unset.
        alpha_ce (`float` or `None`, defaults to `None`):
            Weight of the cross-entropy on the clean labels.
        beta_kd (`float` or `None`, defaults to `None`):
            Weight of the `T^2`-scaled KL to the teacher.
        gamma_feature (`float` or `None`, defaults to `None`):
            Weight of the squared L2 distance between teacher and student features.
        temperature (`float`, defaults to `2.0`):
            Distillation temperature `T`.
        feature_distance (`str`, defaults to `"squared_l2"`):
            `"squared_l2"` (the paper) or `"cosine"` (`1 - cos`, this library's opt-in, scale-free variant).
    """

    backdoored_adapter: str | None = field(
        default=None, metadata={"help": "SEQ_CLS PEFT adapter holding the backdoor, merged into the base model."}
    )
    poison_first: bool = field(
        default=False, metadata={"help": "Train the backdoor (plain LoRA on the poisoned split) before defending."}
    )
    backdoor_lora_r: int = field(default=8, metadata={"help": "poison_first: rank of the backdoor LoRA."})
    backdoor_learning_rate: float = field(default=2e-4, metadata={"help": "poison_first: backdoor learning rate."})
    backdoor_epochs: float = field(default=3.0, metadata={"help": "poison_first: backdoor training epochs."})
    backdoor_max_steps: int = field(default=-1, metadata={"help": "poison_first: backdoor steps (-1: epochs)."})
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "Saved W2STeacher folder; skips teacher training."}
    )
    teacher_encoder: str = field(
        default="bert-base-uncased",
        metadata={"help": "Encoder fine-tuned as the teacher (Hub id or folder); 'minilm' = offline MiniLM."},
    )
    teacher_pooling: str = field(
        default="mean", metadata={"help": "Teacher pooling.", "choices": ["mean", "cls", "pooler"]}
    )
    teacher_learning_rate: float = field(default=2e-5, metadata={"help": "Teacher fine-tuning learning rate."})
    teacher_epochs: float = field(default=3.0, metadata={"help": "Teacher fine-tuning epochs."})
    teacher_max_steps: int = field(default=-1, metadata={"help": "Teacher fine-tuning steps (-1: epochs)."})
    teacher_batch_size: int = field(default=32, metadata={"help": "Teacher per-device batch size."})
    teacher_max_length: int | None = field(
        default=None, metadata={"help": "Teacher truncation length; None uses max_length."}
    )
    clean_size: int | None = field(
        default=None, metadata={"help": "Stratified subsample of reference_split used as the clean set."}
    )
    preset: str | None = field(
        default="word",
        metadata={"help": "Loss weights of a trigger family (fills unset weights).",
                  "choices": ["word", "sentence", "syntactic"]},
    )
    alpha_ce: float | None = field(default=None, metadata={"help": "Weight of the cross-entropy term."})
    beta_kd: float | None = field(default=None, metadata={"help": "Weight of the T^2-scaled KL term."})
    gamma_feature: float | None = field(default=None, metadata={"help": "Weight of the feature-alignment term."})
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T."})
    feature_distance: str = field(
        default="squared_l2",
        metadata={"help": "Feature distance: squared_l2 (the paper) or cosine (opt-in).",
                  "choices": ["squared_l2", "cosine"]},
    )

    def __post_init__(self) -> None:
        if self.backdoored_adapter and self.poison_first:
            raise ValueError(
                "backdoored_adapter and poison_first are exclusive: load a backdoor or train one, not both."
            )
        if self.clean_size is not None and self.clean_size <= 1:
            raise ValueError(f"clean_size must be > 1 or None, got {self.clean_size}.")
        if self.backdoor_lora_r <= 0:
            raise ValueError(f"backdoor_lora_r must be positive, got {self.backdoor_lora_r}.")
        if self.teacher_batch_size <= 0:
            raise ValueError(f"teacher_batch_size must be positive, got {self.teacher_batch_size}.")


# ---------------------------------------------------------------------------------------------- arguments
def check_w2s_launch_supported(training_args=None) -> None:
    """Refuse DeepSpeed and FSDP launches before anything is loaded.

    Raises:
        ValueError: under DeepSpeed (the frozen teacher lives outside the engine, and ZeRO-3 would partition
            its weights as they load) or FSDP (not verified); DDP or one process run it.
    """
    from hf_backdoor_defense.launch import refuse_sharded_launch

    refuse_sharded_launch(launch_backend(training_args), "the W2SDefense recipe",
                          "the frozen teacher lives outside the engine (ZeRO-3 would partition its weights as they "
                          "load, FSDP would shard it) and this flow is not verified there; a 4-bit 7B student "
                          "fits on one GPU")


def make_parser(subparsers=None):
    """The script's `trl.TrlParser` (or its sub-command of a TRL-style command line)."""
    from transformers import TrainingArguments

    return script_parser((ScriptArguments, W2SModelArguments, W2SArguments, TrainingArguments), "w2sdefense",
                         "Distil a clean teacher into a LoRA adapter of a backdoored classifier (W2SDefense).",
                         subparsers)


def parse(argv=None):
    """(script_args, model_args, w2s_args, training_args); ``--use_cpu true`` is implied without CUDA."""
    check_w2s_launch_supported()
    script_args, model_args, w2s_args, training_args = parse_args(make_parser(), argv)
    if script_args.task != "classification":
        raise ValueError(
            f"task={script_args.task!r}: W2SDefense distils a classifier; use --task classification."
        )
    if training_args.push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. me/llama2-w2sdefense-sst2).")
    return script_args, model_args, w2s_args, training_args


def distillation_arguments(training_args, script_args, w2s_args, output_dir, baseline: bool = False):
    """`W2SDefenseTrainingArguments` of one run; ``baseline``: cross-entropy only (plain clean fine-tuning)."""
    from hf_backdoor_defense.trainers import W2SDefenseTrainingArguments

    if baseline:
        weights = {"preset": None, "alpha_ce": 1.0, "beta_kd": 0.0, "gamma_feature": 0.0}
    else:
        weights = {"preset": w2s_args.preset, "alpha_ce": w2s_args.alpha_ce, "beta_kd": w2s_args.beta_kd,
                   "gamma_feature": w2s_args.gamma_feature}
    return convert_training_arguments(
        training_args, W2SDefenseTrainingArguments, output_dir=str(output_dir), push_to_hub=False,
        remove_unused_columns=False, temperature=w2s_args.temperature, max_length=script_args.max_length,
        feature_distance=w2s_args.feature_distance,
        teacher_max_length=w2s_args.teacher_max_length or script_args.max_length, **weights,
    )


# ---------------------------------------------------------------------------------------------- the student
def train_backdoor(script_args, model_args, w2s_args, training_args, data, label_names, adapter_dir: Path):
    """``--poison_first``: a plain LoRA adapter (and head) trained on the poisoned split; saved to ``adapter_dir``."""
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, set_seed

    from hf_backdoor_defense.data import tokenize_dataset
    from hf_backdoor_defense.trainers import MuScleLoRATrainer, MuScleLoRATrainingArguments

    state = PartialState()
    backdoor_model_args = copy.copy(model_args)
    backdoor_model_args.peft_type = "lora"
    backdoor_model_args.lora_r = w2s_args.backdoor_lora_r
    backdoor_model_args.lora_alpha = 2 * w2s_args.backdoor_lora_r
    backdoor_model_args.lora_target_modules = None
    backdoor_model_args.scales = backdoor_model_args.multiscale_alpha = None
    backdoor_model_args.multiscale_target_modules = None
    # MuScleLoRATrainer without alignment is the plain Trainer with correct classification loss scaling.
    args = convert_training_arguments(
        training_args, MuScleLoRATrainingArguments, output_dir=str(adapter_dir), gradient_alignment=False,
        push_to_hub=False, learning_rate=w2s_args.backdoor_learning_rate, num_train_epochs=w2s_args.backdoor_epochs,
        max_steps=w2s_args.backdoor_max_steps, save_strategy="no",
    )
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(backdoor_model_args, "classification", num_labels=len(label_names),
                                                training_args=args, label_names=label_names)
    model = get_peft_model(model, build_peft_config(backdoor_model_args, model, "classification"))
    with state.main_process_first():
        train = tokenize_dataset(data["train"], tokenizer, max_length=script_args.max_length)
    trainer = MuScleLoRATrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                                data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    output = trainer.train()
    trainer.save_model(str(adapter_dir))
    info = {"train_loss": output.training_loss, "global_steps": trainer.state.global_step,
            "train_seconds": round(time.perf_counter() - start, 2)}
    del trainer, model
    gc.collect()
    return info


def merge_backdoor(model_args, adapter: str, label_names, target_dir: Path) -> None:
    """Merge the SEQ_CLS ``adapter`` into the full-precision base and save the student to ``target_dir``."""
    from accelerate import PartialState
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification

    import hf_backdoor_defense  # noqa: F401  (registers MuScleLoRA, in case the backdoor adapter is one)

    state = PartialState()
    if state.is_main_process:
        config = PeftConfig.from_pretrained(adapter)
        if str(config.task_type) not in ("SEQ_CLS", "TaskType.SEQ_CLS"):
            raise ValueError(
                f"backdoored_adapter {adapter} has task_type={config.task_type}: W2SDefense needs a sequence "
                "classification (SEQ_CLS) adapter with its head."
            )
        tokenizer = load_tokenizer(model_args)
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(model_args.model_name_or_path), num_labels=len(label_names),
            id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
            dtype=compute_dtype(model_args), trust_remote_code=model_args.trust_remote_code,
        )
        if base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.save_pretrained(str(target_dir))
        tokenizer.save_pretrained(str(target_dir))
        del base, merged
        gc.collect()
    state.wait_for_everyone()


def prepare_student(script_args, model_args, w2s_args, training_args, data, label_names):
    """(model arguments of the backdoored student, description of where the backdoor came from)."""
    root = Path(training_args.output_dir)
    if not (w2s_args.poison_first or w2s_args.backdoored_adapter):
        return model_args, {"source": "model", "model": model_args.model_name_or_path}
    info: dict = {}
    adapter = w2s_args.backdoored_adapter
    if w2s_args.poison_first:
        adapter = str(root / "backdoor_adapter")
        info = train_backdoor(script_args, model_args, w2s_args, training_args, data, label_names, Path(adapter))
    target = root / "backdoored_model"
    merge_backdoor(model_args, adapter, label_names, target)
    student_args = copy.copy(model_args)
    student_args.model_name_or_path = str(target)
    student_args.tokenizer_name_or_path = None
    source = "poison_first" if w2s_args.poison_first else "adapter"
    return student_args, {"source": source, "adapter": adapter, "merged_into": model_args.model_name_or_path,
                          "model": str(target), **info}


# ---------------------------------------------------------------------------------------------- the teacher
def student_hidden_size(model_args) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(model_args.model_name_or_path),
                                        trust_remote_code=model_args.trust_remote_code)
    return config.get_text_config().hidden_size


def resolve_encoder(name: str) -> str:
    if name.lower() == "minilm":
        from hf_backdoor_defense.assets import minilm_path

        return str(minilm_path())
    return name


def prepare_teacher(script_args, w2s_args, training_args, clean, hidden_size: int):
    """(teacher, teacher tokenizer, description): loaded from ``teacher_name_or_path`` or trained on ``clean``."""
    from accelerate import PartialState
    from transformers import AutoTokenizer, TrainingArguments

    from hf_backdoor_defense.models.teacher import W2STeacher, train_teacher

    if w2s_args.teacher_name_or_path:
        teacher = W2STeacher.from_pretrained(w2s_args.teacher_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(w2s_args.teacher_name_or_path)
        return teacher.eval(), tokenizer, {"source": w2s_args.teacher_name_or_path}
    folder = Path(training_args.output_dir) / "teacher"
    args = TrainingArguments(
        output_dir=str(folder), num_train_epochs=w2s_args.teacher_epochs, max_steps=w2s_args.teacher_max_steps,
        learning_rate=w2s_args.teacher_learning_rate, per_device_train_batch_size=w2s_args.teacher_batch_size,
        save_strategy="no", report_to="none", logging_steps=training_args.logging_steps, seed=training_args.seed,
        use_cpu=training_args.use_cpu, disable_tqdm=training_args.disable_tqdm,
    )
    start = time.perf_counter()
    teacher, tokenizer = train_teacher(
        resolve_encoder(w2s_args.teacher_encoder), hidden_size, clean, output_dir=folder, args=args,
        max_length=w2s_args.teacher_max_length or script_args.max_length, pooling=w2s_args.teacher_pooling,
    )
    if PartialState().is_main_process:
        tokenizer.save_pretrained(str(folder))
    PartialState().wait_for_everyone()
    return teacher, tokenizer, {"source": "trained", "encoder": w2s_args.teacher_encoder, "folder": str(folder),
                                "train_seconds": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------------------------------------- runs
def distil_one(name, baseline, output_dir, script_args, student_args, w2s_args, training_args, data, clean,
               attack, label_names, teacher, teacher_tokenizer, evaluate_before: bool):
    """Load the student, (evaluate it,) train one adapter, save and evaluate it; (trainer, before, metrics)."""
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import set_seed

    from hf_backdoor_defense.atomic import write_json_atomic
    from hf_backdoor_defense.metrics import evaluate_backdoor
    from hf_backdoor_defense.trainers import W2SDefenseTrainer

    state = PartialState()
    args = distillation_arguments(training_args, script_args, w2s_args, output_dir, baseline=baseline)
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(student_args, "classification", num_labels=len(label_names),
                                                training_args=args, label_names=label_names)
    evaluation = dict(batch_size=script_args.eval_batch_size, max_length=script_args.max_length)
    before = None
    if evaluate_before and state.is_main_process:
        before = evaluate_backdoor(model, tokenizer, data["test"], attack, **evaluation)
        print(f"[backdoored student] CACC {100 * before['cacc']:.1f}%  ASR {100 * before['asr']:.1f}%", flush=True)
    state.wait_for_everyone()
    model = get_peft_model(model, build_peft_config(student_args, model, "classification"))
    if state.is_main_process:
        print(f"[{name}] ", end="")
        model.print_trainable_parameters()
    trainer = W2SDefenseTrainer(model=model, teacher=teacher, teacher_tokenizer=teacher_tokenizer, args=args,
                                train_dataset=clean, processing_class=tokenizer)
    start = time.perf_counter()
    output = trainer.train()
    train_seconds = time.perf_counter() - start
    trainer.save_model(str(output_dir))  # the adapter (and head), safetensors; never the teacher
    metrics = None
    if state.is_main_process:
        tokenizer.save_pretrained(str(output_dir))
        scores = evaluate_backdoor(trainer.model, tokenizer, data["test"], attack, **evaluation)
        components = [h for h in trainer.state.log_history if "loss_ce" in h]
        metrics = {
            "run": name,
            "peft_type": student_args.peft_type,
            "loss_weights": {"alpha_ce": args.alpha_ce, "beta_kd": args.beta_kd, "gamma_feature": args.gamma_feature,
                             "temperature": args.temperature, "feature_distance": args.feature_distance},
            "output_dir": str(output_dir),
            **scores,
            "train_loss": output.training_loss,
            "last_logged_components": {k: components[-1][k] for k in ("loss_ce", "loss_kd", "loss_feature")}
            if components else None,
            "train_seconds": round(train_seconds, 2),
            "global_steps": trainer.state.global_step,
            "world_size": state.num_processes,
        }
        write_json_atomic(Path(output_dir) / RESULTS_FILE, metrics)
        print(f"[{name}] CACC {100 * scores['cacc']:.1f}%  ASR {100 * scores['asr']:.1f}%", flush=True)
    state.wait_for_everyone()
    return trainer, before, metrics


def main(argv=None, recipe="w2sdefense_llama2") -> dict | None:
    """Run the recipe; returns the results dict on the main process (None elsewhere)."""
    script_args, model_args, w2s_args, training_args = parse(argv)
    check_w2s_launch_supported(training_args)
    check_recipe_output_dir(script_args, training_args, [resolve_model_path(model_args.model_name_or_path),
                                                         script_args.dataset, w2s_args.teacher_name_or_path])
    for baseline in (False, True):  # validate the loss settings before any model is loaded
        distillation_arguments(training_args, script_args, w2s_args, training_args.output_dir, baseline=baseline)
    from accelerate import PartialState

    from hf_backdoor_defense.atomic import write_json_atomic
    from hf_backdoor_defense.data import subsample
    from hf_backdoor_defense.metrics import evaluate_backdoor

    state = PartialState()
    with state.main_process_first():
        data, attack = build_classification_data(script_args, training_args.seed, load_tokenizer(model_args))
        clean = subsample(data["reference"], w2s_args.clean_size, training_args.seed, stratify=True)
    label_names = data["train"].features["label"].names
    student_args, backdoor = prepare_student(script_args, model_args, w2s_args, training_args, data, label_names)
    teacher, teacher_tokenizer, teacher_info = prepare_teacher(script_args, w2s_args, training_args, clean,
                                                               student_hidden_size(student_args))
    if state.is_main_process:
        teacher_info.update(evaluate_backdoor(teacher, teacher_tokenizer, data["test"], attack,
                                              batch_size=script_args.eval_batch_size,
                                              max_length=w2s_args.teacher_max_length or script_args.max_length))
        print(f"[teacher] CACC {100 * teacher_info['cacc']:.1f}%  ASR {100 * teacher_info['asr']:.1f}%", flush=True)
    root = Path(training_args.output_dir)
    runs = [("w2sdefense", False, root)]
    if script_args.compare_with_baseline:
        runs = [("lora (clean fine-tune)", True, root / "baseline"), ("w2sdefense", False, root / "defense")]
    results = launch_record(recipe, script_args, model_args, attack, student=backdoor,
                            clean_split=script_args.reference_split, n_train=len(data["train"]),
                            n_poisoned=int(sum(data["train"]["is_poisoned"])), n_clean=len(clean),
                            teacher=teacher_info, runs=[])
    trainer = None
    for i, (name, baseline, output_dir) in enumerate(runs):
        if trainer is not None:  # free the previous run's model before loading the next one
            del trainer
            gc.collect()
        trainer, before, metrics = distil_one(name, baseline, output_dir, script_args, student_args, w2s_args,
                                              training_args, data, clean, attack, label_names, teacher,
                                              teacher_tokenizer, evaluate_before=i == 0)
        if before is not None:
            results["before"] = before
        if metrics is not None:
            results["runs"].append(metrics)
    if not state.is_main_process:
        return None
    rows = [{"run": "backdoored (before)", **results["before"]}, {"run": "teacher", **teacher_info}, *results["runs"]]
    results["table"] = format_table(rows)
    print("\n" + results["table"], flush=True)
    if training_args.push_to_hub:
        commit = push_results(trainer.model, training_args, script_args, student_args, results["runs"][-1],
                              "w2sdefense")
        results["hub"] = {"repo_id": training_args.hub_model_id, "commit": str(getattr(commit, "oid", commit))}
    path = write_json_atomic(root / RESULTS_FILE, results)
    print(f"results written to {path}", flush=True)
    return results


if __name__ == "__main__":
    run_cli(main)
