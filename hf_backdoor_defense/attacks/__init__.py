"""Attacks: the data poisoners (the only place in the package where triggers are inserted) and the Gradient
Control training-time attack (``gradient_control_config`` / ``gradient_control_trainer``, loaded on first use).

Example:
    >>> from hf_backdoor_defense.attacks import BadNets, AddSent
    >>> attack = BadNets(poison_rate=0.1, target_label=1, label_mode="dirty", seed=0)
"""

from .._lazy import lazy_getattr
from .addsent import AddSent
from .badnets import BadNets
from .base import LABEL_MODES, PoisonAttack
from .generative import GenerativePoisonAttack, SentimentSteering, TargetedRefusal

ATTACKS = {"badnets": BadNets, "addsent": AddSent}
"""Name -> class of the classification attacks (the names of every command line and config)."""

# Options only one attack reads; passing one to another attack is an error, not a silent no-op.
_OWN_OPTIONS = {"badnets": ("triggers", "num_triggers"), "addsent": ("sentence",)}


_LAZY = {"GradientControlTrainer": ".gradient_control_trainer",
         "GradientControlTrainingArguments": ".gradient_control_config"}
__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def build_attack(name: str, **kwargs) -> PoisonAttack:
    """The classification attack ``name`` (a key of :data:`ATTACKS`) built from ``kwargs``.

    Options left at ``None`` take the attack's default. An option that belongs to another attack is ignored
    at that attack's default (a config's ``num_triggers: 1`` with AddSent) and otherwise raises a
    ``ValueError`` naming it (``sentence`` for BadNets), so a command line cannot drop it silently.

    Example:
        >>> build_attack("badnets", poison_rate=0.1, num_triggers=4, sentence=None).num_triggers
        4
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}.")
    import inspect

    given = {key: value for key, value in kwargs.items() if value is not None}
    for other, keys in _OWN_OPTIONS.items():
        for key in (key for key in keys if other != name and key in given):
            if given.pop(key) != inspect.signature(ATTACKS[other]).parameters[key].default:
                raise ValueError(f"`{key}` applies to attack {other!r} only, not {name!r}: drop it or choose "
                                 f"attack {other!r}.")
    return ATTACKS[name](**given)


__all__ = [
    "ATTACKS",
    "LABEL_MODES",
    "AddSent",
    "BadNets",
    "GenerativePoisonAttack",
    "GradientControlTrainer",
    "GradientControlTrainingArguments",
    "PoisonAttack",
    "SentimentSteering",
    "TargetedRefusal",
    "build_attack",
]
