"""Configuration of the MuScleLoRA adapter type.

MuScleLoRA ("Acquiring Clean Language Models from Backdoor Poisoned Datasets by Downscaling
Frequency Space", ACL 2024) combines two low-rank parts in one adapter:

* a plain LoRA-style part (one branch, scale 1) on the attention projections (``target_modules``);
* a multi-scale low-rank (MSLR) part on the penultimate dense layer (``multiscale_target_modules``):
  ``y = W0 x + s * sum_j B_j (k_j * A_j x)`` with ``s = multiscale_alpha / rank_per_scale``.

Fields left ``None`` are filled from :data:`MUSCLELORA_ARCHITECTURE_DEFAULTS` when the adapter is
injected, based on the model's ``model_type`` (like PEFT fills ``target_modules``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from peft.config import PeftConfig
from peft.utils.peft_types import PeftType


def _register_peft_type() -> PeftType:
    """Add a real ``MUSCLELORA`` member to PEFT's ``PeftType`` enum (idempotent).

    ``PeftType`` is a ``str`` enum; members are created the way ``enum`` creates them (``str.__new__``
    plus ``_name_``/``_value_``) and added to every lookup table the enum machinery uses, so
    ``PeftType("MUSCLELORA")``, ``PeftType.MUSCLELORA``, ``PeftType["MUSCLELORA"]``, iteration,
    pickling and JSON all behave as for a built-in member.
    """
    name = "MUSCLELORA"
    existing = PeftType.__members__.get(name)
    if existing is not None:
        return existing
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member.__init__(name)
    if hasattr(PeftType, "_sort_order_"):
        member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    # EnumType.__setattr__ refuses to rebind members; define the class attribute like enum does.
    type.__setattr__(PeftType, name, member)
    assert isinstance(PeftType.MUSCLELORA, enum.Enum)
    return member


MUSCLELORA = _register_peft_type()

#: Per-architecture defaults reproducing the paper's placement (see docs/concepts/musclelora-adapter.md).
#: ``{last}`` is replaced by the index of the model's last block at injection time. An architecture whose
#: penultimate dense layer is the pooler names a ``multiscale_target_modules_without_pooler``: where the
#: multi-scale part goes in a model built without one (a mean-pooled classifier, see
#: :mod:`hf_backdoor_defense.models`): the last block's feed-forward output projection, the place the
#: authors' follow-up work uses for decoders.
MUSCLELORA_ARCHITECTURE_DEFAULTS: dict[str, dict] = {
    "bert": {
        "target_modules": ["query", "value"],
        "multiscale_target_modules": ["pooler.dense"],
        "multiscale_target_modules_without_pooler": ["layer.{last}.output.dense"],
        "r": 8,
        "lora_alpha": 32,
        "scales": [1, 4, 8, 12, 16, 20, 24, 28],
        "multiscale_alpha": 6,
    },
    "roberta": {
        "target_modules": ["query", "value"],
        "multiscale_target_modules": ["classifier.dense"],
        "r": 8,
        "lora_alpha": 32,
        "scales": [1, 2, 4, 6, 8, 10, 12, 14, 16],
        "multiscale_alpha": 6,
    },
    "gpt2": {
        "target_modules": ["c_attn"],
        "multiscale_target_modules": ["h.{last}.mlp.c_proj"],
        "r": 2,
        "lora_alpha": 8,
        "scales": [1, 2, 3, 4],
        "multiscale_alpha": 4,
    },
}
for _decoder in ("llama", "mistral", "qwen2"):
    MUSCLELORA_ARCHITECTURE_DEFAULTS[_decoder] = {
        "target_modules": ["q_proj", "v_proj"],
        "multiscale_target_modules": ["layers.{last}.mlp.down_proj"],
        "r": 2,
        "lora_alpha": 8,
        "scales": [1, 2, 3, 4],
        "multiscale_alpha": 4,
    }

#: Fallback hyper-parameters for model types without an entry (targets must then be given).
MUSCLELORA_FALLBACK_DEFAULTS = {"r": 8, "lora_alpha": 16, "scales": [1, 2, 3, 4], "multiscale_alpha": 4}

#: ``target_module_mapping``-style table (LoRA part only), as PEFT's tuners expose it.
TRANSFORMERS_MODELS_TO_MUSCLELORA_TARGET_MODULES_MAPPING = {
    k: v["target_modules"] for k, v in MUSCLELORA_ARCHITECTURE_DEFAULTS.items()
}


def _as_set(value) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    return set(value)


@dataclass
class MuScleLoRAConfig(PeftConfig):
    """Configuration for a [`MuScleLoRAModel`].

    Args:
        r (`int`, *optional*):
            Rank of the single-branch (LoRA-like) part on `target_modules`. `None`: per-architecture
            default (8 for encoders, 2 for decoder LMs).
        lora_alpha (`int`, *optional*):
            Alpha of the single-branch part; its scaling is `lora_alpha / r`. `None`: per-architecture
            default (32 for encoders, 8 for decoder LMs).
        lora_dropout (`float`):
            Dropout on the input of the single-branch part.
        target_modules (`list[str]` or `str`, *optional*):
            Modules receiving the single-branch part (names matched as suffixes, or a regex string).
            `None`: attention query/value of the architecture.
        scales (`list[float]`, *optional*):
            Radial scale factors k_j of the multi-scale branches. `None`: per-architecture default
            (BERT [1,4,...,28], RoBERTa [1,2,4,...,16], decoders [1,2,3,4]).
        rank_per_scale (`int`):
            Rank r_s of each multi-scale branch (paper: 1).
        multiscale_alpha (`float`, *optional*):
            Alpha of the multi-scale part; its scaling is `multiscale_alpha / rank_per_scale`. `None`:
            per-architecture default (6 for encoders, 4 for decoders).
        multiscale_dropout (`float`):
            Dropout on the input of the multi-scale part.
        multiscale_target_modules (`list[str]` or `str`, *optional*):
            Modules receiving the multi-scale part. `None`: BERT `pooler.dense`, RoBERTa
            `classifier.dense`, GPT-2 last block `mlp.c_proj`, Llama/Mistral/Qwen2 last block
            `mlp.down_proj`. An empty list disables the multi-scale part.
        init_weights (`bool` or `"paper"`):
            `True`: A Kaiming-uniform, B zero on both parts, so outputs are unchanged at creation.
            `"paper"`: the authors' initialisation: both factors of the multi-scale part Kaiming-uniform
            (so it acts from the first step), the single-branch part as with `True`. `False`: every factor
            random (for tests only).
        trainable_head (`bool`):
            For `task_type="SEQ_CLS"` / `"TOKEN_CLS"`, whether the task head PEFT adds to `modules_to_save`
            (`classifier` / `score`) is trained. `False` (the authors' setting, the default): the head stays
            frozen at its random initialisation, so every change of the logits passes through the adapter;
            PEFT still saves it with the adapter (a reload gives the same logits) and a merged model keeps it.
            `True`: PEFT's behaviour, the head is trained and saved fully. A frozen head is part of the base
            model: load at most one such adapter per base model.
        fan_in_fan_out (`bool`):
            Set to True if the target stores its weight as (in, out), like GPT-2's `Conv1D`
            (detected and set automatically for `Conv1D`).
        bias (`str`):
            Which biases to train: `"none"`, `"all"` or `"musclelora_only"` (biases of adapted layers).
        exclude_modules (`list[str]` or `str`, *optional*):
            Modules never adapted.
        layers_to_transform (`list[int]` or `int`, *optional*):
            Restrict the single-branch part to these layer indices.
        layers_pattern (`list[str]` or `str`, *optional*):
            Name of the layer list used with `layers_to_transform`.
        modules_to_save (`list[str]`, *optional*):
            Modules trained fully and saved with the adapter (PEFT adds the classifier for SEQ_CLS).
            A multi-scale target inside such a module is handled as described in the docs: the module
            is narrowed to its untargeted children and the target's frozen base weight is saved.
        trainable_token_indices (`list[int]` or `dict`, *optional*):
            Token indices whose embeddings are trained (TRL's SFTTrainer may set it).

    Example:
        >>> import hf_backdoor_defense  # registers the adapter type with PEFT
        >>> from hf_backdoor_defense import MuScleLoRAConfig
        >>> config = MuScleLoRAConfig(task_type="SEQ_CLS")            # paper defaults per architecture
        >>> config = MuScleLoRAConfig(r=4, scales=[1, 2, 4], target_modules=["q_proj", "v_proj"],
        ...                           multiscale_target_modules=["layers.1.mlp.down_proj"])
    """

    r: int | None = field(
        default=None,
        metadata={"help": "Rank of the single-branch part on `target_modules`; None: per-architecture default."},
    )
    lora_alpha: float | None = field(
        default=None,
        metadata={"help": "Alpha of the single-branch part (scaling lora_alpha / r); None: per-architecture default."},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the single-branch part."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules for the single-branch part; None: attention query/value of the architecture."},
    )
    scales: list[float] | None = field(
        default=None,
        metadata={"help": "Radial scale factors k_j of the multi-scale branches; None: per-architecture default."},
    )
    rank_per_scale: int = field(default=1, metadata={"help": "Rank of each multi-scale branch (paper: 1)."})
    multiscale_alpha: float | None = field(
        default=None,
        metadata={"help": "Alpha of the multi-scale part (scaling alpha / rank_per_scale); None: per-architecture."},
    )
    multiscale_dropout: float = field(default=0.0, metadata={"help": "Dropout on the input of the multi-scale part."})
    multiscale_target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Modules for the multi-scale part; None: penultimate dense layer of the architecture."},
    )
    init_weights: bool | Literal["paper"] = field(
        default=True,
        metadata={"help": "True: B zero (outputs unchanged); 'paper': multi-scale factors Kaiming; False: random."},
    )
    trainable_head: bool = field(
        default=False,
        metadata={"help": "Train the SEQ_CLS/TOKEN_CLS head (PEFT's way); False: frozen random head (paper)."},
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "Target weight stored as (in, out), like GPT-2 Conv1D (auto-detected)."}
    )
    bias: Literal["none", "all", "musclelora_only"] = field(
        default="none", metadata={"help": "Biases to train: 'none', 'all' or 'musclelora_only'."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules never adapted (suffix names or a regex)."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Restrict the single-branch part to these layer indices."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list used with `layers_to_transform`."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained fully and saved with the adapter (e.g. a new head)."}
    )
    trainable_token_indices: list[int] | dict[str, list[int]] | None = field(
        default=None, metadata={"help": "Token indices whose embeddings are trained (set by TRL's SFTTrainer)."}
    )
    target_parameters: list[str] | None = field(
        default=None, metadata={"help": "Not supported by MuScleLoRA; must stay None."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.MUSCLELORA
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.multiscale_target_modules, (list, tuple)):
            self.multiscale_target_modules = set(self.multiscale_target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        if self.r is not None and (not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0):
            raise ValueError(f"`r` must be a positive integer, got {self.r!r}.")
        if not isinstance(self.rank_per_scale, int) or isinstance(self.rank_per_scale, bool) or self.rank_per_scale <= 0:
            raise ValueError(f"`rank_per_scale` must be a positive integer, got {self.rank_per_scale!r}.")
        for name in ("lora_alpha", "multiscale_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value!r}.")
        if self.scales is not None:
            if isinstance(self.scales, (int, float)) or len(self.scales) == 0:
                raise ValueError(f"`scales` must be a non-empty list of positive numbers, got {self.scales!r}.")
            if any((not isinstance(k, (int, float))) or isinstance(k, bool) or k <= 0 for k in self.scales):
                raise ValueError(f"`scales` must contain only positive numbers, got {self.scales!r}.")
            self.scales = [float(k) if not float(k).is_integer() else int(k) for k in self.scales]
        for name in ("lora_dropout", "multiscale_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")
        if self.init_weights not in (True, False, "paper"):
            raise ValueError(f"`init_weights` must be True, False or 'paper', got {self.init_weights!r}.")
        if not isinstance(self.trainable_head, bool):
            raise ValueError(f"`trainable_head` must be True or False, got {self.trainable_head!r}.")
        if self.bias not in ("none", "all", "musclelora_only"):
            raise ValueError(f"`bias` must be 'none', 'all' or 'musclelora_only', got {self.bias!r}.")
        if self.target_parameters:
            raise ValueError("`target_parameters` is not supported by MuScleLoRA; use `target_modules` instead.")
        if isinstance(self.target_modules, set) and isinstance(self.multiscale_target_modules, set):
            overlap = self.target_modules & self.multiscale_target_modules
            if overlap:
                raise ValueError(
                    f"`target_modules` and `multiscale_target_modules` overlap on {sorted(overlap)}; "
                    "a module gets either the single-branch or the multi-scale part, remove it from one list."
                )
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("`layers_pattern` needs `layers_to_transform`; set both or neither.")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used with a regex `target_modules`; pass a list.")
