"""What a cell of the defense matrix is, how its key is computed, and the three presets.

A *cell* is ``(dataset, attack, label_mode, defense, seed)`` plus the shared :class:`MatrixSettings`. Its
key is a short SHA-256 of the cell's full JSON configuration, so a result file can be trusted exactly when
its key matches: change any setting and every affected cell gets a new key (and is trained again).

Example:
    >>> from hf_backdoor_defense.matrix.config import CellSpec, MatrixGrid, MatrixSettings, plan_cells
    >>> grid = MatrixGrid(datasets=["rotten_tomatoes"], attacks=["badnets"], label_modes=["dirty"],
    ...                   defenses=["none", "lora"], seeds=[0])
    >>> [c.name for c in plan_cells(grid)]
    ['rotten_tomatoes/badnets/clean_floor/s0', 'rotten_tomatoes/badnets/dirty/none/s0', 'rotten_tomatoes/badnets/dirty/lora/s0']
    >>> len(CellSpec("rotten_tomatoes", "badnets", "dirty", "none", 0).key(MatrixSettings()))
    12
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

__all__ = [
    "ATTACKS",
    "CLEAN_FLOOR",
    "DEFENSES",
    "LABEL_MODES",
    "MATRIX_VERSION",
    "PRESETS",
    "RATES",
    "CellSpec",
    "MatrixGrid",
    "MatrixSettings",
    "config_hash",
    "estimate_seconds",
    "plan_cells",
]

MATRIX_VERSION = 1
"""Bump when a cell's meaning changes without a settings change: every key changes with it."""

DEFENSES: dict[str, str] = {
    "none": "none (full FT)",
    "lora": "LoRA",
    "musclelora": "MuScleLoRA",
    "fine_mixing": "Fine-mixing",
    "e_pur": "E-PUR",
    "fine_purifying": "Fine-purifying",
    "w2sdefense": "W2SDefense",
}
"""Defense name -> label in the tables. ``none``/``lora``/``musclelora`` train on the poisoned set; the
other four start from the backdoored full fine-tune (the ``none`` model) and use the trusted clean set."""

ATTACKS: dict[str, str] = {"badnets": "BadNets", "addsent": "AddSent"}
LABEL_MODES: tuple[str, ...] = ("dirty", "clean")
CLEAN_FLOOR = "clean_floor"
"""Pseudo-defense of the floor cells: a full fine-tune on clean data, scored on the triggered test set."""


