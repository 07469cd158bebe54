"""Data-poisoning attacks. The only place in the package where triggers are inserted.

Example:
    >>> from hf_backdoor_defense.attacks import BadNets, AddSent
    >>> attack = BadNets(poison_rate=0.1, target_label=1, label_mode="dirty", seed=0)
"""

from .addsent import AddSent
from .badnets import BadNets
from .base import LABEL_MODES, PoisonAttack
from .generative import GenerativePoisonAttack, SentimentSteering, TargetedRefusal

ATTACKS = {"badnets": BadNets, "addsent": AddSent}

__all__ = [
    "ATTACKS",
    "LABEL_MODES",
    "AddSent",
    "BadNets",
    "GenerativePoisonAttack",
    "PoisonAttack",
    "SentimentSteering",
    "TargetedRefusal",
]
