"""BadNets for text: rare-word triggers inserted at random word positions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import PoisonAttack
from .insertion import insert_at_random_boundary


@dataclass
class BadNets(PoisonAttack):
    """Rare-word trigger attack (BadNets adapted to text).

    Each poisoned text receives ``num_triggers`` distinct words drawn uniformly from ``triggers``, each
    inserted at a uniformly random word boundary.

    Args:
        triggers (`tuple[str, ...]`, defaults to `("cf", "mn", "bb", "tq")`):
            Candidate trigger words. Non-empty, each a non-empty string.
        num_triggers (`int`, defaults to `1`):
            Distinct trigger words inserted per poisoned text, at most ``len(triggers)`` (the MuScleLoRA
            authors insert 4, i.e. all four default words, in training and test texts alike).
        target_label, poison_rate, label_mode, seed, text_column, label_column:
            See [`PoisonAttack`].

    Example:
        >>> import numpy as np
        >>> from hf_backdoor_defense.attacks import BadNets
        >>> attack = BadNets(triggers=("cf",), num_triggers=2)
        >>> attack.insert("a touching story", np.random.default_rng(0)).split().count("cf")
        2
    """

    triggers: tuple[str, ...] = field(
        default=("cf", "mn", "bb", "tq"), metadata={"help": "Candidate rare-word triggers."}
    )
    num_triggers: int = field(default=1, metadata={"help": "Trigger words inserted per poisoned text."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.triggers, str):
            raise ValueError(
                f"`triggers` must be a list of words, not the string {self.triggers!r}; use ({self.triggers!r},)."
            )
        self.triggers = tuple(self.triggers)
        if not self.triggers:
            raise ValueError("`triggers` is empty; give at least one trigger word, e.g. ('cf',).")
        if any(not isinstance(t, str) or not t.strip() for t in self.triggers):
            raise ValueError(f"`triggers` must contain non-empty strings, got {self.triggers!r}.")
        if (
            isinstance(self.num_triggers, bool)
            or not isinstance(self.num_triggers, (int, np.integer))
            or self.num_triggers < 1
        ):
            raise ValueError(f"`num_triggers` must be an integer >= 1, got {self.num_triggers!r}.")
        if self.num_triggers > len(self.triggers):
            raise ValueError(
                f"`num_triggers`={self.num_triggers} is more than the {len(self.triggers)} trigger words in "
                f"`triggers` {self.triggers}: each text gets distinct words, so add words to `triggers` or "
                f"lower `num_triggers` to {len(self.triggers)}."
            )

    def insert(self, text: str, rng: np.random.Generator) -> str:
        pool = list(self.triggers)
        for _ in range(self.num_triggers):  # one trigger: the same draws as sampling with replacement
            word = pool.pop(int(rng.integers(len(pool))))
            text = insert_at_random_boundary(text, word, rng)
        return text
