"""Purify a model on disk, end to end: the steps ``hbd purify`` and the purification recipes share.

1. :func:`check_output_dir`: refuse an output folder that overlaps an input, or is not empty (unless told).
2. :func:`load_suspect`: the suspect (a full fine-tuned checkpoint or a PEFT adapter folder), its reference
   θ₀ and the tokenizer, as a :class:`SuspectBundle`.
3. :func:`run_purification`: purify (with a fixed ratio, or choosing it on a clean dev set with
   :func:`~hf_backdoor_defense.purification.ratio_search`), then fine-tune on the clean set.
4. :func:`write_purified`: the model (safetensors), tokenizer, ``purification_report.json`` and a model card,
   into a folder built aside and renamed into place (:func:`hf_backdoor_defense.atomic.staged_directory`);
   :func:`save_purified_folder` does the same into a staging folder the caller manages.

Quantised bases: the purifiers reset weights to their θ₀ values, which quantised weights cannot take. A full
fine-tuned suspect must therefore be loaded in fp32/bf16/fp16 (:func:`load_suspect` refuses a quantisation
config for it); a PEFT adapter may sit on a 4-bit or 8-bit base, because only the adapter factors and its
head copy (full precision) are edited and fine-tuned.

Example:
    >>> from hf_backdoor_defense.purification import FinePurifying
    >>> from hf_backdoor_defense.purification.pipeline import load_suspect, run_purification, write_purified
    >>> bundle = load_suspect("./suspect", "bert-base-uncased", num_labels=2)          # doctest: +SKIP
    >>> result = run_purification(bundle, FinePurifying(ratio=0.3), clean)             # doctest: +SKIP
    >>> write_purified("./purified", result, bundle, base_model="bert-base-uncased")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import check_output_dir
from .adapters import is_adapter_dir, load_adapter_suspect, save_purified
from .base import PurificationResult, Purifier, Sequential

__all__ = [
    "SuspectBundle",
    "check_output_dir",
    "load_suspect",
    "run_purification",
    "save_purified_folder",
    "with_head_names",
    "write_purified",
    "write_purified_card",
]


@dataclass
class SuspectBundle:
    """What :func:`load_suspect` returns.

    Args:
        model: The suspect: a ``PreTrainedModel`` or, for an adapter folder, a ``PeftModel`` whose adapter
            (and ``modules_to_save`` head copy) is trainable and whose base is frozen.
        reference: The pre-trained model θ₀ (full models), or ``None`` for an adapter (reference "no adapter").
        tokenizer: The suspect's tokenizer, with a pad token (``eos`` for decoders that have none).
        head_names: Parameters the pre-trained checkpoint lacks (freshly initialised in ``reference``): the
            purifiers treat them as the head.
        base_model: Name or path of θ₀ (for the model card).
    """

    model: Any
    reference: Any
    tokenizer: Any
    head_names: tuple[str, ...] = ()
    base_model: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.reference is None


def _pad_ready(tokenizer: Any, model: Any) -> Any:
    """A tokenizer with a pad token (a copy with ``pad = eos`` when missing) and the model's ``pad_token_id``."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the suspect's tokenizer has neither a pad nor an eos token: add a pad token to it.")
        tokenizer = copy.copy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        config = getattr(m, "config", None)
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def load_suspect(
    suspect: str | Path,
    pretrained: str | None = None,
    *,
    num_labels: int | None = None,
    quantization_config: Any = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    pooling: str = "cls",
) -> SuspectBundle:
    """Load the model to purify, its reference θ₀ and its tokenizer.

    Args:
        suspect: A local folder: a full fine-tuned sequence classifier, or a PEFT adapter
            (``adapter_config.json``).
        pretrained: The pre-trained checkpoint (Hub id or folder) the suspect was fine-tuned from. Required
            for a full model; for an adapter, its base (default: the adapter config's
            ``base_model_name_or_path``).
        num_labels: Number of classes of the clean data; checked against a full suspect's head.
        quantization_config: A ``BitsAndBytesConfig`` for an adapter's base. Refused for a full model: the
            purifiers write θ₀ values into its weights, which quantised weights cannot hold.
        dtype: dtype of the loaded weights (default: the checkpoint's).
        trust_remote_code: Allow code from the model repositories (off by default).
        pooling: An adapter's base: ``"cls"`` (default) or ``"mean"``, as the adapter was trained (an
            adapter folder does not record it). A full model is loaded as it was saved (a mean-pooled
            classifier says so in its config) and its reference θ₀ is built the same way.

    Example:
        >>> bundle = load_suspect("./lora-suspect", "meta-llama/Llama-2-7b-hf", num_labels=2,  # doctest: +SKIP
        ...                       quantization_config=BitsAndBytesConfig(load_in_4bit=True))
        >>> bundle.is_adapter                                                                  # doctest: +SKIP
        True
    """
    from transformers import AutoTokenizer

    from ..models import is_mean_pooled, load_sequence_classifier

    folder = Path(suspect).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"suspect {suspect} is not a local folder: download it first (e.g. `hf download ID --local-dir DIR`)."
        )
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    if is_adapter_dir(folder):
        model = load_adapter_suspect(folder, pretrained, num_labels=num_labels, pooling=pooling,
                                     quantization_config=quantization_config, is_trainable=True, **kwargs)
        base = pretrained or model.peft_config[model.active_adapter].base_model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(str(folder if has_tokenizer else base),
                                                  trust_remote_code=trust_remote_code)
        return SuspectBundle(model, None, _pad_ready(tokenizer, model), (), str(base))
    if quantization_config is not None:
        raise ValueError(
            f"suspect {suspect} is a full fine-tuned model: the purifiers reset its weights to the pre-trained "
            "values, which quantised (4-bit/8-bit) weights cannot hold. Load it in fp32 or bf16 (drop the "
            "4-bit/8-bit option), or purify a PEFT adapter, whose base may be quantised."
        )
    if not pretrained:
        raise ValueError(
            "the pre-trained model is required for a full model: pass the checkpoint the suspect was "
            "fine-tuned from (θ₀)."
        )
    model = load_sequence_classifier(str(folder), **kwargs)  # mean-pooled or [CLS], as it was saved
    if num_labels is not None and model.config.num_labels != num_labels:
        raise ValueError(
            f"suspect {suspect} classifies into {model.config.num_labels} labels but the clean data has "
            f"{num_labels}: use clean data of the suspect's task."
        )
    pooling = "mean" if is_mean_pooled(model.config) else "cls"  # the reference reads the encoder the same way
    reference, info = load_sequence_classifier(str(pretrained), pooling=pooling, num_labels=model.config.num_labels,
                                               output_loading_info=True, **kwargs)
    reference.eval()
    # Parameters the pre-trained checkpoint lacks were freshly initialised: treat them as head.
    head = tuple(sorted(set(info.get("missing_keys", []))))
    tokenizer = AutoTokenizer.from_pretrained(str(folder if has_tokenizer else pretrained),
                                              trust_remote_code=trust_remote_code)
    tokenizer = _pad_ready(tokenizer, model)
    _pad_ready(tokenizer, reference)
    return SuspectBundle(model, reference, tokenizer, head, str(pretrained))


