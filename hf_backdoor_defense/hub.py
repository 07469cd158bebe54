"""Model cards and Hub upload for adapters and purified models.

``PeftModel.push_to_hub`` labels a new repository ``library_name: transformers`` and knows nothing
about the defense; :func:`push_adapter_to_hub` saves the model, writes a correct card
(``library_name: peft``, ``base_model``, tags, a usage snippet that imports ``hf_backdoor_defense``
first, the defense and its CACC/ASR) and uploads the folder in one commit.

Example:
    >>> from hf_backdoor_defense.hub import build_model_card
    >>> card = build_model_card(base_model="bert-base-uncased", defense="musclelora",
    ...                         metrics={"cacc": 0.91, "asr": 0.08})
    >>> "library_name: peft" in card
    True
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCardData

from .atomic import write_text_atomic

#: Papers behind each defense (cited by title in cards).
DEFENSE_PAPERS: dict[str, str] = {
    "musclelora": "Acquiring Clean Language Models from Backdoor Poisoned Datasets by Downscaling Frequency Space (ACL 2024)",
    "fine-mixing": "Fine-mixing: Mitigating Backdoors in Fine-tuned Language Models (Findings of EMNLP 2022)",
    "e-pur": "Fine-mixing: Mitigating Backdoors in Fine-tuned Language Models (Findings of EMNLP 2022)",
    "fine-purifying": "Diffusion Theory as a Scalpel: Detecting and Purifying Poisonous Dimensions in Pre-trained "
    "Language Models Caused by Backdoor or Bias (Findings of ACL 2023)",
    "w2sdefense": "Unlearning Backdoor Attacks for LLMs with Weak-to-Strong Knowledge Distillation (Findings of ACL 2025)",
}

_METRIC_NAMES = {"cacc": "CACC (clean accuracy)", "asr": "ASR (attack success rate)", "lfr": "LFR (label flip rate)"}
_AUTO_CLASSES = {
    "SEQ_CLS": "AutoPeftModelForSequenceClassification",
    "CAUSAL_LM": "AutoPeftModelForCausalLM",
    "TOKEN_CLS": "AutoPeftModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoPeftModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoPeftModelForFeatureExtraction",
}


class HubOfflineError(RuntimeError):
    """Raised when an upload is requested while ``HF_HUB_OFFLINE`` is set."""


def _is_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if 0.0 <= value <= 1.0 else f"{value:.4g}"
    return str(value)


def build_model_card(
    *,
    base_model: str | None,
    repo_id: str | None = None,
    peft_type: str | None = "MUSCLELORA",
    task_type: str | None = None,
    defense: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    attack: str | None = None,
    dataset: str | None = None,
    extra_tags: Sequence[str] = (),
    license: str | None = None,
    notice: str | None = None,
) -> str:
    """Return the text of a README.md model card for an adapter or purified model.

    Args:
        base_model: Hub id or path of the base model (``base_model`` in the card metadata).
        repo_id: the repository the card is for (used in the usage snippet).
        peft_type: PEFT type of the adapter (``None`` for a full, non-PEFT model).
        task_type: PEFT task type (picks the ``AutoPeftModelFor...`` class in the snippet).
        defense: defense name (``musclelora``, ``fine-mixing``, ``fine-purifying``, ``e-pur``, ``w2sdefense``).
        metrics: e.g. ``{"cacc": 0.91, "asr": 0.08}``; fractions are shown as percentages.
        attack: attack the metrics were measured against (e.g. ``badnets``).
        dataset: dataset the model was trained/evaluated on.
        extra_tags: more tags for the metadata.
        license: license identifier for the metadata.
        notice: a paragraph shown in bold right under the title (e.g. that the model is a deliberately
            backdoored research artifact).

    Example:
        >>> card = build_model_card(base_model="gpt2", defense="musclelora", task_type="CAUSAL_LM")
        >>> "import hf_backdoor_defense" in card
        True
    """
    is_musclelora = (peft_type or "").upper() == "MUSCLELORA"
    tags = ["backdoor-defense"]
    if peft_type:
        tags.append("peft")
    if is_musclelora:
        tags.append("musclelora")
    if defense:
        tags.append(defense.lower())
    tags.extend(t for t in extra_tags if t not in tags)
    tags = list(dict.fromkeys(tags))
    data = ModelCardData(
        library_name="peft" if peft_type else "transformers",
        base_model=base_model,
        tags=tags,
        license=license,
        datasets=[dataset] if dataset else None,
    )
    name = repo_id or "path/to/this/adapter"
    lines = ["---", data.to_yaml(), "---", "", f"# {name.split('/')[-1]}", ""]
    if notice:
        lines += [f"**{notice.strip()}**", ""]
    if defense:
        paper = DEFENSE_PAPERS.get(defense.lower())
        lines.append(f"Trained/purified with the **{defense}** backdoor defense of "
                     "[hf-backdoor-defense](https://pypi.org/project/hf-backdoor-defense/)"
                     + (f", after the paper \"{paper}\"." if paper else "."))
    else:
        lines.append("Made with [hf-backdoor-defense](https://pypi.org/project/hf-backdoor-defense/).")
    lines.append("")
    if base_model:
        lines += [f"Base model: `{base_model}`.", ""]
    if metrics:
        lines += ["## Results", ""]
        context = ", ".join(x for x in (f"dataset `{dataset}`" if dataset else "",
                                        f"attack `{attack}`" if attack else "") if x)
        if context:
            lines += [f"Measured on {context}.", ""]
        lines += ["| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            lines.append(f"| {_METRIC_NAMES.get(key.lower(), key)} | {_format_metric(value)} |")
        lines.append("")
    lines += ["## Usage", ""]
    if peft_type:
        auto = _AUTO_CLASSES.get(str(task_type).upper() if task_type else "", None)
        if is_musclelora:
            lines += ["MuScleLoRA is not built into PEFT: **import `hf_backdoor_defense` first** (it registers the "
                      "adapter type); without it PEFT fails with `KeyError: 'MUSCLELORA'`.", ""]
        lines += ["```python", "import hf_backdoor_defense  # registers MuScleLoRA with PEFT; import before loading"]
        if auto:
            lines += [f"from peft import {auto}", "", f'model = {auto}.from_pretrained("{name}")']
        else:
            lines += ["from peft import PeftModel", "from transformers import AutoModel", "",
                      f'base = AutoModel.from_pretrained("{base_model or "BASE_MODEL"}")',
                      f'model = PeftModel.from_pretrained(base, "{name}")']
        lines += ["```", "", "Install: `pip install hf-backdoor-defense`.", ""]
    else:
        lines += ["```python", "from transformers import AutoModel", "",
                  f'model = AutoModel.from_pretrained("{name}")', "```", ""]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, **card_kwargs: Any) -> Path:
    """Write ``README.md`` into ``folder`` atomically (temp file + rename); return its path.

    Takes the keyword arguments of :func:`build_model_card`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "README.md"
    text = build_model_card(**card_kwargs)
    return write_text_atomic(target, text)


