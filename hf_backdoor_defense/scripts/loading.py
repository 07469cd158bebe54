"""The scripts' model stage: the base model and tokenizer (offline names, 4-bit / 8-bit, one device per
process under Accelerate, k-bit preparation) and the PEFT config of ``--peft_type``.

Example:
    >>> model, tokenizer = load_model_and_tokenizer(model_args, "classification", num_labels=2)  # doctest: +SKIP
    >>> model = get_peft_model(model, build_peft_config(model_args, model, "classification"))    # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_backdoor_defense.assets import resolve_model_path
from hf_backdoor_defense.launch import launch_backend
from hf_backdoor_defense.scripts.utils import _DTYPES

if TYPE_CHECKING:
    from hf_backdoor_defense.scripts.utils import ModelArguments


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
        storage_dtype = dtype if launch_backend() == "fsdp" else torch.uint8
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

    if not torch.cuda.is_available() or launch_backend() == "fsdp":
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
    if quant is not None and launch_backend() == "fsdp":
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