def with_head_names(purifier: Purifier, head_names: Sequence[str]) -> Purifier:
    """A copy of ``purifier`` (or of every step of a composition) that also treats ``head_names`` as head."""
    if not head_names:
        return purifier
    if isinstance(purifier, Sequential):
        return Sequential(*(with_head_names(p, head_names) for p in purifier.purifiers))
    names = tuple(dict.fromkeys((*getattr(purifier, "head_names", ()), *head_names)))
    return dataclasses.replace(purifier, head_names=names)


def _finetunes(args: Any) -> bool:
    return args is not None and (args.max_steps > 0 or args.num_train_epochs > 0)


def run_purification(
    bundle: SuspectBundle,
    purifier: Purifier,
    clean: Any,
    *,
    finetune_args: Any = None,
    dev: Any = None,
    ratios: Sequence[float] | None = None,
    budget: float = 0.02,
) -> PurificationResult:
    """Purify ``bundle.model`` against its reference, then fine-tune the purified copy on ``clean``.

    Args:
        bundle: From :func:`load_suspect` (its models are not modified).
        purifier: Any purifier or composition.
        clean: The small trusted clean set (``text``/``label``).
        finetune_args: :class:`~hf_backdoor_defense.trainers.purification.PurificationTrainingArguments` of
            the clean fine-tune; ``None`` (or zero epochs and steps) skips it.
        dev: Clean dev set for the ratio search (never the test split).
        ratios: Ratios to try; ``None`` keeps the purifier's ratio. With ratios, every candidate is purified
            and fine-tuned, and the most aggressive one whose dev accuracy stays within ``budget`` of the
            suspect's is kept (``report["ratio_search"]`` lists them all).
        budget: Allowed dev-accuracy drop (a fraction: 0.02 = two points).

    Returns:
        The :class:`PurificationResult` of the chosen model; its report gains ``finetune`` and, with a search,
        ``ratio_search`` (``table``, ``chosen``, ``within_budget``).
    """
    from ..trainers.purification import PurificationTrainingArguments, finetune_clean

    purifier = with_head_names(purifier, bundle.head_names)
    if ratios is not None:
        from .ratio_search import ratio_search

        if dev is None:
            raise ValueError("`dev`: the ratio search needs a clean dev set (never the test split).")
        args = finetune_args if _finetunes(finetune_args) else PurificationTrainingArguments(num_train_epochs=0)
        search = ratio_search(purifier, bundle.model, bundle.reference, clean, dev, budget, ratios,
                              tokenizer=bundle.tokenizer, finetune=args)
        result = search.result
        result.report["ratio_search"].update(chosen=search.ratio, within_budget=search.within_budget)
    else:
        result = purifier.purify(bundle.model, bundle.reference, clean, tokenizer=bundle.tokenizer)
        if _finetunes(finetune_args):
            finetune_clean(result.model, clean, bundle.tokenizer, copy.copy(finetune_args))
    result.model.eval()
    if _finetunes(finetune_args):
        result.report["finetune"] = {
            "epochs": finetune_args.num_train_epochs,
            "max_steps": finetune_args.max_steps,
            "learning_rate": finetune_args.learning_rate,
            "batch_size": finetune_args.per_device_train_batch_size,
            "n_clean": len(clean),
        }
    return result


