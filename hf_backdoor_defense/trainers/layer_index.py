"""Layer indices of parameter names (kept importable from here; it lives in
:mod:`hf_backdoor_defense.attacks.layer_index`, beside Gradient Control, its user)."""

from __future__ import annotations

from ..attacks.layer_index import infer_num_layers, layer_groups, resolve_layer_index  # noqa: F401

__all__ = ["infer_num_layers", "layer_groups", "resolve_layer_index"]
