"""PEFT adapters as purification targets: the reference is "no adapter".

For an additive adapter (LoRA, MuScleLoRA) the weight update of a layer is a product of factors,
``ΔW = s · B A``. The purifiers here work **elementwise on the factor entries** with reference value 0
for every entry: resetting an entry of ``B`` or ``A`` to zero removes its contribution to ``ΔW``, the
factor shapes do not change, and the result saves and loads as the same adapter type. ``modules_to_save``
copies (the task head of a ``SEQ_CLS`` adapter) are the head; their reference is the base model's
original module.

Loading helpers for the CLI live here too.

Example:
    >>> from hf_backdoor_defense.purification.adapters import is_adapter_dir
    >>> # is_adapter_dir("./suspect-adapter") -> True when it holds adapter_config.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["is_adapter_dir", "load_adapter_suspect", "save_purified"]


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a PEFT adapter (``adapter_config.json``)."""
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter_suspect(path: str | Path, base: str | Path | None = None, *, num_labels: int | None = None,
                         load_in_4bit: bool = False, quantization_config: Any = None, dtype: Any = None,
                         is_trainable: bool = False, trust_remote_code: bool = False, pooling: str = "cls") -> Any:
    """Load a PEFT adapter folder onto its base model (``base`` or the config's ``base_model_name_or_path``).

    ``import hf_backdoor_defense`` has registered MuScleLoRA with PEFT, so MuScleLoRA adapters load too.

    Args:
        path: The adapter folder (``adapter_config.json`` + weights).
        base: The base model; default the adapter config's ``base_model_name_or_path``.
        num_labels: Number of classes of a ``SEQ_CLS`` adapter's base.
        load_in_4bit: Shortcut for an nf4 ``BitsAndBytesConfig`` (ignored when ``quantization_config`` is given).
        quantization_config: A ``BitsAndBytesConfig`` for the base. The adapter itself stays in full precision,
            which is what the purifiers edit.
        dtype: dtype of the base model's non-quantised weights (default: the checkpoint's).
        is_trainable: Leave the adapter (and its ``modules_to_save`` head copy) trainable, for a clean fine-tune
            of the purified copy; the base stays frozen.
        trust_remote_code: Allow code from the base model's repository.
        pooling: How a ``SEQ_CLS`` adapter's base reads the encoder, as when the adapter was trained
            (:data:`hf_backdoor_defense.models.POOLING_MODES`): ``"cls"`` (transformers' classifier, the
            default) or ``"mean"`` (a mean-pooled encoder, e.g. the benchmarks' all-MiniLM-L6-v2). An adapter
            folder does not record it.
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import hf_backdoor_defense  # noqa: F401  (registers MuScleLoRA with PEFT)

    config = PeftConfig.from_pretrained(str(path))
    base = base or config.base_model_name_or_path
    if not base:
        raise ValueError("`pretrained`: the adapter names no base model; pass --pretrained.")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if quantization_config is None and load_in_4bit:
        quantization_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if dtype is not None:
        kwargs["dtype"] = dtype
    task = str(getattr(config, "task_type", "") or "")
    if task.endswith("SEQ_CLS"):
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        from ..models import load_sequence_classifier

        model = load_sequence_classifier(str(base), pooling=pooling, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    from ..quantization import keep_4bit_trainable

    keep_4bit_trainable(model)  # a 4-bit base is fine-tuned after purification: no CPU inference packing
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def save_purified(model: Any, output_dir: str | Path, tokenizer: Any = None, report: dict | None = None) -> None:
    """Save a purified model (safetensors) or adapter, the tokenizer and ``purification_report.json``."""
    from ..atomic import write_json_atomic

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(output_dir))
    if report is not None:
        write_json_atomic(output_dir / "purification_report.json", report)
