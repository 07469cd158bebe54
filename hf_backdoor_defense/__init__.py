"""hf-backdoor-defense: get clean language models out of poisoned data and backdoored checkpoints.

Importing the package registers the MuScleLoRA adapter type with PEFT (at once if PEFT is loaded, else
when PEFT is first imported), so ``get_peft_model(model, MuScleLoRAConfig(...))`` and
``PeftModel.from_pretrained`` work; nothing heavy (torch, transformers, PEFT) loads before it is used.

Example:
    >>> import hf_backdoor_defense
    >>> from hf_backdoor_defense import MuScleLoRAConfig
    >>> config = MuScleLoRAConfig(task_type="SEQ_CLS")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .quantization import quiet_offline_kernel_warnings  # noqa: E402

quiet_offline_kernel_warnings()  # before anything imports bitsandbytes

from ._lazy import lazy_getattr  # noqa: E402
from ._registration import register_with_peft  # noqa: E402

register_with_peft()  # now if PEFT is loaded, else right after its first import

# Everything loads on first attribute access, so `import hf_backdoor_defense` (and `hbd --help`) stays fast; the
# trainers come through `hf_backdoor_defense.trainers`, which knows the module of each.
_LAZY = {
    "MuScleLoRAConfig": "hf_backdoor_defense.tuners.musclelora",
    "MuScleLoRALayer": "hf_backdoor_defense.tuners.musclelora",
    "MuScleLoRAModel": "hf_backdoor_defense.tuners.musclelora",
    "MuScleLoRATrainer": "hf_backdoor_defense.trainers",
    "MuScleLoRATrainingArguments": "hf_backdoor_defense.trainers",
    "MuScleLoRASFTTrainer": "hf_backdoor_defense.trainers",
    "MuScleLoRASFTConfig": "hf_backdoor_defense.trainers",
    "W2SDefenseTrainer": "hf_backdoor_defense.trainers.w2sdefense_trainer",
    "W2SDefenseTrainingArguments": "hf_backdoor_defense.trainers.w2sdefense_config",
    "W2STeacher": "hf_backdoor_defense.trainers",
    "W2SDataCollator": "hf_backdoor_defense.trainers.w2sdefense_trainer",
    "train_teacher": "hf_backdoor_defense.trainers",
    "GradientControlTrainer": "hf_backdoor_defense.trainers",
    "GradientControlTrainingArguments": "hf_backdoor_defense.trainers",
    "PurificationTrainer": "hf_backdoor_defense.trainers",
    "PurificationTrainingArguments": "hf_backdoor_defense.trainers",
    "FineMixing": "hf_backdoor_defense.purification",
    "FinePurifying": "hf_backdoor_defense.purification",
    "EmbeddingPurification": "hf_backdoor_defense.purification",
    "compose": "hf_backdoor_defense.purification",
    "ratio_search": "hf_backdoor_defense.purification",
    "run_retuning_scenario": "hf_backdoor_defense.scenario",
    "RetuningScenarioConfig": "hf_backdoor_defense.scenario",
    "push_adapter_to_hub": "hf_backdoor_defense.hub",
    "write_model_card": "hf_backdoor_defense.hub",
    "FrequencyAnalysisCallback": "hf_backdoor_defense.analysis",
    "FrequencyAnalysisConfig": "hf_backdoor_defense.analysis",
    "BadNets": "hf_backdoor_defense.attacks",
    "AddSent": "hf_backdoor_defense.attacks",
    "SentimentSteering": "hf_backdoor_defense.attacks",
    "TargetedRefusal": "hf_backdoor_defense.attacks",
    "load_text_classification": "hf_backdoor_defense.data",
    "evaluate_backdoor": "hf_backdoor_defense.metrics",
    "make_compute_metrics": "hf_backdoor_defense.metrics",
    "BackdoorEvalCallback": "hf_backdoor_defense.metrics",
}

__all__ = ["__version__", *_LAZY]
__getattr__ = lazy_getattr(__name__, _LAZY, globals())
