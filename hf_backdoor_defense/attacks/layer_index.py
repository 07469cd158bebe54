"""Resolve the depth ("layer index") of a parameter from its name.

Layer-wise methods (Gradient Control's CLNorm and ILProj, and any trainer that
treats depth specially) need to know which transformer block a trainable tensor
belongs to. This module maps parameter names, with or without a PEFT wrapper
prefix, to an integer depth:

* ``0 … L-1``: the transformer blocks (``encoder.layer.i`` for BERT/RoBERTa,
  ``transformer.h.i`` for GPT-2, ``model.layers.i`` for Llama/Mistral/Qwen2);
* ``L`` (the *output layer* ``l_o``): the task head and everything after the
  last block (``classifier``, ``score``, ``lm_head``, BERT's ``pooler``, the
  final norm);
* the input side (token/position embeddings, a PEFT prompt encoder) is counted
  as part of the first block, index ``0``.

A name that matches none of these layouts raises a ``ValueError`` naming the
parameter; pass your own ``layer_index_fn`` to the trainer for other models.

Example:
    >>> from hf_backdoor_defense.attacks.layer_index import resolve_layer_index
    >>> resolve_layer_index("base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.default.weight", 6)
    3
    >>> resolve_layer_index("base_model.model.classifier.modules_to_save.default.weight", 6)
    6
    >>> resolve_layer_index("transformer.h.1.attn.c_attn.weight", 2)
    1
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

__all__ = ["infer_num_layers", "layer_groups", "resolve_layer_index"]

# Transformer blocks: BERT/RoBERTa/ELECTRA ("encoder.layer.3."), GPT-2 ("transformer.h.3."),
# Llama/Mistral/Qwen2/Gemma ("model.layers.3."), T5/BART-style decoders ("decoder.layers.3.", "block.3.").
_BLOCK_PATTERNS = (
    re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\."),
    re.compile(r"(?:^|\.)transformer\.h\.(\d+)\."),
    re.compile(r"(?:^|\.)h\.(\d+)\."),
    re.compile(r"(?:^|\.)layers\.(\d+)\."),
    re.compile(r"(?:^|\.)block\.(\d+)\."),
)
# Everything after the last block counts as the output layer l_o.
_HEAD_PATTERN = re.compile(
    r"(?:^|\.)(classifier|score|lm_head|qa_outputs|pooler|cls|ln_f|final_layer_norm|norm|"
    r"sequence_summary|pre_classifier|dense_head|out_proj)(?:\.|$)"
)
# The input side counts as part of the first block.
_INPUT_PATTERN = re.compile(
    r"(?:^|\.)(embeddings|embed_tokens|wte|wpe|word_embeddings|prompt_encoder|embed_positions)(?:\.|$)"
)

_SUPPORTED = (
    "BERT/RoBERTa ('encoder.layer.<i>.'), GPT-2 ('transformer.h.<i>.'), "
    "Llama/Mistral/Qwen2 ('model.layers.<i>.'), heads named classifier/score/lm_head/pooler"
)


def resolve_layer_index(name: str, num_layers: int) -> int:
    """Return the depth of the parameter called ``name`` in a model with ``num_layers`` blocks.

    Args:
        name (`str`): the parameter name as given by ``model.named_parameters()``; PEFT prefixes
            (``base_model.model.``) and adapter suffixes (``lora_A.default``) are fine.
        num_layers (`int`): the number of transformer blocks ``L``; the output layer is ``L``.

    Returns:
        `int` in ``[0, num_layers]``.

    Raises:
        ValueError: if the name fits no known layout, or names a block index ``>= num_layers``.
    """
    if num_layers < 1:
        raise ValueError(f"`num_layers` must be >= 1, got {num_layers}.")
    for pattern in _BLOCK_PATTERNS:
        match = pattern.search(name)
        if match:
            index = int(match.group(1))
            if index >= num_layers:
                raise ValueError(
                    f"Parameter {name!r} is in block {index}, but the model has only {num_layers} blocks; "
                    "pass the right `num_layers`."
                )
            return index
    if _HEAD_PATTERN.search(name):
        return num_layers
    if _INPUT_PATTERN.search(name):
        return 0
    raise ValueError(
        f"Cannot tell which layer parameter {name!r} belongs to. Supported layouts: {_SUPPORTED}. "
        "For another architecture pass `layer_index_fn=lambda name, num_layers: ...` to the trainer."
    )


def infer_num_layers(model: nn.Module) -> int:
    """Number of transformer blocks of ``model`` (a `PreTrainedModel` or a PEFT model), read from its config."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(
        "Cannot read the number of layers from the model config (looked for `num_hidden_layers`, `n_layer`, "
        "`num_layers`); pass `num_layers=` explicitly."
    )


def layer_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    num_layers: int,
    layer_index_fn=resolve_layer_index,
) -> dict[int, list[str]]:
    """Group the names of trainable parameters by layer index (only ``requires_grad`` ones).

    Returns:
        `dict[int, list[str]]` sorted by layer index; layers without trainable parameters are absent.
    """
    groups: dict[int, list[str]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        groups.setdefault(int(layer_index_fn(name, num_layers)), []).append(name)
    return dict(sorted(groups.items()))
