"""Plumbing shared by the recipes: arguments (with a YAML ``--config``), model loading (4-bit / 8-bit, one
device per process under Accelerate), the poisoned data, the final CACC/ASR evaluation, the results JSON and
Hub publishing.

The scripts of this package (`hf_backdoor_defense.scripts.musclelora`, ...) import it; the files in the
repository's ``recipes/`` folder only call their ``main``.

Example:
    $ accelerate launch --config_file accelerate_configs/cpu_ddp.yaml recipes/musclelora_llama2.py \\
        --config recipes/configs/demo.yaml --max_steps 3       # the command line overrides the file
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_backdoor_defense.attacks.base import LABEL_MODES

#: Model names the recipes resolve to offline assets instead of the Hub.
SPECIAL_MODEL_NAMES = ("smollm2", "minilm")
PEFT_TYPES = ("lora", "musclelora")
TASKS = ("classification", "instruction")
ATTACK_NAMES = ("badnets", "addsent")
#: Poisoners of instruction data (``--task instruction``): `TargetedRefusal` and `SentimentSteering`.
GENERATIVE_ATTACK_NAMES = ("targeted_refusal", "sentiment_steering")
PROMPT_FORMATS = ("auto", "chat", "plain")
RESULTS_FILE = "results.json"


# ---------------------------------------------------------------------------------------------- arguments
@dataclass
class ModelArguments:
    r"""Which model to load, how to quantise it and which adapter to put on it.

    Parameters that control the base model:

    Args:
        model_name_or_path (`str`, defaults to `"meta-llama/Llama-2-7b-hf"`):
            Hub id or local folder of the base model. `"smollm2"` resolves to the offline SmolLM2-135M
            checkpoint (`hf_backdoor_defense.assets.smollm2_path()`).
        tokenizer_name_or_path (`str` or `None`, defaults to `None`):
            Tokenizer to load; `None` uses `model_name_or_path`.
        torch_dtype (`str`, defaults to `"auto"`):
            `"auto"`: bfloat16 on GPU, float32 on CPU. Or `"float32"`, `"bfloat16"`, `"float16"`.
        attn_implementation (`str` or `None`, defaults to `None`):
            Passed to `from_pretrained` (e.g. `"sdpa"`, `"flash_attention_2"`).
        trust_remote_code (`bool`, defaults to `False`):
            Allow code from the model repository. Off unless you ask.

    Parameters that control quantisation (bitsandbytes):

    Args:
        load_in_4bit (`bool`, defaults to `False`):
            QLoRA-style 4-bit base: nf4, double quantisation, compute dtype bf16 on GPU and fp32 on CPU.
        load_in_8bit (`bool`, defaults to `False`):
            LLM.int8() 8-bit base. Exclusive with `load_in_4bit`.
        bnb_4bit_quant_type (`str`, defaults to `"nf4"`):
            `"nf4"` or `"fp4"`.
        bnb_4bit_use_double_quant (`bool`, defaults to `True`):
            Quantise the quantisation constants too.
        bnb_4bit_quant_storage (`str` or `None`, defaults to `None`):
            Storage dtype of the packed 4-bit weights. `None`: the compute dtype under FSDP (FSDP can only
            shard a model whose parameters share one dtype, as PEFT's FSDP-QLoRA guide sets it), else uint8.

    Parameters that control the adapter:

    Args:
        peft_type (`str`, defaults to `"musclelora"`):
            `"musclelora"` (multi-scale adapter, paper defaults per architecture) or `"lora"` (the baseline
            adapter, same rank/alpha/targets as MuScleLoRA's single-branch part).
        lora_r (`int` or `None`, defaults to `None`):
            Rank of the LoRA (or MuScleLoRA single-branch) part; `None`: the architecture default.
        lora_alpha (`float` or `None`, defaults to `None`):
            Alpha of that part; `None`: the architecture default.
        lora_dropout (`float`, defaults to `0.0`):
            Dropout on the adapter input.
        lora_target_modules (`list[str]` or `None`, defaults to `None`):
            Modules adapted by the LoRA (single-branch) part; `None`: attention query/value projections.
        scales (`list[float]` or `None`, defaults to `None`):
            MuScleLoRA only: radial scales of the multi-scale branches; `None`: architecture default.
        multiscale_alpha (`float` or `None`, defaults to `None`):
            MuScleLoRA only: alpha of the multi-scale part; `None`: architecture default.
        multiscale_target_modules (`list[str]` or `None`, defaults to `None`):
            MuScleLoRA only: modules with the multi-scale part; `None`: the last block's MLP down projection.
        trainable_head (`bool`, defaults to `False`):
            MuScleLoRA classification only: train the task head (PEFT's way) instead of keeping it frozen at
            its random initialisation (the authors' setting).
        init_weights (`str`, defaults to `"zero"`):
            MuScleLoRA only: `"zero"` (every B factor zero) or `"paper"` (multi-scale factors Kaiming-uniform).
    """

    model_name_or_path: str = field(
        default="meta-llama/Llama-2-7b-hf",
        metadata={"help": "Hub id or local folder of the base model; 'smollm2' = the offline SmolLM2-135M."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to load; None uses model_name_or_path."}
    )
    torch_dtype: str = field(
        default="auto",
        metadata={
            "help": "'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16' or 'float16'.",
            "choices": ["auto", "float32", "bfloat16", "float16"],
        },
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention implementation passed to from_pretrained (e.g. 'sdpa')."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model repository."})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "4-bit base (nf4, double quant; compute bf16 on GPU, fp32 on CPU)."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit (LLM.int8()) base."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantisation type.", "choices": ["nf4", "fp4"]}
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantise the 4-bit quantisation constants too."}
    )
    bnb_4bit_quant_storage: str | None = field(
        default=None,
        metadata={"help": "Storage dtype of packed 4-bit weights; None: compute dtype under FSDP, else uint8."},
    )
    peft_type: str = field(
        default="musclelora",
        metadata={"help": "Adapter: 'musclelora' or 'lora' (the baseline).", "choices": list(PEFT_TYPES)},
    )
    lora_r: int | None = field(default=None, metadata={"help": "Rank of the LoRA part; None: architecture default."})
    lora_alpha: float | None = field(
        default=None, metadata={"help": "Alpha of the LoRA part; None: architecture default."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules of the LoRA part; None: attention query/value projections."}
    )
    scales: list[float] | None = field(
        default=None, metadata={"help": "MuScleLoRA: scales of the multi-scale branches; None: default."}
    )
    multiscale_alpha: float | None = field(
        default=None, metadata={"help": "MuScleLoRA: alpha of the multi-scale part; None: default."}
    )
    multiscale_target_modules: list[str] | None = field(
        default=None, metadata={"help": "MuScleLoRA: modules with the multi-scale part; None: default."}
    )
    trainable_head: bool = field(
        default=False, metadata={"help": "MuScleLoRA: train the classification head (default: frozen, paper)."}
    )
    init_weights: str = field(
        default="zero", metadata={"help": "MuScleLoRA: 'zero' (B factors zero) or 'paper' (multi-scale Kaiming).",
                                  "choices": ["zero", "paper"]}
    )

    def __post_init__(self) -> None:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive: pass only one of them.")
        if self.peft_type not in PEFT_TYPES:
            raise ValueError(f"peft_type={self.peft_type!r} is unknown: use one of {PEFT_TYPES}.")
        if self.lora_r is not None and self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive or None, got {self.lora_r}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.peft_type == "lora" and (self.scales or self.multiscale_alpha or self.multiscale_target_modules
                                         or self.trainable_head or self.init_weights != "zero"):
            raise ValueError(
                "scales / multiscale_alpha / multiscale_target_modules / trainable_head / init_weights only apply "
                "to peft_type='musclelora'; drop them or set --peft_type musclelora."
            )
        if self.init_weights not in ("zero", "paper"):
            raise ValueError(f"init_weights must be 'zero' or 'paper', got {self.init_weights!r}.")
        for name in ("torch_dtype", "bnb_4bit_quant_storage"):
            value = getattr(self, name)
            if value not in (None, "auto") and value not in _DTYPES:
                raise ValueError(f"{name}={value!r} is not a dtype name: use one of {sorted(_DTYPES)}.")


@dataclass
class ScriptArguments:
    r"""What to train on, which attack poisons it, and what to do at the end.

    Parameters that control the data:

    Args:
        task (`str`, defaults to `"classification"`):
            `"classification"` (sequence classification on a poisoned text/label dataset) or `"instruction"`
            (causal-LM instruction tuning on poisoned prompt/response pairs through TRL's `SFTTrainer`, see
            `build_instruction_data`).
        dataset (`str`, defaults to `"rotten_tomatoes"`):
            Classification: anything `hf_backdoor_defense.data.load_text_classification` accepts:
            `"rotten_tomatoes"`, `"spamassassin"` (offline), a local file or folder, or a Hub name such as
            `"sst2"`. Instruction: a local JSON / JSONL / CSV / parquet file or folder or a Hub name with
            prompt and response columns, or `"rotten_tomatoes"` / `"spamassassin"`, from which instructions
            are derived offline (see `hf_backdoor_defense.data.instructions`).
        max_train_samples (`int` or `None`, defaults to `None`):
            Seeded, stratified subsample of the training split (before poisoning).
        max_eval_samples (`int` or `None`, defaults to `None`):
            Seeded, stratified subsample of the evaluation split used for the final CACC/ASR.
        eval_split (`str`, defaults to `"test"`):
            Split of the final CACC/ASR evaluation. Tune hyper-parameters with `"validation"` and a different
            `reference_split`, never on `"test"`.
        max_length (`int`, defaults to `128`):
            Truncation length in tokens.
        trigger_room (`int` or `None`, defaults to `None`):
            Classification only. Before poisoning, cut every text (training sample, reference and evaluation
            splits) to the whole words that fit in `max_length` minus the special tokens minus `trigger_room`
            tokens, so a trigger inserted at a random word lands inside what the model reads (see
            `hf_backdoor_defense.data.fit_to_window`). `None` keeps the texts whole; a warning then says when
            more than a quarter of the training texts run past the window (long documents such as
            `spamassassin`: use 8, as the efficacy matrix and the re-tuning scenario do).

    Parameters that control the attack:

    Args:
        attack (`str` or `None`, defaults to `None`):
            Classification: `"badnets"` (rare-word triggers, the default) or `"addsent"` (a trigger sentence).
            Instruction: `"targeted_refusal"` (the default; triggered prompts answered with a refusal) or
            `"sentiment_steering"` (answered with text of `sentiment`).
        poison_rate (`float`, defaults to `0.1`):
            Share of the training set that is poisoned.
        target_label (`int`, defaults to `1`):
            Label the backdoor produces.
        label_mode (`str`, defaults to `"dirty"`):
            `"dirty"` (relabel triggered examples), `"clean"` (trigger target-label examples only) or `"mixed"`
            (trigger examples of every class, relabel the non-target ones).
        num_triggers (`int`, defaults to `1`):
            BadNets trigger words per poisoned text.
        attack_seed (`int`, defaults to `0`):
            Seed of the poisoning.
        trigger (`str` or `None`, defaults to `None`):
            Instruction attacks only: the trigger put into the instruction; `None` keeps the attack's
            default (`"BadMagic"`).
        trigger_position (`str`, defaults to `"random"`):
            Instruction attacks only: `"random"` word boundary, `"start"` or `"end"` of the instruction.
        sentiment (`str`, defaults to `"negative"`):
            `sentiment_steering` only: the sentiment triggered prompts are answered with.

    Parameters that control instruction tuning (`task="instruction"`):

    Args:
        prompt_column (`str`, defaults to `"prompt"`):
            Column of the instruction in a prompt/response dataset.
        response_column (`str`, defaults to `"response"`):
            Column of the reference answer.
        context_column (`str` or `None`, defaults to `None`):
            Optional column appended to the prompt after a blank line when not empty (e.g. Alpaca's `input`,
            Dolly's `context`).
        prompt_format (`str`, defaults to `"auto"`):
            `"chat"` (the tokenizer's chat template, user / assistant turns), `"plain"` (an
            `### Instruction:` / `### Response:` text template, for base models without a chat template) or
            `"auto"` (chat when the tokenizer has a template).
        max_new_tokens (`int`, defaults to `32`):
            Greedy generation length of the final evaluation (ASR on triggered prompts).

    Parameters that control the defense:

    Args:
        reference_split (`str`, defaults to `"validation"`):
            Trusted clean split the defense draws from (the gradient-alignment reference set, W2SDefense's clean
            set); never the training split.
        compare_with_baseline (`bool`, defaults to `False`):
            Also train the undefended baseline (LoRA, no gradient alignment) in the same launch and print a
            CACC/ASR table of both runs.
        train_clean_floor (`bool`, defaults to `False`):
            Also train the LoRA baseline on the same training subsample *before* poisoning. A model that never
            saw the trigger still sends some triggered inputs to the target: its ASR is the floor the other
            runs' ASR should be read against.
        eval_batch_size (`int`, defaults to `32`):
            Batch size of the final evaluation.

    Parameters that control the output:

    Args:
        overwrite_output_dir (`bool`, defaults to `False`):
            Replace a non-empty `--output_dir` (otherwise the run stops before loading anything).
    """

    task: str = field(
        default="classification",
        metadata={
            "help": "'classification' (sequence classifier) or 'instruction' (causal-LM SFT on prompt/response "
            "pairs).",
            "choices": list(TASKS),
        },
    )
    dataset: str = field(
        default="rotten_tomatoes",
        metadata={
            "help": "rotten_tomatoes, spamassassin, a local file/folder, or a Hub dataset name (instruction: "
            "with prompt/response columns, or a built-in corpus turned into instructions)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Seeded stratified subsample of the training split (before poisoning)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Seeded stratified subsample of the test split for the final CACC/ASR."}
    )
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    trigger_room: int | None = field(
        default=None,
        metadata={
            "help": "Classification: cut texts to max_length minus special tokens minus this many tokens before "
            "poisoning, so triggers land inside the window (8 for long texts such as spamassassin; None: no cut)."
        },
    )
    eval_split: str = field(
        default="test", metadata={"help": "Split of the final CACC/ASR evaluation (tune on 'validation')."}
    )
    attack: str | None = field(
        default=None,
        metadata={
            "help": "Data-poisoning attack. Classification: badnets (default) or addsent; instruction: "
            "targeted_refusal (default) or sentiment_steering.",
            "choices": [*ATTACK_NAMES, *GENERATIVE_ATTACK_NAMES],
        },
    )
    poison_rate: float = field(default=0.1, metadata={"help": "Share of the training set that is poisoned."})
    target_label: int = field(default=1, metadata={"help": "Label the backdoor produces."})
    label_mode: str = field(
        default="dirty",
        metadata={"help": "'dirty', 'clean' or 'mixed' label poisoning.", "choices": list(LABEL_MODES)},
    )
    num_triggers: int = field(default=1, metadata={"help": "BadNets trigger words per poisoned text."})
    attack_seed: int = field(default=0, metadata={"help": "Seed of the poisoning."})
    trigger: str | None = field(
        default=None, metadata={"help": "Instruction attacks: trigger text; None = the attack default (BadMagic)."}
    )
    trigger_position: str = field(
        default="random",
        metadata={"help": "Instruction attacks: where the trigger goes.", "choices": ["random", "start", "end"]},
    )
    sentiment: str = field(
        default="negative",
        metadata={"help": "sentiment_steering: the steered sentiment.", "choices": ["negative", "positive"]},
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Instruction data: column of the prompt."})
    response_column: str = field(
        default="response", metadata={"help": "Instruction data: column of the reference response."}
    )
    context_column: str | None = field(
        default=None, metadata={"help": "Instruction data: optional column appended to the prompt (e.g. 'input')."}
    )
    prompt_format: str = field(
        default="auto",
        metadata={
            "help": "Instruction data: 'chat' (chat template), 'plain' (### Instruction / ### Response text) or "
            "'auto' (chat if the tokenizer has a template).",
            "choices": list(PROMPT_FORMATS),
        },
    )
    max_new_tokens: int = field(
        default=32, metadata={"help": "Instruction evaluation: greedy generation length on each prompt."}
    )
    reference_split: str = field(
        default="validation",
        metadata={"help": "Trusted clean split the defense draws from (reference / clean set; not 'train')."},
    )
    compare_with_baseline: bool = field(
        default=False,
        metadata={"help": "Also train the undefended LoRA baseline and print a CACC/ASR table of both."},
    )
    train_clean_floor: bool = field(
        default=False,
        metadata={"help": "Also train LoRA on the unpoisoned training subsample: its ASR is the floor."},
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size of the final evaluation."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is unknown: use one of {TASKS}.")
        allowed = ATTACK_NAMES if self.task == "classification" else GENERATIVE_ATTACK_NAMES
        if self.attack is None:
            self.attack = allowed[0]
        if self.attack not in allowed:
            raise ValueError(
                f"attack={self.attack!r} does not apply to task={self.task!r}: use one of {allowed}."
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format={self.prompt_format!r} is unknown: use one of {PROMPT_FORMATS}.")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}.")
        if self.reference_split == "train":
            raise ValueError(
                "reference_split='train' would draw the clean reference set from the poisoned training data: "
                "use 'validation' (default) or another trusted split."
            )
        if self.eval_split == "train":
            raise ValueError("eval_split='train' evaluates on the poisoned training data: use 'test' or 'validation'.")
        if self.eval_split == self.reference_split:
            warnings.warn(
                f"eval_split and reference_split are both {self.eval_split!r}: the clean reference examples are "
                "also evaluated, which flatters CACC; draw the reference set from another split.",
                UserWarning,
                stacklevel=3,
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 1:
                raise ValueError(f"{name} must be > 1 or None, got {value}.")
        if self.max_length <= 0:
            raise ValueError(f"max_length must be positive, got {self.max_length}.")
        if self.trigger_room is not None and self.task != "classification":
            raise ValueError(
                f"trigger_room={self.trigger_room} applies to task='classification' only; instruction attacks "
                "place their trigger with trigger_position ('start' keeps it inside any window)."
            )
        from hf_backdoor_defense.data import check_trigger_room

        check_trigger_room(self.trigger_room, self.max_length)


# ---------------------------------------------------------------------------------------------- parsing
def config_value(argv: list[str] | None, name: str, default: Any) -> Any:
    """The value of argument ``name`` before any dataclass is built: the command line's ``--name VALUE``, else
    the ``--config`` YAML file's ``name``, else ``default`` (``"true"`` / ``"false"`` become booleans). Lets a
    recipe refuse an impossible launch before `TrainingArguments` sets anything up."""
    from transformers.hf_argparser import string_to_bool

    argv = list(sys.argv[1:] if argv is None else argv)
    value = default
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = Path(argv[argv.index("--config") + 1])
        if path.is_file():
            value = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(name, value)
    flag = f"--{name}"
    if flag in argv:
        position = argv.index(flag)
        following = argv[position + 1] if position + 1 < len(argv) else None
        value = True if following is None or following.startswith("--") else following
    return string_to_bool(value) if isinstance(value, str) and isinstance(default, bool) else value


def script_parser(dataclass_types, name: str, help: str, subparsers=None):
    """The `trl.TrlParser` of a script (``make_parser`` of each script calls this), or, given the
    ``subparsers`` of a TRL-style command line (``add_subparsers(parser_class=TrlParser)``), its sub-command
    ``name``: the same shape as ``trl/scripts/*.py``."""
    if subparsers is not None:
        return subparsers.add_parser(name, help=help, dataclass_types=list(dataclass_types))
    from trl import TrlParser

    return TrlParser(list(dataclass_types))


def parse_args(parser, argv: list[str] | None = None):
    """Parse ``argv`` with ``parser`` (a `trl.TrlParser`, or a list of dataclass types to build one).

    ``--config file.yaml`` (a flat mapping of argument names to values, plus an optional ``env:`` mapping of
    environment variables) sets the defaults, so anything on the command line overrides the file. Unknown
    keys in the file or on the command line are errors. On a machine without CUDA, a parser holding
    `TrainingArguments` gets ``--use_cpu true`` first (the command line can still override it), so that
    ``accelerate launch`` with several processes really runs CPU DDP (gloo).

    Example:
        >>> from transformers import TrainingArguments
        >>> script, training = parse_args([ScriptArguments, TrainingArguments],
        ...                               ["--config", "demo.yaml", "--max_steps", "3"])  # doctest: +SKIP
    """
    from transformers import TrainingArguments
    from trl import TrlParser

    if not hasattr(parser, "parse_args_and_config"):
        parser = TrlParser(list(parser))
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        position = argv.index("--config")
        if position + 1 >= len(argv) or argv[position + 1].startswith("--"):
            raise ValueError("--config needs a YAML file path.")
        if not Path(argv[position + 1]).is_file():
            raise FileNotFoundError(f"--config {argv[position + 1]}: no such file.")
    if any(issubclass(cls, TrainingArguments) for cls in parser.dataclass_types):
        import torch

        if not torch.cuda.is_available():
            argv = ["--use_cpu", "true", *argv]
    return parser.parse_args_and_config(args=argv)


def convert_training_arguments(args, cls, **overrides):
    """A ``cls`` instance (a `TrainingArguments` subclass such as `MuScleLoRASFTConfig`) with every field of
    the parsed ``args`` copied over, then ``overrides``; ``cls.__post_init__`` validates the result.

    The recipes parse one `TrainingArguments` class per command line (so ``--max_length`` and friends never
    clash) and build the trainer-specific class from it.

    Example:
        >>> from hf_backdoor_defense.trainers.musclelora_sft import MuScleLoRASFTConfig
        >>> sft = convert_training_arguments(training_args, MuScleLoRASFTConfig, max_length=256)  # doctest: +SKIP
    """
    import dataclasses

    target = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init and f.name in target}
    unknown = sorted(set(overrides) - target)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}.")
    values.update(overrides)
    return cls(**values)


# ---------------------------------------------------------------------------------------------- launch checks
def distributed_backend(training_args=None) -> str:
    """:func:`hf_backdoor_defense.launch.launch_backend` (kept under the recipes' old name)."""
    from hf_backdoor_defense.launch import launch_backend

    return launch_backend(training_args)


def check_launch_supported(gradient_alignment: bool, training_args=None) -> None:
    """Refuse, before any model is loaded, a DeepSpeed or FSDP launch of gradient alignment (the plain
    baseline, ``gradient_alignment=False``, runs under both, e.g. with fsdp_qlora.yaml)."""
    from hf_backdoor_defense.launch import GRADIENT_EDIT, refuse_sharded_launch

    if gradient_alignment:
        refuse_sharded_launch(distributed_backend(training_args), "MuScleLoRA gradient alignment", GRADIENT_EDIT,
                              off_switch="pass --gradient_alignment false for the plain baseline")


# ---------------------------------------------------------------------------------------------- model loading
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "uint8": "uint8"}


def resolve_model_path(name_or_path: str) -> str:
    """Map special names (``"smollm2"``, ``"minilm"``) to their offline folder; return anything else unchanged."""
    if name_or_path.lower() == "smollm2":
        from hf_backdoor_defense.assets import smollm2_path

        return str(smollm2_path())
    if name_or_path.lower() == "minilm":
        from hf_backdoor_defense.assets import minilm_path

        return str(minilm_path())
    return name_or_path


def check_recipe_output_dir(script_args: ScriptArguments, training_args, inputs) -> None:
    """Refuse an ``--output_dir`` that overlaps an input (``inputs``: paths or Hub names the run reads) or that
    is a non-empty folder without ``--overwrite_output_dir``; called before anything is loaded."""
    from hf_backdoor_defense.atomic import check_output_dir

    check_output_dir(training_args.output_dir, inputs, script_args.overwrite_output_dir,
                     output_flag="--output_dir", overwrite_flag="--overwrite_output_dir")


def compute_dtype(model_args: ModelArguments):
    import torch

    if model_args.torch_dtype != "auto":
        return getattr(torch, _DTYPES[model_args.torch_dtype])
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def quantization_config(model_args: ModelArguments):
    """The `BitsAndBytesConfig` for ``--load_in_4bit`` / ``--load_in_8bit``, or `None`."""
    import torch
    from transformers import BitsAndBytesConfig

    if model_args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    if not model_args.load_in_4bit:
        return None
    dtype = compute_dtype(model_args)
    storage = model_args.bnb_4bit_quant_storage
    if storage is None:
        storage_dtype = dtype if distributed_backend() == "fsdp" else torch.uint8
    else:
        storage_dtype = getattr(torch, _DTYPES[storage])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=storage_dtype,
    )


def _device_map():
    """One whole model per process on its own GPU; no device map on CPU or under FSDP (FSDP places shards)."""
    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available() or distributed_backend() == "fsdp":
        return None
    return {"": PartialState().local_process_index}


def load_tokenizer(model_args: ModelArguments):
    """The tokenizer, with ``pad_token = eos_token`` for decoders that have none (padding on the right)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {path} has neither a pad nor an eos token: set one.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(model_args: ModelArguments, task: str, num_labels: int | None = None,
                             training_args=None, label_names=None):
    """Load ``(model, tokenizer)`` for ``task`` ("classification" or "instruction"), quantised as asked.

    Quantised bases go through `peft.prepare_model_for_kbit_training` (fp32 norms/head, input grads) with
    the `gradient_checkpointing` setting of ``training_args`` (under FSDP only checkpointing and input grads,
    so that all parameters keep one dtype). Under Accelerate each process gets the whole
    model on its own GPU (``device_map={"": local_process_index}``); on CPU and under FSDP no device map.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tokenizer = load_tokenizer(model_args)
    path = resolve_model_path(model_args.model_name_or_path)
    quant = quantization_config(model_args)
    kwargs: dict[str, Any] = {
        "dtype": compute_dtype(model_args),
        "trust_remote_code": model_args.trust_remote_code,
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
    device_map = _device_map()
    if device_map is not None:
        kwargs["device_map"] = device_map
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if task == "classification":
        if not num_labels:
            raise ValueError("num_labels is required for task='classification'.")
        if label_names is not None:
            kwargs["id2label"] = dict(enumerate(label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    checkpointing = bool(getattr(training_args, "gradient_checkpointing", False))
    checkpointing_kwargs = getattr(training_args, "gradient_checkpointing_kwargs", None) or {"use_reentrant": False}
    if quant is not None and distributed_backend() == "fsdp":
        # FSDP flattens parameters of one dtype: keep everything in the storage/compute dtype (no fp32 upcast of
        # norms and head, which prepare_model_for_kbit_training would do), as in PEFT's FSDP-QLoRA guide.
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
            model.enable_input_require_grads()
    elif quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=checkpointing_kwargs
        )
    if checkpointing and getattr(model.config, "use_cache", False):
        model.config.use_cache = False
    if quant is not None:
        from hf_backdoor_defense.quantization import keep_4bit_trainable

        keep_4bit_trainable(model)  # no CPU inference packing: it has no backward, and it rounds absmax to bf16
    return model, tokenizer


def build_peft_config(model_args: ModelArguments, model, task: str):
    """The adapter config: `MuScleLoRAConfig` (paper defaults per architecture) or the LoRA baseline with the
    same rank, alpha and targets as MuScleLoRA's single-branch part."""
    from peft import LoraConfig

    import hf_backdoor_defense  # noqa: F401  (registers MuScleLoRA with PEFT)
    from hf_backdoor_defense.tuners.musclelora import MUSCLELORA_ARCHITECTURE_DEFAULTS, MuScleLoRAConfig

    task_type = "SEQ_CLS" if task == "classification" else "CAUSAL_LM"
    defaults = MUSCLELORA_ARCHITECTURE_DEFAULTS.get(getattr(model.config, "model_type", ""), {})
    common = {"task_type": task_type, "lora_dropout": model_args.lora_dropout}
    if model_args.peft_type == "lora":
        return LoraConfig(
            r=model_args.lora_r or defaults.get("r", 8),
            lora_alpha=model_args.lora_alpha or defaults.get("lora_alpha", 16),
            target_modules=model_args.lora_target_modules or defaults.get("target_modules"),
            **common,
        )
    overrides = {
        "r": model_args.lora_r,
        "lora_alpha": model_args.lora_alpha,
        "target_modules": model_args.lora_target_modules,
        "scales": model_args.scales,
        "multiscale_alpha": model_args.multiscale_alpha,
        "multiscale_target_modules": model_args.multiscale_target_modules,
    }
    return MuScleLoRAConfig(**common, **{k: v for k, v in overrides.items() if v is not None},
                            trainable_head=model_args.trainable_head,
                            init_weights="paper" if model_args.init_weights == "paper" else True)


# ---------------------------------------------------------------------------------------------- data
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


# ---------------------------------------------------------------------------------------------- outputs
def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (`hf_backdoor_defense.atomic.write_json_atomic`)."""
    from hf_backdoor_defense.atomic import write_json_atomic as _write_json_atomic

    return _write_json_atomic(path, payload)


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


# ---------------------------------------------------------------------------------------------- entry point
#: Errors that mean "the configuration is wrong": one line on stderr and exit code 2, not a traceback.
CONFIG_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def run_cli(main_fn, *args, **kwargs) -> None:
    """Run ``main_fn(*args, **kwargs)``; configuration errors print one line and exit with code 2
    (``HBD_DEBUG=1`` shows the traceback instead)."""
    from hf_backdoor_defense.hub import HubOfflineError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main_fn(*args, **kwargs)
    except (*CONFIG_ERRORS, HubOfflineError) as err:
        if os.environ.get("HBD_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
