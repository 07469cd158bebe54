"""Base class of the classification poisoners: sample selection, relabelling, caching, test sets.

A subclass only says how its trigger goes into a text (:meth:`PoisonAttack.insert`); everything
else (which rows are poisoned, labels, fingerprints, the triggered test set) lives here.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # datasets loads when an attack runs, so `hbd --help` stays fast
    from datasets import Dataset

from .insertion import example_rng

LABEL_MODES = ("dirty", "clean", "mixed")

# Streams of the per-example random generator (see `example_rng`).
_POISON_STREAM = 0
_TEST_STREAM = 1


class AttackRecord:
    """What every poisoner shares: its configuration as a dict and the ``datasets`` fingerprint of its outputs.

    A subclass is a dataclass; ``_fingerprint_tag`` versions the fingerprints of its family (changing it
    invalidates the cached poisoned datasets).
    """

    _fingerprint_tag = "hbd-attack-v1"

    def to_dict(self) -> dict:
        """The configuration as a JSON-serialisable dict, with the attack name under ``"attack"``."""
        return {"attack": type(self).__name__, **dataclasses.asdict(self)}

    def _fingerprint(self, dataset: Dataset, purpose: str) -> str:
        from datasets.fingerprint import Hasher

        config = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return Hasher.hash([config, dataset._fingerprint, purpose, self._fingerprint_tag])

    def _map_rows(self, dataset: Dataset, apply, purpose: str, desc: str, features=None) -> Dataset:
        """``dataset.map(apply)`` over ``(row, index)``, cached under a fingerprint of this attack's settings and
        ``purpose`` (``"poison"``, ``"triggered"``), with ``desc`` and the attack's name on the progress bar."""
        return dataset.map(apply, with_indices=True, features=features,
                           new_fingerprint=self._fingerprint(dataset, purpose), desc=f"{desc} ({type(self).__name__})")