def write_purified_card(folder: str | Path, model: Any, report: Mapping[str, Any], *, base_model: str | None,
                        dataset: str | None = None, metrics: Mapping[str, Any] | None = None,
                        attack: str | None = None) -> Path:
    """Write the model card of a purified model or adapter (defense name, base model, metrics)."""
    from ..hub import write_model_card

    peft_type = task_type = None
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        cfg = next(iter(peft_config.values()))
        peft_type = str(getattr(cfg.peft_type, "value", cfg.peft_type))
        task_type = str(getattr(cfg.task_type, "value", cfg.task_type))
        base_model = base_model or cfg.base_model_name_or_path
    methods = str(report["method"]).split("+")
    if metrics is None:
        metrics = {"ratio": report.get("ratio"), "dims_reset": report.get("dims_reset_total")}
    return write_model_card(folder, base_model=base_model, peft_type=peft_type, task_type=task_type,
                            defense=methods[-1], metrics={k: v for k, v in metrics.items() if v is not None},
                            attack=attack, dataset=dataset, extra_tags=["purification", *methods])


def save_purified_folder(folder: str | Path, result: PurificationResult, bundle: SuspectBundle, *,
                         dataset: str | None = None, metrics: Mapping[str, Any] | None = None,
                         attack: str | None = None) -> Path:
    """Save the purified model (safetensors) or adapter, its tokenizer, ``purification_report.json`` and the
    model card into the existing ``folder`` (a staging folder: see :func:`write_purified`)."""
    save_purified(result.model, folder, bundle.tokenizer, result.report)
    write_purified_card(folder, result.model, result.report, base_model=bundle.base_model, dataset=dataset,
                        metrics=metrics, attack=attack)
    return Path(folder)


def write_purified(output: str | Path, result: PurificationResult, bundle: SuspectBundle, *,
                   dataset: str | None = None, metrics: Mapping[str, Any] | None = None,
                   attack: str | None = None) -> Path:
    """:func:`save_purified_folder` into a hidden sibling of ``output``, then rename it into place (replacing
    what was there: call :func:`check_output_dir` first)."""
    from ..atomic import staged_directory

    with staged_directory(output) as folder:
        save_purified_folder(folder, result, bundle, dataset=dataset, metrics=metrics, attack=attack)
    return Path(output)
