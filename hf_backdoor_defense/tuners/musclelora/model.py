"""``MuScleLoRAModel``: injects MuScleLoRA layers into a transformers model (a PEFT ``BaseTuner``)."""

from __future__ import annotations

import copy
import re
from typing import Any

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from ...quantization import keep_4bit_trainable
from .config import (
    MUSCLELORA_ARCHITECTURE_DEFAULTS,
    MUSCLELORA_FALLBACK_DEFAULTS,
    TRANSFORMERS_MODELS_TO_MUSCLELORA_TARGET_MODULES_MAPPING,
    MuScleLoRAConfig,
)
from .layer import MuScleLoRALayer, dispatch_default


def _num_layers(model_config: dict) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(model_config.get(key), int):
            return model_config[key]
    text = model_config.get("text_config")
    return _num_layers(text) if isinstance(text, dict) else None


def _fill_last(targets, num_layers: int | None):
    if targets is None or isinstance(targets, str):
        return targets
    if any("{last}" in t for t in targets):
        if num_layers is None:
            raise ValueError(
                "Cannot infer the last block for `multiscale_target_modules`; pass it explicitly, "
                "e.g. multiscale_target_modules=['layers.11.mlp.down_proj']."
            )
        return {t.replace("{last}", str(num_layers - 1)) for t in targets}
    return set(targets)


#: The task heads PEFT adds to ``modules_to_save`` for SEQ_CLS / TOKEN_CLS, frozen unless ``trainable_head``.
HEAD_MODULE_NAMES = ("classifier", "score")
_HEAD_TASKS = ("SEQ_CLS", "TOKEN_CLS")


class FrozenHeadWrapper(ModulesToSaveWrapper):
    """A task head handled by PEFT like a ``modules_to_save`` entry (one copy per adapter, saved with the
    adapter, restored on load, kept by ``merge_and_unload``), except that no copy is ever trained."""

    def _freeze(self) -> None:
        for module in self.modules_to_save.values():
            module.requires_grad_(False)

    def update(self, adapter_name, tied_module=None, **kwargs):
        super().update(adapter_name, tied_module=tied_module, **kwargs)
        self._freeze()

    def enable_adapters(self, enabled: bool):
        super().enable_adapters(enabled)
        self._freeze()

    def set_adapter(self, adapter_names, inference_mode: bool = False) -> None:
        super().set_adapter(adapter_names, inference_mode=inference_mode)
        self._freeze()


def _multiscale_view(config: MuScleLoRAConfig) -> MuScleLoRAConfig:
    """A shallow copy of ``config`` whose ``target_modules`` are the multi-scale targets."""
    view = copy.copy(config)
    view.target_modules = config.multiscale_target_modules or set()
    view.layers_to_transform = None
    view.layers_pattern = None
    return view