@dataclass
class PoisonAttack(AttackRecord):
    """Common settings of a text-classification data-poisoning attack.

    Args:
        target_label (`int`, defaults to `1`):
            Label id the backdoor should produce. Must be a valid id of the dataset's label column;
            checked when the attack is applied.
        poison_rate (`float`, defaults to `0.1`):
            Share of the *whole* training set to poison, in (0, 1]: ``round(poison_rate * len(dataset))``
            examples are drawn from the candidates (non-target examples in dirty-label mode, target
            examples in clean-label mode), capped by the number of candidates with a warning.
        label_mode (`str`, defaults to `"dirty"`):
            `"dirty"`: triggered non-target examples are relabelled to the target label. `"clean"`:
            only target-label examples get the trigger and labels are left unchanged. `"mixed"`: the
            poisoned examples are drawn from every class and those not already in the target class are
            relabelled (the MuScleLoRA authors' AddSent), so a share of the poison is clean-label.
        seed (`int`, defaults to `0`):
            Seed of the example selection and of the insert positions (reproducible per example).
        text_column (`str`, defaults to `"text"`):
            Column holding the input text.
        label_column (`str`, defaults to `"label"`):
            Column holding the integer label.
    """

    target_label: int = field(default=1, metadata={"help": "Label id the backdoor should produce."})
    poison_rate: float = field(
        default=0.1,
        metadata={"help": "Share of the whole training set to poison, in (0, 1]."},
    )
    label_mode: str = field(
        default="dirty",
        metadata={
            "help": "'dirty' (relabel triggered non-target examples), 'clean' (trigger target examples only) or "
            "'mixed' (trigger examples of every class, relabel the non-target ones)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the example selection and insert positions."})
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the integer label."})

    def __post_init__(self) -> None:
        if isinstance(self.target_label, bool) or not isinstance(self.target_label, (int, np.integer)):
            raise ValueError(f"`target_label` must be an integer label id, got {self.target_label!r}.")
        if self.target_label < 0:
            raise ValueError(f"`target_label` must be >= 0, got {self.target_label}.")
        self.target_label = int(self.target_label)
        if not 0.0 < float(self.poison_rate) <= 1.0:
            raise ValueError(
                f"`poison_rate` must be in (0, 1], got {self.poison_rate}; e.g. 0.1 poisons 10% of the training set."
            )
        if self.label_mode not in LABEL_MODES:
            raise ValueError(
                f"`label_mode` must be one of {LABEL_MODES}, got {self.label_mode!r}: 'dirty' relabels triggered "
                "non-target examples, 'clean' triggers target examples only, 'mixed' triggers every class."
            )
        if not self.text_column or not self.label_column:
            raise ValueError("`text_column` and `label_column` must be non-empty column names.")

    # ------------------------------------------------------------------ to override
    def insert(self, text: str, rng: np.random.Generator) -> str:
        """Return ``text`` with the trigger inserted; positions come from ``rng``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _check_dataset(self, dataset: Dataset) -> None:
        from datasets import ClassLabel, Dataset

        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"expected a `datasets.Dataset`, got {type(dataset).__name__}; pass one split, e.g. dataset['train']."
            )
        for column in (self.text_column, self.label_column):
            if column not in dataset.column_names:
                raise ValueError(
                    f"column {column!r} not found in the dataset (columns: {dataset.column_names}); "
                    "set `text_column` / `label_column` on the attack."
                )
        feature = dataset.features[self.label_column]
        if isinstance(feature, ClassLabel):
            if self.target_label >= feature.num_classes:
                raise ValueError(
                    f"`target_label`={self.target_label} is not a label of this dataset: the ClassLabel "
                    f"{self.label_column!r} has ids 0..{feature.num_classes - 1} ({feature.names})."
                )
        else:
            present = (
                set(np.unique(np.asarray(dataset[self.label_column])).tolist()) if len(dataset) else set()
            )
            if self.target_label not in present:
                raise ValueError(
                    f"`target_label`={self.target_label} does not occur in column {self.label_column!r} "
                    f"(labels present: {sorted(present)})."
                )

    def _select(self, labels: np.ndarray) -> np.ndarray:
        """Indices of the examples to poison, sorted; deterministic for the seed."""
        is_target = labels == self.target_label
        pools = {"dirty": (~is_target, "non-target"), "clean": (is_target, "target"),
                 "mixed": (np.ones_like(is_target), "")}
        pool, kind = pools[self.label_mode]
        candidates = np.flatnonzero(pool)
        wanted = int(round(self.poison_rate * len(labels)))
        if wanted > len(candidates):
            warnings.warn(
                f"{type(self).__name__}: poison_rate={self.poison_rate} asks for {wanted} poisoned examples "
                f"but only {len(candidates)} {kind + ' ' if kind else ''}"
                f"candidates exist; poisoning all {len(candidates)}.",
                stacklevel=3,
            )
            wanted = len(candidates)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(candidates, size=wanted, replace=False)) if wanted else candidates[:0]

    # ------------------------------------------------------------------ public API
    def poison(self, dataset: Dataset) -> Dataset:
        """Return a poisoned copy of ``dataset`` (same rows and columns, plus a bool ``is_poisoned``).

        The input is not modified. The result is cached by ``datasets`` under a fingerprint derived from
        the attack configuration and the input's fingerprint.

        Example:
            >>> from datasets import Dataset
            >>> from hf_backdoor_defense.attacks import BadNets
            >>> data = Dataset.from_dict({"text": ["good film", "bad film"] * 5, "label": [1, 0] * 5})
            >>> poisoned = BadNets(poison_rate=0.2).poison(data)
            >>> sum(poisoned["is_poisoned"])
            2
        """
        self._check_dataset(dataset)
        if "is_poisoned" in dataset.column_names:
            raise ValueError(
                "the dataset already has an `is_poisoned` column; poison the clean dataset instead."
            )
        labels = np.asarray(dataset[self.label_column])
        chosen = set(self._select(labels).tolist())
        relabel = self.label_mode in ("dirty", "mixed")  # a target-class example keeps its (target) label
        from datasets import Value

        features = dataset.features.copy()
        features["is_poisoned"] = Value("bool")

        def apply(example: dict, index: int) -> dict:
            hit = index in chosen
            out = {"is_poisoned": hit}
            if hit:
                out[self.text_column] = self.insert(
                    example[self.text_column], example_rng(self.seed, index, _POISON_STREAM)
                )
                if relabel:
                    out[self.label_column] = self.target_label
            return out

        return self._map_rows(dataset, apply, "poison", "Poisoning", features)

    def triggered_test_set(self, test: Dataset) -> Dataset:
        """Every non-target example of ``test`` with the trigger inserted, labelled with the target label.

        The true label is kept in an ``original_label`` column. Used for the attack success rate.
        """
        self._check_dataset(test)
        target = self.target_label
        label_column = self.label_column
        kept = test.filter(
            lambda batch: [label != target for label in batch[label_column]],
            batched=True,
            new_fingerprint=self._fingerprint(test, "triggered-filter"),
            desc="Selecting non-target examples",
        )
        features = kept.features.copy()
        features["original_label"] = kept.features[label_column]

        def apply(example: dict, index: int) -> dict:
            # `index` is the position in the filtered set, which is stable for a given test set.
            return {
                self.text_column: self.insert(
                    example[self.text_column], example_rng(self.seed, index, _TEST_STREAM)
                ),
                "original_label": example[label_column],
                label_column: target,
            }

        return self._map_rows(kept, apply, "triggered", "Inserting triggers", features)