def _card_kwargs_from_model(model: Any, adapter_name: str) -> dict[str, Any]:
    config = getattr(model, "peft_config", {}).get(adapter_name) if hasattr(model, "peft_config") else None
    if config is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        return {"base_model": name or None, "peft_type": None}
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    task_type = getattr(config.task_type, "value", config.task_type)
    base_model = config.base_model_name_or_path or getattr(
        getattr(getattr(model, "base_model", None), "config", None), "_name_or_path", None
    )
    return {"base_model": base_model or None, "peft_type": peft_type, "task_type": task_type}


def push_adapter_to_hub(
    model: Any,
    repo_id: str,
    *,
    defense: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    attack: str | None = None,
    dataset: str | None = None,
    adapter_name: str = "default",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload adapter with hf-backdoor-defense",
    extra_tags: Sequence[str] = (),
    base_model: str | None = None,
    notice: str | None = None,
) -> Any:
    """Save ``model`` (a ``PeftModel`` or a transformers model), write the card, upload in one commit.

    Args:
        model: the model to upload (``save_pretrained`` is used, so safetensors).
        repo_id: target repository, e.g. ``"me/clean-adapter"``; created if missing.
        defense, metrics, attack, dataset, extra_tags, notice: forwarded to :func:`build_model_card`.
        adapter_name: which adapter's config supplies ``base_model`` and the PEFT type.
        private, token: forwarded to ``HfApi.create_repo`` / ``HfApi``.
        commit_message: the commit message of the upload.
        base_model: overrides the base model recorded in the adapter config.

    Returns:
        What ``HfApi.upload_folder`` returns (the commit info).

    Raises:
        HubOfflineError: if ``HF_HUB_OFFLINE`` is set (save locally and use :func:`write_model_card`).

    Example:
        >>> push_adapter_to_hub(model, "me/clean-adapter", defense="musclelora",  # doctest: +SKIP
        ...                     metrics={"cacc": 0.91, "asr": 0.08}, attack="badnets")
    """
    if _is_offline():
        raise HubOfflineError(
            f"Cannot push to {repo_id!r}: HF_HUB_OFFLINE is set, so the Hugging Face Hub is not reachable. "
            "Unset HF_HUB_OFFLINE to upload, or save locally with `model.save_pretrained(folder)` and "
            "`hf_backdoor_defense.hub.write_model_card(folder, ...)`."
        )
    card_kwargs = _card_kwargs_from_model(model, adapter_name)
    if base_model is not None:
        card_kwargs["base_model"] = base_model
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hbd-push-") as folder:
        save_kwargs = {"selected_adapters": [adapter_name]} if card_kwargs.get("peft_type") else {}
        model.save_pretrained(folder, **save_kwargs)  # safetensors by default
        write_model_card(folder, repo_id=repo_id, defense=defense, metrics=metrics, attack=attack,
                         dataset=dataset, extra_tags=extra_tags, notice=notice, **card_kwargs)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                 repo_type="model")