def multiscale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The multi-scale factors (``musclelora_A`` / ``musclelora_B`` on ``multiscale_target_modules``) of every
    MuScleLoRA adapter in ``model`` (a ``PeftModel`` or its tuner), e.g. to give them their own learning rate."""
    configs = getattr(model, "peft_config", {}) or {}
    found: list[nn.Parameter] = []
    for name, module in model.named_modules():
        if not isinstance(module, MuScleLoRALayer):
            continue
        for adapter in module.musclelora_A:
            config = configs.get(adapter)
            if isinstance(config, MuScleLoRAConfig) and MuScleLoRAModel._is_multiscale_target(config, name):
                found += [module.musclelora_A[adapter].weight, module.musclelora_B[adapter].weight]
    return found


class MuScleLoRAModel(BaseTuner):
    """Creates a MuScleLoRA model from a pretrained transformers model.

    Targets of ``target_modules`` get the single-branch part (scale 1, rank ``r``), targets of
    ``multiscale_target_modules`` the multi-scale part. Unset fields are filled per architecture.

    Example:
        >>> import hf_backdoor_defense  # registers MUSCLELORA with PEFT
        >>> from peft import get_peft_model
        >>> from transformers import AutoModelForSequenceClassification
        >>> base = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")  # doctest: +SKIP
        >>> model = get_peft_model(base, hf_backdoor_defense.MuScleLoRAConfig(task_type="SEQ_CLS"))  # doctest: +SKIP
    """

    prefix: str = "musclelora_"
    tuner_layer_cls = MuScleLoRALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_MUSCLELORA_TARGET_MODULES_MAPPING

    # ------------------------------------------------------------------ config preparation
    def _prepare_adapter_config(self, peft_config: MuScleLoRAConfig, model_config: dict) -> MuScleLoRAConfig:
        defaults = MUSCLELORA_ARCHITECTURE_DEFAULTS.get(model_config.get("model_type"))
        if peft_config.target_modules is None:
            if defaults is None:
                raise ValueError(
                    f"No MuScleLoRA defaults for model_type={model_config.get('model_type')!r}; "
                    "please specify `target_modules` (and `multiscale_target_modules`) in the config."
                )
            peft_config.target_modules = set(defaults["target_modules"])
        if peft_config.multiscale_target_modules is None:
            key = "multiscale_target_modules"
            if defaults and key + "_without_pooler" in defaults and not self._has_pooler():
                key += "_without_pooler"  # e.g. a mean-pooled BERT classifier
            peft_config.multiscale_target_modules = set(defaults[key]) if defaults else set()
        peft_config.multiscale_target_modules = _fill_last(
            peft_config.multiscale_target_modules, _num_layers(model_config)
        )
        source = defaults or MUSCLELORA_FALLBACK_DEFAULTS
        for name in ("r", "lora_alpha", "scales", "multiscale_alpha"):
            if getattr(peft_config, name) is None:
                setattr(peft_config, name, copy.copy(source[name]))
        if isinstance(peft_config.target_modules, set) and isinstance(peft_config.multiscale_target_modules, set):
            overlap = peft_config.target_modules & peft_config.multiscale_target_modules
            if overlap:
                raise ValueError(f"`target_modules` and `multiscale_target_modules` overlap on {sorted(overlap)}.")
        return peft_config

    def _has_pooler(self) -> bool:
        """Whether the model being adapted has a ``pooler.dense`` (transformers' [CLS] classifiers do)."""
        model = getattr(self, "model", None)
        return model is None or any(name.endswith("pooler.dense") for name, _ in model.named_modules())

    def _prepare_model(self, peft_config: MuScleLoRAConfig, model: nn.Module) -> None:
        """Narrow ``modules_to_save`` around multi-scale targets, then freeze the task head unless trained."""
        self._fresh_targets = getattr(self, "_fresh_targets", set())
        keep_4bit_trainable(model)  # a 4-bit base evaluated before on an AVX512-BF16 CPU would pass no gradient
        self._narrow_modules_to_save(peft_config, model)
        if not peft_config.trainable_head:
            self._freeze_head(peft_config, model)
        elif any(isinstance(m, FrozenHeadWrapper) for m in model.modules()):
            raise ValueError("this model's head is frozen by another MuScleLoRA adapter (trainable_head=False): an "
                             "adapter with trainable_head=True cannot share it; load it into a fresh base model.")

    def _narrow_modules_to_save(self, peft_config: MuScleLoRAConfig, model: nn.Module) -> None:
        """Narrow ``modules_to_save`` entries that contain a multi-scale target.

        PEFT trains and saves the whole task head for SEQ_CLS (``classifier``). When the multi-scale
        target sits inside it (RoBERTa ``classifier.dense``), the head entry is replaced by its
        untargeted children (``classifier.out_proj``) and the target's frozen base weight is saved
        with the adapter (it is freshly initialised, so the pre-trained checkpoint lacks it).
        """
        if not peft_config.modules_to_save or not peft_config.multiscale_target_modules:
            return
        view = _multiscale_view(peft_config)
        view.modules_to_save = None
        view.exclude_modules = None
        ms_keys = [name for name, _ in model.named_modules() if name and check_target_module_exists(view, name)]
        if not ms_keys:
            return
        new_entries: list[str] = []
        for entry in peft_config.modules_to_save:
            pattern = re.compile(rf"(^|.*\.){entry}$")
            holders = [n for n, _ in model.named_modules() if n and pattern.match(n)]
            inner = [k for k in ms_keys for h in holders if k.startswith(h + ".")]
            if not inner:
                new_entries.append(entry)
                continue
            for holder in holders:
                new_entries.extend(self._untargeted_children(model, holder, entry, inner))
            self._fresh_targets.update(inner)
        deduped = list(dict.fromkeys(new_entries))
        peft_config.modules_to_save[:] = deduped

    def _freeze_head(self, peft_config: MuScleLoRAConfig, model: nn.Module) -> None:
        """Wrap the SEQ_CLS / TOKEN_CLS head in a :class:`FrozenHeadWrapper` before PEFT wraps it.

        PEFT then finds the head already wrapped, adds this adapter's copy to it and saves that copy with the
        adapter as for any ``modules_to_save`` entry; the wrapper keeps every copy frozen at its initial values.
        """
        if peft_config.task_type not in _HEAD_TASKS or not peft_config.modules_to_save:
            return
        adapter_name = next(name for name, config in self.peft_config.items() if config is peft_config)
        entries = [e for e in peft_config.modules_to_save if e.split(".")[0] in HEAD_MODULE_NAMES]
        for name, module in list(model.named_modules()):
            if not any(name == e or name.endswith("." + e) for e in entries):
                continue
            if isinstance(module, ModulesToSaveWrapper):
                if not isinstance(module, FrozenHeadWrapper):
                    raise ValueError(
                        f"{name!r} is a trained head of another adapter: an adapter with trainable_head=False cannot "
                        "share it; load this adapter into a fresh base model, or use the same trainable_head for both."
                    )
                continue
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FrozenHeadWrapper(module, adapter_name))

    @staticmethod
    def _untargeted_children(model: nn.Module, holder: str, entry: str, inner: list[str]) -> list[str]:
        module = model.get_submodule(holder)
        names = []
        for child_name, child in module.named_children():
            full = f"{holder}.{child_name}"
            if full in inner:
                continue
            if any(k.startswith(full + ".") for k in inner):
                names.extend(MuScleLoRAModel._untargeted_children(model, full, f"{entry}.{child_name}", inner))
            elif any(True for _ in child.parameters()):
                names.append(f"{entry}.{child_name}")
        return names

    # ------------------------------------------------------------------ matching
    @staticmethod
    def _check_target_module_exists(peft_config: MuScleLoRAConfig, key: str):
        found = check_target_module_exists(peft_config, key)
        if found or not peft_config.multiscale_target_modules:
            return found
        ms_found = check_target_module_exists(_multiscale_view(peft_config), key)
        return ms_found if ms_found else found

    @staticmethod
    def _is_multiscale_target(peft_config: MuScleLoRAConfig, key: str) -> bool:
        if not peft_config.multiscale_target_modules:
            return False
        return bool(check_target_module_exists(_multiscale_view(peft_config), key))

    # ------------------------------------------------------------------ injection
    def _create_and_replace(
        self,
        config: MuScleLoRAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if current_key is None:
            raise ValueError("Current Key shouldn't be `None`")
        multiscale = self._is_multiscale_target(config, current_key)
        if multiscale and check_target_module_exists(config, current_key):
            raise ValueError(
                f"Module {current_key!r} matches both `target_modules` and `multiscale_target_modules`; "
                "make the two lists disjoint."
            )
        kwargs = {
            "scales": list(config.scales) if multiscale else [1.0],
            "rank": config.rank_per_scale if multiscale else config.r,
            "alpha": config.multiscale_alpha if multiscale else config.lora_alpha,
            "dropout": config.multiscale_dropout if multiscale else config.lora_dropout,
            # "paper" randomises both factors of the multi-scale part only; the single-branch part starts at zero
            "init_weights": True if config.init_weights == "paper" and not multiscale else config.init_weights,
        }
        save_base = current_key in getattr(self, "_fresh_targets", set())
        if isinstance(target, MuScleLoRALayer):
            target.update_layer(adapter_name, save_base_weights=save_base, **kwargs)
            return
        new_module = self._create_new_module(
            config,
            adapter_name,
            target,
            fan_in_fan_out=config.fan_in_fan_out,
            save_base_weights=save_base,
            **kwargs,
        )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(config: MuScleLoRAConfig, adapter_name: str, target: nn.Module, **kwargs: Any):
        from .bnb import dispatch_bnb_4bit, dispatch_bnb_8bit

        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        for dispatcher in (dispatch_bnb_8bit, dispatch_bnb_4bit):
            quantized_kwargs = {k: v for k, v in kwargs.items() if k not in ("fan_in_fan_out", "save_base_weights")}
            new_module = dispatcher(target, adapter_name, **quantized_kwargs)
            if new_module is not None:
                return new_module
        new_module = dispatch_default(target, adapter_name, **kwargs)
        if new_module is None:
            raise ValueError(
                f"Target module {type(base).__name__} is not supported by MuScleLoRA. Supported: torch.nn.Linear, "
                "transformers Conv1D, bitsandbytes Linear8bitLt and Linear4bit."
            )
        return new_module