@dataclass
class MatrixSettings:
    """Settings shared by every cell of the matrix (part of every cell's key).

    Args:
        model: Folder or Hub name of the encoder; ``None`` is the offline all-MiniLM-L6-v2 asset.
        train_size: Training examples per seed (a seeded subsample of the train split), poisoned per attack.
        test_size: Test examples (one fixed subsample of the test split) for CACC; its non-target part,
            triggered, gives the ASR.
        clean_size: Trusted clean examples per seed (from the validation split, never from the training
            set): the clean fine-tune of the purifiers, the W2SDefense student and teacher.
        reference_size: MuScleLoRA's reference set: the first examples of the trusted clean set.
        max_length: Truncation length of every tokenisation.
        trigger_room: Before poisoning, every text (train, clean, test) is cut to the whole words that fit in
            ``max_length`` tokens minus the special tokens minus ``trigger_room``, so a trigger inserted at a
            random word lies inside what the model reads (8 tokens hold AddSent's sentence or a few BadNets
            words). Without the cut, long texts (SpamAssassin mails) lose most triggers to truncation.
            ``None``: no cut.
        batch_size: Batch size of every training run.
        epochs: Epochs of the poisoned training (none / LoRA / MuScleLoRA) and of the clean floor model.
        full_ft_lr: Learning rate of full fine-tuning.
        adapter_lr: Learning rate of the LoRA and MuScleLoRA cells.
        poison_rate: Share of the whole training set poisoned.
        target_label: Label id the backdoor produces.
        badnets_num_triggers: BadNets trigger words per poisoned text.
        purify_epochs: Epochs of the clean fine-tune after Fine-mixing, E-PUR and Fine-purifying.
        purify_lr: Learning rate of that clean fine-tune (full model).
        fm_ratio: Fine-mixing: fraction of fine-tuned dimensions reset (random mask).
        fp_ratio: Fine-purifying: fraction of dimensions with the largest ``δ²/H`` reset.
        epur_tokens: E-PUR: embedding rows reset.
        w2s_epochs: W2SDefense: epochs of the student's LoRA on the clean set.
        w2s_lr: W2SDefense: learning rate of the student's LoRA and head.
        w2s_lora_r: W2SDefense: LoRA rank of the student.
        teacher_epochs: W2SDefense: epochs of the clean teacher's full fine-tune.
        teacher_lr: W2SDefense: learning rate of the teacher.
        test_seed: Seed of the fixed test subsample.
    """

    model: str | None = field(
        default=None, metadata={"help": "Encoder folder or Hub name; default: the offline all-MiniLM-L6-v2."}
    )
    train_size: int = field(default=2000, metadata={"help": "Training examples per seed (poisoned per attack)."})
    test_size: int = field(default=1000, metadata={"help": "Test examples (fixed subsample) for CACC and ASR."})
    clean_size: int = field(default=256, metadata={"help": "Trusted clean examples per seed, from validation."})
    reference_size: int = field(default=96, metadata={"help": "MuScleLoRA reference examples (from the clean set)."})
    max_length: int = field(default=64, metadata={"help": "Truncation length of every tokenisation."})
    trigger_room: int | None = field(
        default=8, metadata={"help": "Cut texts to max_length minus this many tokens before poisoning (None: no cut)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Batch size of every training run."})
    epochs: float = field(default=3.0, metadata={"help": "Epochs of the poisoned training and the clean floor."})
    full_ft_lr: float = field(default=5e-5, metadata={"help": "Learning rate of full fine-tuning."})
    adapter_lr: float = field(default=2e-3, metadata={"help": "Learning rate of the LoRA / MuScleLoRA cells."})
    poison_rate: float = field(default=0.1, metadata={"help": "Share of the whole training set poisoned."})
    target_label: int = field(default=1, metadata={"help": "Label id the backdoor produces."})
    badnets_num_triggers: int = field(default=1, metadata={"help": "BadNets trigger words per poisoned text."})
    purify_epochs: float = field(default=3.0, metadata={"help": "Epochs of the post-purification clean fine-tune."})
    purify_lr: float = field(default=2e-5, metadata={"help": "Learning rate of the post-purification fine-tune."})
    fm_ratio: float = field(default=0.5, metadata={"help": "Fine-mixing: fraction of dimensions reset."})
    fp_ratio: float = field(default=0.3, metadata={"help": "Fine-purifying: fraction of dimensions reset."})
    epur_tokens: int = field(default=100, metadata={"help": "E-PUR: embedding rows reset."})
    w2s_epochs: float = field(default=5.0, metadata={"help": "W2SDefense: epochs of the student's LoRA."})
    w2s_lr: float = field(default=2e-4, metadata={"help": "W2SDefense: learning rate of the student's LoRA."})
    w2s_lora_r: int = field(default=8, metadata={"help": "W2SDefense: LoRA rank of the student."})
    teacher_epochs: float = field(default=3.0, metadata={"help": "W2SDefense: epochs of the clean teacher."})
    teacher_lr: float = field(default=5e-5, metadata={"help": "W2SDefense: learning rate of the teacher."})
    test_seed: int = field(default=1234, metadata={"help": "Seed of the fixed test subsample."})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # 3 and 3.0 must give the same key
            value = getattr(self, f.name)
            if isinstance(f.default, float) and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
        for name in ("train_size", "test_size", "clean_size", "reference_size", "max_length", "batch_size",
                     "epur_tokens", "w2s_lora_r", "badnets_num_triggers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        from ..data.truncation import check_trigger_room

        check_trigger_room(self.trigger_room, self.max_length)
        if self.reference_size > self.clean_size:
            raise ValueError(
                f"`reference_size` ({self.reference_size}) must be <= `clean_size` ({self.clean_size}): the "
                "MuScleLoRA reference set is drawn from the trusted clean set."
            )
        for name in ("epochs", "purify_epochs", "w2s_epochs", "teacher_epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        for name in ("fm_ratio", "fp_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {getattr(self, name)}.")
        if not 0.0 < self.poison_rate <= 1.0:
            raise ValueError(f"`poison_rate` must be in (0, 1], got {self.poison_rate}.")

    def to_dict(self) -> dict:
        """The settings as a plain dict (the order of the fields)."""
        return dataclasses.asdict(self)


@dataclass
class MatrixGrid:
    """Which cells to run: every combination of the lists (plus a clean floor per dataset, attack and seed).

    Args:
        datasets: ``"rotten_tomatoes"``, ``"spamassassin"``, or anything
            :func:`~hf_backdoor_defense.data.load_text_classification` loads (a local folder of CSV files...).
        attacks: Names from :data:`ATTACKS`.
        label_modes: ``"dirty"`` and/or ``"clean"``.
        defenses: Names from :data:`DEFENSES`.
        seeds: Seeds; each seed draws its own training subsample, clean set, poisoned rows and model init.
    """

    datasets: list[str] = field(default_factory=lambda: ["rotten_tomatoes", "spamassassin"],
                                metadata={"help": "Datasets (built-in names or local paths)."})
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS), metadata={"help": "Attacks."})
    label_modes: list[str] = field(default_factory=lambda: list(LABEL_MODES), metadata={"help": "Label modes."})
    defenses: list[str] = field(default_factory=lambda: list(DEFENSES), metadata={"help": "Defenses."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds."})

    def __post_init__(self) -> None:
        for name, allowed in (("attacks", ATTACKS), ("label_modes", LABEL_MODES), ("defenses", DEFENSES)):
            unknown = [v for v in getattr(self, name) if v not in allowed]
            if unknown:
                raise ValueError(f"`{name}` has unknown entries {unknown}; choose from {list(allowed)}.")
        for name in ("datasets", "attacks", "label_modes", "defenses", "seeds"):
            values = list(dict.fromkeys(getattr(self, name)))  # drop duplicates, keep the order
            if not values:
                raise ValueError(f"`{name}` is empty: give at least one value.")
            setattr(self, name, values)

    def to_dict(self) -> dict:
        """The grid as a plain dict."""
        return dataclasses.asdict(self)


def config_hash(config: dict, length: int = 12) -> str:
    """Short hex SHA-256 of ``config`` serialised as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class CellSpec:
    """One cell: ``label_mode`` is ``None`` for the clean-floor cells (no poisoned training involved)."""

    dataset: str
    attack: str
    label_mode: str | None
    defense: str
    seed: int

    @property
    def name(self) -> str:
        """``dataset/attack/label_mode/defense/s<seed>`` (the label mode left out of floor cells)."""
        parts = [self.dataset, self.attack] + ([self.label_mode] if self.label_mode else [])
        return "/".join(parts + [self.defense, f"s{self.seed}"])

    def config(self, settings: MatrixSettings) -> dict:
        """The full JSON configuration the key is computed from."""
        return {"version": MATRIX_VERSION, "dataset": self.dataset, "attack": self.attack,
                "label_mode": self.label_mode, "defense": self.defense, "seed": self.seed,
                "settings": settings.to_dict()}

    def key(self, settings: MatrixSettings) -> str:
        """Short hash of :meth:`config`: the name of the cell's result file."""
        return config_hash(self.config(settings))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_cells(grid: MatrixGrid) -> list[CellSpec]:
    """Every cell of ``grid`` in run order: per dataset and seed, the floors, then attack x label mode x defense.

    Defenses reuse one backdoored model per (dataset, attack, label mode, seed), so they run next to each other.
    """
    cells = []
    for dataset in grid.datasets:
        for seed in grid.seeds:
            cells += [CellSpec(dataset, attack, None, CLEAN_FLOOR, seed) for attack in grid.attacks]
            for attack in grid.attacks:
                for mode in grid.label_modes:
                    cells += [CellSpec(dataset, attack, mode, d, seed) for d in grid.defenses]
    return cells


# Preset name -> (grid, settings overrides). The wall-time estimates are in benchmarks/run_matrix.py.
PRESETS: dict[str, tuple[dict, dict]] = {
    "quick": (
        {"datasets": ["rotten_tomatoes"], "attacks": ["badnets"], "label_modes": ["dirty"], "seeds": [0]},
        {"train_size": 64, "test_size": 48, "clean_size": 32, "reference_size": 16, "max_length": 32,
         "batch_size": 16, "epochs": 1.0, "purify_epochs": 1.0, "w2s_epochs": 1.0, "teacher_epochs": 1.0,
         "epur_tokens": 20},
    ),
    "reduced": (
        {"seeds": [0]},
        # Sized like `make demo` (800 sentences, batch 16, length 32, full FT at 1e-4): at 600 sentences,
        # batch 32 and 5e-5, every full fine-tune stayed at the majority class (measured 2026-11-22).
        {"train_size": 800, "test_size": 400, "clean_size": 128, "max_length": 32, "batch_size": 16,
         "epochs": 2.0, "full_ft_lr": 1e-4, "teacher_lr": 1e-4, "purify_lr": 5e-5, "purify_epochs": 2.0,
         "w2s_epochs": 3.0, "teacher_epochs": 2.0},
    ),
    "full": ({}, {}),
}


RATES: dict[str, float] = {
    "full": 0.18,        # full fine-tune (also the teacher and the post-purification fine-tune)
    "lora": 0.15,        # LoRA on the poisoned set
    "musclelora": 0.36,  # MuScleLoRA: adapter + a reference batch every step
    "w2s": 0.20,         # W2SDefense student step (LoRA + the teacher's forward)
    "fisher": 0.10,      # Fine-purifying's empirical Fisher, per clean example
    "eval": 0.06,        # one forward pass, per test example
    "cell": 6.0,         # fixed cost of a cell: loading models, building trainers (seconds)
}
"""Seconds per example and epoch at ``max_length`` 64, measured on the project's 2-core machine with 1 torch
thread while it was shared with another job (see ``benchmarks/run_matrix.py``). Used for estimates only."""


def estimate_seconds(cells: list[CellSpec], settings: MatrixSettings, rates: dict[str, float] | None = None) -> float:
    """Rough wall time of running ``cells`` in order, shared models counted once (as if none were cached).

    Training and evaluation are taken as linear in the number of examples, epochs and ``max_length``.
    """
    r = {**RATES, **(rates or {})}
    s = settings
    scale = s.max_length / 64
    poisoned_train = s.train_size * s.epochs * scale
    clean_ft = s.clean_size * s.purify_epochs * scale
    evaluate = 1.5 * s.test_size * r["eval"] * scale  # clean test + the triggered non-target part
    seen: set[tuple] = set()
    total = 0.0
    for c in cells:
        shared = []
        if c.defense == CLEAN_FLOOR:
            shared.append((("clean", c.dataset, c.seed), poisoned_train * r["full"]))
        elif c.defense in ("none", "fine_mixing", "e_pur", "fine_purifying", "w2sdefense"):
            shared.append((("suspect", c.dataset, c.attack, c.label_mode, c.seed), poisoned_train * r["full"]))
        if c.defense == "w2sdefense":
            shared.append((("teacher", c.dataset, c.seed), s.clean_size * s.teacher_epochs * scale * r["full"]))
        for key, seconds in shared:
            if key not in seen:
                seen.add(key)
                total += seconds + r["cell"]
        own = {"lora": poisoned_train * r["lora"], "musclelora": poisoned_train * r["musclelora"],
               "fine_mixing": clean_ft * r["full"], "e_pur": clean_ft * r["full"],
               "fine_purifying": clean_ft * r["full"] + s.clean_size * scale * r["fisher"],
               "w2sdefense": s.clean_size * s.w2s_epochs * scale * r["w2s"]}.get(c.defense, 0.0)
        total += own + evaluate + r["cell"]
    return total