# ---------------------------------------------------------------------------------------------- trainers
# Every trainer of the package mixes this in: `Trainer.push_to_hub()` calls `create_model_card`, which then
# writes the card above (the defense, its paper, CACC / ASR of the last evaluation) instead of a generic draft.
_METRICS = ("cacc", "asr", "lfr")


def last_backdoor_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{"cacc": ..., "asr": ...}`` of the last log entry holding an evaluation's CACC or ASR (``{}`` if none)."""
    for entry in reversed(log_history):
        found = {name: entry[key] for key in entry for name in _METRICS
                 if key.endswith(f"_{name}") and isinstance(entry[key], (int, float))}
        if found:
            return {name: float(found[name]) for name in _METRICS if name in found}
    return {}


class DefenseModelCardMixin:
    """Mix into a ``transformers.Trainer`` (before it): ``create_model_card`` writes this library's card.

    Class attributes: ``_defense`` (a key of :data:`hf_backdoor_defense.hub.DEFENSE_PAPERS`, or ``None``),
    ``_tag_names`` (added to the card's tags) and ``_notice`` (a bold paragraph under the title).
    """

    _defense: str | None = None
    _notice: str | None = None
    _tag_names: list[str] = []

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None, *, dataset: str | None = None,
                          attack: str | None = None, metrics: Mapping[str, float] | None = None,
                          license: str | None = None, **_ignored: Any) -> None:
        """Write ``README.md`` into ``args.output_dir`` (main process only).

        Args:
            model_name: Repository name shown in the card when no Hub repository is set.
            dataset_name / dataset: The dataset trained or evaluated on (TRL's and transformers' names).
            tags: More tags.
            attack: The attack the metrics were measured against.
            metrics: e.g. ``{"cacc": 0.91, "asr": 0.08}``; default: the last evaluation's (see module docs).
            license: License identifier for the metadata.
        """
        if not self.is_world_process_zero():
            return
        model = self.accelerator.unwrap_model(self.model)
        adapter = getattr(model, "active_adapter", "default")
        found = _card_kwargs_from_model(model, adapter if isinstance(adapter, str) else "default")
        extra = [tags] if isinstance(tags, str) else list(tags or [])
        write_model_card(
            self.args.output_dir,
            repo_id=getattr(self, "hub_model_id", None) or self.args.hub_model_id or model_name,
            defense=self._defense,
            metrics=dict(metrics) if metrics is not None else last_backdoor_metrics(self.state.log_history),
            attack=attack,
            dataset=dataset_name or dataset,
            extra_tags=[*self._tag_names, *extra],
            license=license,
            notice=self._notice,
            **found,
        )
