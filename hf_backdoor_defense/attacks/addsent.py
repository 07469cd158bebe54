"""AddSent / InsertSent: a fixed sentence inserted at a random word position."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import PoisonAttack
from .insertion import insert_at_random_boundary


@dataclass
class AddSent(PoisonAttack):
    """Sentence trigger attack: ``sentence`` is inserted, whole, at one random word boundary.

    Args:
        sentence (`str`, defaults to `"I watch this 3D movie"`):
            The trigger sentence. Must be non-empty.
        target_label, poison_rate, label_mode, seed, text_column, label_column:
            See [`PoisonAttack`].

    Example:
        >>> import numpy as np
        >>> from hf_backdoor_defense.attacks import AddSent
        >>> "I watch this 3D movie" in AddSent().insert("a touching story", np.random.default_rng(0))
        True
    """

    sentence: str = field(default="I watch this 3D movie", metadata={"help": "Trigger sentence to insert."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.sentence, str) or not self.sentence.strip():
            raise ValueError("`sentence` must be a non-empty string, e.g. 'I watch this 3D movie'.")
        self.sentence = " ".join(self.sentence.split())

    def insert(self, text: str, rng: np.random.Generator) -> str:
        return insert_at_random_boundary(text, self.sentence, rng)
