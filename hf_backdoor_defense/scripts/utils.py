"""The scripts' command-line stage: their arguments (`ScriptArguments`, `ModelArguments`), the parsing with a
YAML ``--config`` (`parse_args`), the checks made before anything loads (launch backend, output folder) and
`run_cli`, which turns a configuration error into one line and exit code 2. The later stages are
`scripts.data`, `scripts.loading` and `scripts.outputs`.

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
from hf_backdoor_defense.launch import end_process_group

PEFT_TYPES = ("lora", "musclelora")
TASKS = ("classification", "instruction")
ATTACK_NAMES = ("badnets", "addsent")
#: Poisoners of instruction data (``--task instruction``): `TargetedRefusal` and `SentimentSteering`.
GENERATIVE_ATTACK_NAMES = ("targeted_refusal", "sentiment_steering")
PROMPT_FORMATS = ("auto", "chat", "plain")


#: dtype names the arguments accept -> torch attribute names.
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "uint8": "uint8"}


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
        if self.num_triggers != 1 and self.attack != "badnets":
            raise ValueError(f"num_triggers={self.num_triggers} applies to attack 'badnets' only, not "
                             f"{self.attack!r}: drop it or use --attack badnets.")
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
    `TrainingArguments` gets ``--use_cpu true`` unless the command line or the file sets ``use_cpu``, so that
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

        if not torch.cuda.is_available() and config_value(argv, "use_cpu", None) is None:
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
def check_launch_supported(gradient_alignment: bool, training_args=None) -> None:
    """Refuse, before any model is loaded, a DeepSpeed or FSDP launch of gradient alignment (the plain
    baseline, ``gradient_alignment=False``, runs under both, e.g. with fsdp_qlora.yaml)."""
    from hf_backdoor_defense.launch import GRADIENT_EDIT, launch_backend, refuse_sharded_launch

    if gradient_alignment:
        refuse_sharded_launch(launch_backend(training_args), "MuScleLoRA gradient alignment", GRADIENT_EDIT,
                              off_switch="pass --gradient_alignment false for the plain baseline")


def check_recipe_output_dir(script_args: ScriptArguments, training_args, inputs) -> None:
    """Refuse an ``--output_dir`` that overlaps an input (``inputs``: paths or Hub names the run reads) or that
    is a non-empty folder without ``--overwrite_output_dir``; called before anything is loaded."""
    from hf_backdoor_defense.atomic import check_output_dir

    check_output_dir(training_args.output_dir, inputs, script_args.overwrite_output_dir,
                     output_flag="--output_dir", overwrite_flag="--overwrite_output_dir")


# ---------------------------------------------------------------------------------------------- entry point
#: Errors that mean "the configuration is wrong": one line on stderr and exit code 2, not a traceback.
CONFIG_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def run_cli(main_fn, *args, **kwargs) -> None:
    """Run ``main_fn(*args, **kwargs)``; configuration errors print one line and exit with code 2
    (``HBD_DEBUG=1`` shows the traceback instead). After a success, the distributed process group a launch
    made is ended (:func:`hf_backdoor_defense.launch.end_process_group`)."""
    from hf_backdoor_defense.hub import HubOfflineError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main_fn(*args, **kwargs)
    except (*CONFIG_ERRORS, HubOfflineError) as err:
        if os.environ.get("HBD_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # After a success only: on an error path another rank may still wait in a collective, and ending the group
    # there could hang (NCCL) where exiting lets the launcher stop the run.
    end_process_group()
