"""What a cell of the defense matrix is, how its key is computed, and the presets.

A *cell* is ``(dataset, threat, defense, seed)`` plus the shared :class:`MatrixSettings`. Its key is a
short SHA-256 of the cell's full JSON configuration, so a result file can be trusted exactly when its key
matches: change any setting and every affected cell gets a new key (and is trained again).

* A **threat** names an attack, its trigger count and its label mode: ``badnets-dirty``,
  ``badnets4-clean`` (four distinct trigger words per sentence, training and test alike), ``addsent-mixed``
  (see :func:`parse_threat`). A ``+gc`` suffix (``badnets-dirty+gc``) makes it an adapter attack trained by the
  Gradient Control attacker: only the adapter cells (``lora``: the published adapter, ``retune``: the user's
  clean re-tune of it, the purifiers in adapter mode) run on such a threat.
* A **dataset** is a corpus name (``rotten_tomatoes``, ``spamassassin``, ``spamassassin@1`` for one
  collection period, a local folder), or a cross-domain pair ``source->target`` such as
  ``spamassassin@1->spamassassin@2``: poisoned training on the source, the trusted clean set and the
  evaluation on the target (see :func:`parse_dataset`).
* **Floors** are cells without any poison: ``clean_floor`` (full fine-tune on the clean training set; its
  ASR is the floor every ASR is read against) and ``clean_lora`` (LoRA on the clean set; the CACC reference
  of the adapters). They depend on the trigger, not on the label mode.

Example:
    >>> from hf_backdoor_defense.matrix.config import CellSpec, MatrixGrid, MatrixSettings, plan_cells
    >>> grid = MatrixGrid(datasets=["rotten_tomatoes"], threats=["badnets-dirty"], defenses=["none", "lora"],
    ...                   seeds=[0])
    >>> [c.name for c in plan_cells(grid)]
    ['rotten_tomatoes/badnets/clean_floor/s0', 'rotten_tomatoes/badnets-dirty/none/s0', 'rotten_tomatoes/badnets-dirty/lora/s0']
    >>> len(CellSpec("rotten_tomatoes", "badnets-dirty", "none", 0).key(MatrixSettings()))
    12
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ..attacks.base import LABEL_MODES
from ..options import EMBEDDING_MODES, ESTIMATORS, FEATURE_ALIGNMENTS, GATES, RATIO_BASES, check_pooling

__all__ = [
    "ADAPTER_DEFENSES",
    "ATTACKERS",
    "ATTACKS",
    "BASELINES",
    "DATA_FILTERS",
    "OUR_DEFENSES",
    "CLEAN_FLOOR",
    "CLEAN_LORA",
    "DEFENSES",
    "EVAL_SPLITS",
    "FLOORS",
    "LABEL_MODES",
    "MATRIX_VERSION",
    "PRESETS",
    "RATES",
    "CellSpec",
    "DatasetSpec",
    "MatrixGrid",
    "MatrixSettings",
    "Threat",
    "config_hash",
    "estimate_seconds",
    "parse_dataset",
    "parse_threat",
    "plan_cells",
]

MATRIX_VERSION = 2
"""Bump when a cell's meaning changes without a settings change: every key changes with it.
2: threats (attack x triggers x label mode) replace attacks x label modes; pooling, eval split, cross-domain."""

DEFENSES: dict[str, str] = {
    "none": "none (full FT)",
    "lora": "LoRA",
    "musclelora": "MuScleLoRA",
    "fine_mixing": "Fine-mixing",
    "e_pur": "E-PUR",
    "fine_purifying": "Fine-purifying",
    "w2sdefense": "W2SDefense",
    "w2s_lora": "LoRA on the W2S clean set (its baseline)",
    "retune": "the user's clean re-tune of the poisoned LoRA",
    "onion": "ONION (baseline)",
    "strip": "STRIP (baseline)",
    "rap": "RAP (baseline)",
    "bki": "BKI (baseline)",
    "cube": "CUBE (baseline)",
}
"""Defense name -> label in the tables. ``none``/``lora``/``musclelora`` train on the poisoned set; the
purifiers and W2SDefense start from the backdoored full fine-tune (the ``none`` model) and use the trusted
clean set; the baselines ONION, STRIP and RAP act at inference time on the ``none`` model (STRIP's and RAP's
thresholds come from the trusted clean set); BKI and CUBE filter the poisoned training set with the ``none``
model and retrain on what they keep. ``w2s_lora`` is W2SDefense's own baseline (the authors' ``lora.py``): the
same LoRA on the same clean set with the cross-entropy alone, no teacher. ``retune`` is the Gradient Control
threat model's user: the poisoned LoRA adapter (trained as the ``lora`` cell trains, or by the Gradient Control
attacker on a ``+gc`` threat) re-tuned on the trusted clean set, which a cross-domain dataset draws from the
target."""

_MUSCLELORA_SETTINGS = ("musclelora_head", "musclelora_init", "musclelora_alignment", "musclelora_lr",
                        "musclelora_multiscale_lr", "musclelora_epochs", "musclelora_best_dev", "musclelora_gate")
_PURIFY_SETTINGS = ("purify_epochs", "purify_lr")
_W2S_SETTINGS = ("w2s_epochs", "w2s_lr", "w2s_lora_r", "w2s_lora_alpha", "w2s_clean_source", "w2s_clean_size",
                 "w2s_batch_size", "w2s_weight_decay", "w2s_max_grad_norm", "w2s_best_dev")
DEFENSE_SETTINGS: dict[str, tuple[str, ...]] = {
    "lora": ("adapter_lr",),
    "clean_lora": ("adapter_lr",),
    "musclelora": ("adapter_lr", "reference_size", *_MUSCLELORA_SETTINGS),
    "fine_mixing": (*_PURIFY_SETTINGS, "fm_ratio", "fm_ratio_of"),
    "e_pur": (*_PURIFY_SETTINGS, "epur_tokens"),
    "fine_purifying": (*_PURIFY_SETTINGS, "fp_ratio", "fp_ratio_of", "fp_embeddings", "fp_estimator", "fp_alpha"),
    "w2sdefense": (*_W2S_SETTINGS, "teacher_model", "teacher_epochs", "teacher_lr", "w2s_feature_alignment",
                   "w2s_ce_weight", "w2s_kd_weight", "w2s_feature_weight"),
    "w2s_lora": _W2S_SETTINGS,
    "onion": ("onion_model", "onion_threshold", "onion_eval_size"),
    "strip": ("strip_copies", "strip_swap_ratio", "strip_frr", "strip_stop_words"),
    "rap": ("rap_word", "rap_frr", "rap_epochs", "rap_lr", "rap_scale"),
    "bki": ("bki_keywords",),
    "cube": ("cube_min_samples",),
    "retune": ("adapter_lr", "retune_epochs", "retune_lr"),
}
"""The :class:`MatrixSettings` fields only some cells read; every other field is shared by all cells."""
_GC_SETTINGS = ("adapter_lr", "gc_clnorm_alpha")
"""What every cell of a Gradient Control threat (``+gc``) reads besides its own: the attacker's adapter."""
_DEFENSE_ONLY = {name for names in DEFENSE_SETTINGS.values() for name in names} | set(_GC_SETTINGS)

BASELINES = ("onion", "strip", "rap")
"""The field's inference-time baselines: they score the backdoored ``none`` model behind a filter."""
DETECTORS = ("strip", "rap")
"""The baselines that reject inputs (ONION corrects them): their CACC and ASR count a rejection as lost."""
DATA_FILTERS = ("bki", "cube")
"""The field's training-data filters: the backdoored ``none`` model finds the poison, the model is retrained."""
ADAPTER_DEFENSES = ("lora", "retune", "fine_mixing", "fine_purifying")
"""The cells a Gradient Control threat (``+gc``) has: the attacker's adapter, the user's re-tune of it, and the
purifiers in adapter mode (the reference is "no adapter"), each followed by the clean fine-tune."""
OUR_DEFENSES = tuple(d for d in DEFENSES if d not in BASELINES + DATA_FILTERS + ("w2s_lora", "retune"))
"""The defenses this library implements (and ``none``): a grid's default; the baselines, W2SDefense's own
baseline (``w2s_lora``) and the user's re-tune (``retune``) are added by name."""

CLEAN_FLOOR = "clean_floor"
"""Floor cell: a full fine-tune on clean data, scored on the triggered test set (the ASR floor)."""
CLEAN_LORA = "clean_lora"
"""Floor cell: LoRA on clean data (the CACC reference of the adapter defenses)."""
FLOORS: dict[str, str] = {CLEAN_FLOOR: "clean-data floor (full FT)", CLEAN_LORA: "clean-data LoRA"}

ATTACKS: dict[str, str] = {"badnets": "BadNets", "addsent": "AddSent"}
EVAL_SPLITS: tuple[str, ...] = ("test", "validation")
_THREAT = re.compile(r"^(?P<attack>[a-z]+?)(?P<n>\d*)-(?P<mode>[a-z]+)(?P<gc>\+gc)?$")
ATTACKERS: dict[str, str] = {"plain": "", "gradient_control": "Gradient Control"}
"""How the poisoned adapter of a threat is trained: plainly, or by the Gradient Control attacker (``+gc``)."""
_TRIGGER = re.compile(r"^(?P<attack>[a-z]+?)(?P<n>\d*)$")


class Threat(NamedTuple):
    """An attack with its trigger count, label mode and attacker (parsed from e.g. ``"badnets4-clean"``)."""

    attack: str
    num_triggers: int
    label_mode: str | None  # None: a floor's trigger (no poisoned training)
    attacker: str = "plain"  # "gradient_control": the poisoned adapter is trained by the Gradient Control attacker

    @property
    def trigger(self) -> str:
        """``badnets``, ``badnets4``, ``addsent``: what the test set carries (the floor's column)."""
        return self.attack + (str(self.num_triggers) if self.num_triggers != 1 else "")

    @property
    def label(self) -> str:
        words = ATTACKS[self.attack] + (f" ×{self.num_triggers}" if self.num_triggers != 1 else "")
        words = f"{words}, {self.label_mode}-label" if self.label_mode else words
        return f"{words}, {ATTACKERS[self.attacker]}" if self.adapter_attack else words

    @property
    def adapter_attack(self) -> bool:
        """Trained by the Gradient Control attacker (``+gc``): only :data:`ADAPTER_DEFENSES` cells run on it."""
        return self.attacker != "plain"


def parse_threat(name: str, *, floor: bool = False) -> Threat:
    """``"badnets4-clean"`` -> ``Threat("badnets", 4, "clean")``; with ``floor=True`` a trigger (``"badnets4"``);
    ``"badnets-dirty+gc"`` -> the same attack with its adapter trained by the Gradient Control attacker.

    Raises a ``ValueError`` naming the attacks and label modes for anything else.
    """
    match = (_TRIGGER if floor else _THREAT).match(str(name))
    form = "<attack>[<triggers>]" if floor else "<attack>[<triggers>]-<label mode>[+gc]"
    if not match or match["attack"] not in ATTACKS or (not floor and match["mode"] not in LABEL_MODES):
        raise ValueError(f"threat {name!r} is not {form}: attacks {list(ATTACKS)}, label modes "
                         f"{list(LABEL_MODES)}, e.g. 'badnets-dirty', 'badnets4-clean', 'addsent-mixed', "
                         "'badnets-dirty+gc' (the Gradient Control attacker's adapter).")
    n = int(match["n"] or 1)
    if n < 1 or (match["attack"] == "addsent" and n != 1):
        raise ValueError(f"threat {name!r}: the trigger count must be >= 1 (BadNets only; AddSent inserts one "
                         "sentence).")
    attacker = "gradient_control" if not floor and match["gc"] else "plain"
    return Threat(match["attack"], n, None if floor else match["mode"], attacker)


class DatasetSpec(NamedTuple):
    """Where a cell's data come from: ``source`` for the (poisoned) training set, ``target`` for the trusted
    clean set and the evaluation; equal unless the dataset is a cross-domain pair."""

    source: str
    target: str

    @property
    def cross_domain(self) -> bool:
        return self.source != self.target

    @property
    def corpus_revisions(self) -> dict[str, int]:
        """Revisions of the revised built-in corpora this dataset reads (``{}`` for any other corpus)."""
        from ..data.corpora import CORPUS_REVISIONS

        names = sorted({name.split("@")[0] for name in (self.source, self.target)})
        return {name: CORPUS_REVISIONS[name] for name in names if name in CORPUS_REVISIONS}


def parse_dataset(name: str) -> DatasetSpec:
    """``"rotten_tomatoes"`` -> same source and target; ``"spamassassin@1->spamassassin@2"`` -> the pair."""
    parts = [p.strip() for p in str(name).split("->")]
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"dataset {name!r}: give a corpus name or 'source->target' (e.g. "
                         "'spamassassin@1->spamassassin@2').")
    return DatasetSpec(parts[0], parts[-1])


@dataclass
class MatrixSettings:
    """Settings of the matrix's cells. A cell's key holds the shared ones and those of its own defense
    (:data:`DEFENSE_SETTINGS`, :meth:`for_cell`), so a change re-runs only the cells that read the setting.

    Args:
        model: Folder or Hub name of the encoder; ``None`` is the offline all-MiniLM-L6-v2 asset.
        pooling: How every classifier reads the encoder (:data:`hf_backdoor_defense.models.POOLING_MODES`):
            ``"mean"`` (masked mean over the tokens, the default: the three setups tie on validation accuracy
            and this one has no untrained pooler in the path, see the ``encoder`` study), ``"cls"`` ([CLS]
            through the checkpoint's pooler), ``"pooler_head"`` (the pooler trained and kept as task head).
        eval_split: ``"test"`` for the reported figures; ``"validation"`` for studies that choose settings:
            the evaluation set is then validation examples outside the trusted clean set (for a
            cross-domain dataset, the target's validation split), and the test split is never read.
        train_size: Training examples per seed (a seeded subsample of the train split), poisoned per attack.
        test_size: Evaluation examples (a fixed subsample of the test split, or of the validation examples
            outside the clean set) for CACC; its non-target part, triggered, gives the ASR.
        clean_size: Trusted clean examples per seed (from the validation split, never from the training
            set; from the target's training split for a cross-domain dataset): the clean fine-tune of the
            purifiers, the W2SDefense student and teacher.
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
        purify_epochs: Epochs of the clean fine-tune after Fine-mixing, E-PUR and Fine-purifying.
        purify_lr: Learning rate of that clean fine-tune (full model).
        fm_ratio: Fine-mixing: fraction of fine-tuned dimensions reset (random mask).
        fp_ratio: Fine-purifying: fraction of dimensions with the largest ``δ²/H`` reset.
        fm_ratio_of / fp_ratio_of: What the ratio counts: ``"all"`` dimensions (how the matrix's cells were first
            measured) or those the fine-tune ``"moved"`` (the library's default; see the purification page).
        fp_embeddings: Fine-purifying: ``"include"`` the embedding matrices in the ranking (first measured) or
            ``"exclude"`` them (the library's default).
        fp_estimator: Fine-purifying: Fisher diagonal from squared ``"batch"`` gradients (first measured) or
            per-``"example"`` gradients (the library's default, the paper's).
        fp_alpha: Fine-purifying: exponent of the curvature in ``δ²/(H + ε)^α`` (1: the paper's score; smaller
            leans on the drift, for suspects trained with Adam, whose steps are about one learning rate each).
        epur_tokens: E-PUR: embedding rows reset.
        w2s_epochs: W2SDefense: epochs of the student's LoRA on the clean set.
        w2s_lr: W2SDefense: learning rate of the student's LoRA and head.
        w2s_lora_r: W2SDefense: LoRA rank of the student.
        w2s_lora_alpha: W2SDefense: LoRA alpha of the student; ``None``: twice the rank (the authors: alpha = r).
        w2s_clean_source: W2SDefense: the set the student distils on and the teacher learns: ``"clean"`` (the
            trusted clean set) or ``"unused_train"`` (training rows of the target corpus that the poisoned sample
            did not draw, the authors' large clean set; the trusted clean set then serves as dev).
        w2s_clean_size: W2SDefense: with ``"unused_train"``, at most this many rows (``None``: all there are).
        w2s_batch_size / w2s_weight_decay / w2s_max_grad_norm: W2SDefense: the student's batch size, AdamW weight
            decay and gradient clipping (``0``: none; the authors use 32, 0.01 and none).
        w2s_best_dev: W2SDefense: score every epoch on dev and keep the best (needs ``"unused_train"``).
        w2s_feature_alignment: W2SDefense: ``"per_example"`` or the authors' ``"authors"`` feature term.
        w2s_ce_weight / w2s_kd_weight / w2s_feature_weight: W2SDefense: the weights of the cross-entropy, the
            T²-scaled KL and the feature term; ``None``: the authors' weights for the trigger family (the
            trainer's ``"word"`` preset for BadNets, ``"sentence"`` for AddSent).
        teacher_model: W2SDefense: the teacher's encoder (``"minilm"``, a Hub id or a folder); ``None``: the
            matrix's ``model``, so teacher and student share a backbone. With ``model="smollm2"`` and
            ``teacher_model="minilm"`` the cells are weak-to-strong as the authors run them: a small clean
            encoder teaches a larger backdoored decoder.
        teacher_epochs: W2SDefense: epochs of the clean teacher's full fine-tune.
        teacher_lr: W2SDefense: learning rate of the teacher.
        musclelora_head: MuScleLoRA: ``"frozen"`` (the task head stays at its random initialisation, the
            authors' setting) or ``"trainable"`` (trained and saved, PEFT's SEQ_CLS behaviour).
        musclelora_init: MuScleLoRA: ``"zero"`` (every B factor starts at zero, outputs unchanged at creation)
            or ``"paper"`` (both multi-scale factors Kaiming-uniform, the authors' initialisation).
        musclelora_alignment: MuScleLoRA: gradient-alignment preset, ``"encoder"`` (project while the
            reference loss is above 0.4, then mix in up to 10 % raw gradient) or ``"llm"`` (pure projection).
        musclelora_lr: MuScleLoRA: learning rate of the adapter; ``None``: ``adapter_lr``.
        musclelora_multiscale_lr: MuScleLoRA: learning rate of the multi-scale factors; ``None``: the
            adapter's.
        musclelora_epochs: MuScleLoRA: training epochs; ``None``: ``epochs``.
        musclelora_best_dev: MuScleLoRA: score the clean examples outside the reference set after every
            epoch and keep the best epoch (the authors keep the best-dev checkpoint).
        musclelora_gate: MuScleLoRA: judge a vanished reference gradient per ``"tensor"`` or on the ``"global"``
            mean norm over every trainable tensor (the authors' code, threshold 5e-7).
        onion_model: ONION: causal LM scoring fluency (``"smollm2"``: the offline SmolLM2-135M; or a Hub id
            or folder).
        onion_threshold: ONION: remove the words whose deletion lowers the perplexity by more than this.
        onion_eval_size: ONION: score at most this many clean and this many triggered evaluation inputs (seeded
            subsamples; ``None``: all). ONION runs the language model once per word of every input, over 20
            minutes for a 1,000-sentence cell on 2 CPU cores; the cell records the sizes it scored.
        strip_copies: STRIP: perturbed copies per input.
        strip_swap_ratio: STRIP: fraction of an input's words replaced in each copy.
        strip_frr: STRIP: clean inputs rejected (sets the threshold on the trusted clean set).
        strip_stop_words: STRIP: leave English stop words out of the replacement words (OpenBackdoor does).
        rap_word: RAP: the rare word whose embedding is learned (not one of the attack's triggers).
        rap_frr: RAP: clean target-class inputs rejected (sets the threshold on the trusted clean set).
        rap_epochs: RAP: passes over the trusted clean set's target-class rows while the word is learned.
        rap_lr: RAP: step size on the word's vector.
        rap_scale: RAP: weight of the "drop too small" part of its loss (the authors raise it when the
            threshold ends at or below zero).
        bki_keywords: BKI: backdoor keywords whose sentences are removed before retraining.
        cube_min_samples: CUBE: HDBSCAN's ``min_samples`` (the authors' toolkit uses 100).
        retune_epochs: ``retune``: epochs of the user's clean re-tune of the poisoned adapter.
        retune_lr: ``retune``: its learning rate; ``None``: ``adapter_lr``.
        gc_clnorm_alpha: Gradient Control attacker (``+gc`` threats): the CLNorm step size.
        test_seed: Seed of the fixed test subsample.
    """

    model: str | None = field(
        default=None, metadata={"help": "Encoder folder or Hub name; default: the offline all-MiniLM-L6-v2."}
    )
    pooling: str = field(default="mean", metadata={"help": "Encoder setup: 'mean', 'cls' or 'pooler_head'."})
    eval_split: str = field(default="test", metadata={
        "help": "'test' (reported figures) or 'validation' (studies: validation examples outside the clean set)."})
    train_size: int = field(default=2000, metadata={"help": "Training examples per seed (poisoned per attack)."})
    test_size: int = field(default=1000, metadata={"help": "Evaluation examples (fixed subsample) for CACC and ASR."})
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
    purify_epochs: float = field(default=3.0, metadata={"help": "Epochs of the post-purification clean fine-tune."})
    purify_lr: float = field(default=2e-5, metadata={"help": "Learning rate of the post-purification fine-tune."})
    fm_ratio: float = field(default=0.5, metadata={"help": "Fine-mixing: fraction of dimensions reset."})
    fp_ratio: float = field(default=0.3, metadata={"help": "Fine-purifying: fraction of dimensions reset."})
    fm_ratio_of: str = field(default="all", metadata={
        "help": "Fine-mixing: the ratio counts 'all' dimensions or the 'moved' ones.", "key_default": "all"})
    fp_ratio_of: str = field(default="all", metadata={
        "help": "Fine-purifying: the ratio counts 'all' dimensions or the 'moved' ones.", "key_default": "all"})
    fp_embeddings: str = field(default="include", metadata={
        "help": "Fine-purifying: 'include' or 'exclude' the embeddings from the ranking.", "key_default": "include"})
    fp_estimator: str = field(default="batch", metadata={
        "help": "Fine-purifying: Fisher from 'batch' or per-'example' gradients.", "key_default": "batch"})
    fp_alpha: float = field(default=1.0, metadata={
        "help": "Fine-purifying: exponent alpha of H in delta^2 / H^alpha (1: the paper).", "key_default": 1.0})
    epur_tokens: int = field(default=100, metadata={"help": "E-PUR: embedding rows reset."})
    w2s_epochs: float = field(default=5.0, metadata={"help": "W2SDefense: epochs of the student's LoRA."})
    w2s_lr: float = field(default=2e-4, metadata={"help": "W2SDefense: learning rate of the student's LoRA."})
    w2s_lora_r: int = field(default=8, metadata={"help": "W2SDefense: LoRA rank of the student."})
    w2s_lora_alpha: float | None = field(default=None, metadata={
        "help": "W2SDefense: LoRA alpha of the student; None: 2 x rank.", "key_default": None})
    w2s_clean_source: str = field(default="clean", metadata={
        "help": "W2SDefense: 'clean' (trusted set) or 'unused_train' (training rows outside the poisoned sample).",
        "key_default": "clean"})
    w2s_clean_size: int | None = field(default=None, metadata={
        "help": "W2SDefense: rows of 'unused_train' used (None: all).", "key_default": None})
    w2s_batch_size: int = field(default=16, metadata={"help": "W2SDefense: student batch size.", "key_default": 16})
    w2s_weight_decay: float = field(default=0.0, metadata={
        "help": "W2SDefense: AdamW weight decay of the student.", "key_default": 0.0})
    w2s_max_grad_norm: float = field(default=1.0, metadata={
        "help": "W2SDefense: gradient clipping of the student (0: none).", "key_default": 1.0})
    w2s_best_dev: bool = field(default=False, metadata={
        "help": "W2SDefense: keep the epoch best on dev (needs w2s_clean_source='unused_train').",
        "key_default": False})
    w2s_feature_alignment: str = field(default="per_example", metadata={
        "help": "W2SDefense: 'per_example' or the authors' 'authors' feature term.", "key_default": "per_example"})
    teacher_epochs: float = field(default=3.0, metadata={"help": "W2SDefense: epochs of the clean teacher."})
    teacher_lr: float = field(default=5e-5, metadata={"help": "W2SDefense: learning rate of the teacher."})
    teacher_model: str | None = field(default=None, metadata={
        "help": "W2SDefense: teacher encoder ('minilm', Hub id or folder); None: the matrix's model.",
        "key_default": None})
    w2s_ce_weight: float | None = field(default=None, metadata={
        "help": "W2SDefense: weight of the cross-entropy; None: the authors' for the trigger family.",
        "key_default": None})
    w2s_kd_weight: float | None = field(default=None, metadata={
        "help": "W2SDefense: weight of the T^2-scaled KL term; None: the authors'.", "key_default": None})
    w2s_feature_weight: float | None = field(default=None, metadata={
        "help": "W2SDefense: weight of the feature term; None: the authors'.", "key_default": None})
    musclelora_head: str = field(default="frozen", metadata={
        "help": "MuScleLoRA task head: 'frozen' (authors) or 'trainable'."})
    musclelora_init: str = field(default="zero", metadata={
        "help": "MuScleLoRA init: 'zero' (B factors zero) or 'paper' (multi-scale factors Kaiming)."})
    musclelora_alignment: str = field(default="encoder", metadata={
        "help": "MuScleLoRA alignment preset: 'encoder' or 'llm' (pure projection)."})
    musclelora_lr: float | None = field(default=None, metadata={
        "help": "MuScleLoRA learning rate; None: adapter_lr."})
    musclelora_multiscale_lr: float | None = field(default=None, metadata={
        "help": "MuScleLoRA multi-scale factors' learning rate; None: the adapter's."})
    musclelora_epochs: float | None = field(default=None, metadata={"help": "MuScleLoRA epochs; None: epochs."})
    musclelora_best_dev: bool = field(default=False, metadata={
        "help": "MuScleLoRA: keep the epoch best on the clean examples outside the reference set."})
    musclelora_gate: str = field(default="tensor", metadata={
        "help": "MuScleLoRA: vanished reference gradient judged per 'tensor' or on the 'global' mean norm.",
        "key_default": "tensor"})
    onion_model: str = field(default="smollm2", metadata={
        "help": "ONION language model: 'smollm2' (offline) or a Hub id / folder."})
    onion_threshold: float = field(default=0.0, metadata={"help": "ONION: suspicion threshold (perplexity drop)."})
    onion_eval_size: int | None = field(default=300, metadata={
        "help": "ONION: clean and triggered inputs scored (seeded subsamples; None: all)."})
    strip_copies: int = field(default=5, metadata={"help": "STRIP: perturbed copies per input."})
    strip_swap_ratio: float = field(default=0.5, metadata={"help": "STRIP: fraction of words replaced per copy."})
    strip_frr: float = field(default=0.01, metadata={"help": "STRIP: clean inputs rejected (sets the threshold)."})
    strip_stop_words: bool = field(default=True, metadata={"help": "STRIP: no stop words among the replacements."})
    rap_word: str = field(default="mb", metadata={"help": "RAP: rare word whose embedding is learned."})
    rap_frr: float = field(default=0.01, metadata={"help": "RAP: clean target-class inputs rejected."})
    rap_epochs: int = field(default=5, metadata={"help": "RAP: passes over the clean target-class rows."})
    rap_lr: float = field(default=1e-2, metadata={"help": "RAP: step size on the word's vector."})
    rap_scale: float = field(default=1.0, metadata={"help": "RAP: weight of the drop-too-small loss term."})
    bki_keywords: int = field(default=1, metadata={"help": "BKI: keywords whose sentences are removed."})
    cube_min_samples: int = field(default=100, metadata={"help": "CUBE: HDBSCAN min_samples."})
    retune_epochs: float = field(default=2.0, metadata={
        "help": "retune: epochs of the user's clean re-tune.", "key_default": 2.0})
    retune_lr: float | None = field(default=None, metadata={
        "help": "retune: learning rate of the user's re-tune; None: adapter_lr.", "key_default": None})
    gc_clnorm_alpha: float = field(default=1e-4, metadata={
        "help": "Gradient Control attacker (+gc threats): CLNorm step size.", "key_default": 1e-4})
    test_seed: int = field(default=1234, metadata={"help": "Seed of the fixed test subsample."})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # 3 and 3.0 must give the same key
            value = getattr(self, f.name)
            if isinstance(f.default, float) and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
        for name in ("train_size", "test_size", "clean_size", "reference_size", "max_length", "batch_size",
                     "w2s_batch_size",
                     "epur_tokens", "w2s_lora_r", "strip_copies", "bki_keywords", "rap_epochs",
                     "cube_min_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        from ..data.truncation import check_trigger_room

        check_pooling(self.pooling)
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"`eval_split` must be one of {list(EVAL_SPLITS)}, got {self.eval_split!r}: 'test' "
                             "for reported figures, 'validation' to choose settings.")

        check_trigger_room(self.trigger_room, self.max_length)
        if self.reference_size > self.clean_size:
            raise ValueError(
                f"`reference_size` ({self.reference_size}) must be <= `clean_size` ({self.clean_size}): the "
                "MuScleLoRA reference set is drawn from the trusted clean set."
            )
        for name in ("epochs", "purify_epochs", "w2s_epochs", "teacher_epochs", "retune_epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")

        for name, allowed in (("fm_ratio_of", RATIO_BASES), ("fp_ratio_of", RATIO_BASES),
                              ("fp_embeddings", EMBEDDING_MODES), ("fp_estimator", ESTIMATORS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        if isinstance(self.fp_alpha, bool) or not isinstance(self.fp_alpha, (int, float)) or self.fp_alpha < 0:
            raise ValueError(f"`fp_alpha` must be a number >= 0 (1 is the paper's score), got {self.fp_alpha!r}.")
        self.fp_alpha = float(self.fp_alpha)  # 2 and 2.0 are one setting, one cell key
        for name in ("fm_ratio", "fp_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {getattr(self, name)}.")
        if not 0.0 < self.poison_rate <= 1.0:
            raise ValueError(f"`poison_rate` must be in (0, 1], got {self.poison_rate}.")
        if not 0.0 < self.strip_swap_ratio <= 1.0:
            raise ValueError(f"`strip_swap_ratio` must be in (0, 1], got {self.strip_swap_ratio}.")
        for name in ("rap_lr", "rap_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}.")
        for name in ("strip_frr", "rap_frr"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1) (the clean inputs rejected), got {getattr(self, name)}.")
        if self.onion_eval_size is not None and (isinstance(self.onion_eval_size, bool)
                                                 or not isinstance(self.onion_eval_size, int)
                                                 or self.onion_eval_size < 1):
            raise ValueError(f"`onion_eval_size` must be an integer >= 1 or None (every input), got "
                             f"{self.onion_eval_size!r}.")
        if self.w2s_clean_source not in ("clean", "unused_train"):
            raise ValueError(f"`w2s_clean_source` must be 'clean' or 'unused_train', got {self.w2s_clean_source!r}.")
        if self.w2s_clean_size is not None and (self.w2s_clean_size < 1 or self.w2s_clean_source != "unused_train"):
            raise ValueError("`w2s_clean_size` caps w2s_clean_source='unused_train' (an integer >= 1); with the "
                             "trusted clean set, set `clean_size` instead.")
        if self.w2s_best_dev and self.w2s_clean_source != "unused_train":
            raise ValueError("`w2s_best_dev` scores the trusted clean set as dev: set w2s_clean_source='unused_train' "
                             "so the student does not train on it.")
        for name in ("w2s_weight_decay", "w2s_max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.w2s_lora_alpha is not None and self.w2s_lora_alpha <= 0:
            raise ValueError(f"`w2s_lora_alpha` must be > 0 or None (twice the rank), got {self.w2s_lora_alpha}.")

        weights = {name: getattr(self, name) for name in ("w2s_ce_weight", "w2s_kd_weight", "w2s_feature_weight")}
        given = {name: value for name, value in weights.items() if value is not None}
        if given and len(given) != 3:
            raise ValueError(f"W2SDefense's loss weights are set together: give all of {list(weights)} or none "
                             f"(None keeps the authors' weights), got {given}.")
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
            setattr(self, name, float(value))
        if given and not any(given.values()):
            raise ValueError("`w2s_ce_weight`, `w2s_kd_weight` and `w2s_feature_weight` are all 0: give at least "
                             "one term a weight > 0.")
        if self.retune_lr is not None and not self.retune_lr > 0:
            raise ValueError(f"`retune_lr` must be > 0 (None: adapter_lr), got {self.retune_lr!r}.")
        if not self.gc_clnorm_alpha >= 0:
            raise ValueError(f"`gc_clnorm_alpha` must be >= 0, got {self.gc_clnorm_alpha!r}.")
        if self.w2s_feature_alignment not in FEATURE_ALIGNMENTS:
            raise ValueError(f"`w2s_feature_alignment` must be one of {list(FEATURE_ALIGNMENTS)}, got "
                             f"{self.w2s_feature_alignment!r}.")
        if not math.isfinite(self.onion_threshold):
            raise ValueError(f"`onion_threshold` must be a finite number, got {self.onion_threshold}.")
        for name, allowed in (("musclelora_head", ("frozen", "trainable")), ("musclelora_init", ("zero", "paper")),
                              ("musclelora_alignment", ("encoder", "llm")), ("musclelora_gate", GATES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        for name in ("musclelora_lr", "musclelora_multiscale_lr", "musclelora_epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"`{name}` must be > 0 or None, got {value!r}.")
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
        if self.musclelora_best_dev and self.reference_size >= self.clean_size:
            raise ValueError("`musclelora_best_dev` scores the clean examples outside the reference set: make "
                             f"`reference_size` ({self.reference_size}) smaller than `clean_size` ({self.clean_size}).")

    def to_dict(self) -> dict:
        """The settings as a plain dict (the order of the fields)."""
        return dataclasses.asdict(self)

    def for_cell(self, defense: str, adapter_attack: bool = False) -> dict:
        """The settings a ``defense`` (or floor) cell reads: the shared ones plus its own
        (:data:`DEFENSE_SETTINGS`), so changing one defense's setting re-runs only that defense's cells; on a
        Gradient Control threat (``adapter_attack``, ``+gc``) also the attacker's adapter settings."""
        own = set(DEFENSE_SETTINGS.get(defense, ()))
        if adapter_attack:
            own |= set(_GC_SETTINGS)
        return {k: v for k, v in self.to_dict().items()
                if (k in own or k not in _DEFENSE_ONLY) and _KEY_DEFAULTS.get(k, _NO_DEFAULT) != v}


_NO_DEFAULT = object()
_KEY_DEFAULTS = {f.name: f.metadata["key_default"] for f in dataclasses.fields(MatrixSettings) if "key_default" in f.metadata}
"""Settings added after cells were cached: a cell's key leaves them out while they keep the behaviour those
cells were measured with, so adding a setting re-runs nothing until it is changed."""


def settings_signature(settings: dict) -> dict:
    """``settings`` (a :meth:`MatrixSettings.to_dict`, possibly written before some settings existed) without
    the later settings that keep their former behaviour: equal signatures mean the same experiment."""
    return {k: v for k, v in settings.items() if _KEY_DEFAULTS.get(k, _NO_DEFAULT) != v}


@dataclass
class MatrixGrid:
    """Which cells to run: datasets x threats x defenses x seeds, plus the floors of each trigger.

    Args:
        datasets: ``"rotten_tomatoes"``, ``"spamassassin"``, ``"spamassassin@1"`` (one collection period), a
            cross-domain pair ``"spamassassin@1->spamassassin@2"``, or anything
            :func:`~hf_backdoor_defense.data.load_text_classification` loads (a local folder of CSV files...).
        threats: Names parsed by :func:`parse_threat`, e.g. ``"badnets-dirty"``, ``"badnets4-clean"``,
            ``"addsent-mixed"``.
        defenses: Names from :data:`DEFENSES` (may be empty: floors only).
        floors: Names from :data:`FLOORS`, run once per dataset, trigger and seed (may be empty).
        threats_by_dataset: Datasets that run other threats than ``threats`` (e.g. the cross-domain pair
            runs one column), ``{dataset: [threat, ...]}``.
        seeds: Seeds; each seed draws its own training subsample, clean set, poisoned rows and model init.
    """

    datasets: list[str] = field(default_factory=lambda: ["rotten_tomatoes", "spamassassin"],
                                metadata={"help": "Datasets (built-in names, 'a->b' pairs or local paths)."})
    threats: list[str] = field(default_factory=lambda: ["badnets-dirty", "badnets4-clean", "addsent-dirty",
                                                        "addsent-mixed"], metadata={"help": "Threat models."})
    defenses: list[str] = field(default_factory=lambda: list(OUR_DEFENSES), metadata={"help": "Defenses."})
    floors: list[str] = field(default_factory=lambda: [CLEAN_FLOOR], metadata={"help": "Floor cells."})
    threats_by_dataset: dict[str, list[str]] = field(default_factory=dict, metadata={
        "help": "Datasets with their own threat list, {dataset: [threat, ...]}."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds."})

    def __post_init__(self) -> None:
        for name, allowed in (("defenses", DEFENSES), ("floors", FLOORS)):
            unknown = [v for v in getattr(self, name) if v not in allowed]
            if unknown:
                raise ValueError(f"`{name}` has unknown entries {unknown}; choose from {list(allowed)}.")
        for dataset, threats in self.threats_by_dataset.items():
            if dataset not in self.datasets:
                raise ValueError(f"`threats_by_dataset` names {dataset!r}, which is not in `datasets` {self.datasets}.")
            if not threats:
                raise ValueError(f"`threats_by_dataset[{dataset!r}]` is empty: give at least one threat.")
        for threat in [*self.threats, *(t for ts in self.threats_by_dataset.values() for t in ts)]:
            if parse_threat(threat).adapter_attack and not set(self.defenses) & set(ADAPTER_DEFENSES):
                raise ValueError(f"threat {threat!r} is an adapter attack: only the defenses {list(ADAPTER_DEFENSES)} "
                                 f"run on it, and `defenses` has neither ({self.defenses}).")
        for dataset in self.datasets:
            parse_dataset(dataset)
        for name in ("datasets", "threats", "defenses", "floors", "seeds"):
            values = list(dict.fromkeys(getattr(self, name)))  # drop duplicates, keep the order
            if not values and name in ("datasets", "threats", "seeds"):
                raise ValueError(f"`{name}` is empty: give at least one value.")
            setattr(self, name, values)
        if not self.defenses and not self.floors:
            raise ValueError("`defenses` and `floors` are both empty: the grid has no cell to run.")

    def threats_for(self, dataset: str) -> list[str]:
        """The threats run on ``dataset``."""
        return list(dict.fromkeys(self.threats_by_dataset.get(dataset, self.threats)))

    def triggers_for(self, dataset: str) -> list[str]:
        """The distinct triggers of ``dataset``'s threats (one floor column each), in order."""
        return list(dict.fromkeys(parse_threat(t).trigger for t in self.threats_for(dataset)))

    def to_dict(self) -> dict:
        """The grid as a plain dict."""
        return dataclasses.asdict(self)


def config_hash(config: dict, length: int = 12) -> str:
    """Short hex SHA-256 of ``config`` serialised as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


@dataclass(frozen=True)
class CellSpec:
    """One cell: ``threat`` is a threat (``badnets4-clean``) or, for a floor, a trigger (``badnets4``)."""

    dataset: str
    threat: str
    defense: str
    seed: int

    @property
    def is_floor(self) -> bool:
        return self.defense in FLOORS

    @property
    def parsed(self) -> Threat:
        """The parsed threat (a trigger with ``label_mode=None`` for a floor)."""
        return parse_threat(self.threat, floor=self.is_floor)

    @property
    def name(self) -> str:
        """``dataset/threat/defense/s<seed>``."""
        return "/".join([self.dataset, self.threat, self.defense, f"s{self.seed}"])

    def config(self, settings: MatrixSettings) -> dict:
        """The full JSON configuration the key is computed from."""
        revisions = parse_dataset(self.dataset).corpus_revisions  # {} keeps the keys of unrevised corpora
        return {"version": MATRIX_VERSION, "dataset": self.dataset, "threat": self.threat,
                "defense": self.defense, "seed": self.seed,
                "settings": settings.for_cell(self.defense, self.parsed.adapter_attack),
                **({"corpus_revisions": revisions} if revisions else {})}

    def key(self, settings: MatrixSettings) -> str:
        """Short hash of :meth:`config`: the name of the cell's result file."""
        return config_hash(self.config(settings))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_cells(grid: MatrixGrid) -> list[CellSpec]:
    """Every cell of ``grid`` in run order: per seed and dataset, the floors, then threat x defense.

    Seeds come first, so an interrupted run has whole seeds of every dataset rather than every seed of a few;
    defenses reuse one backdoored model per (dataset, threat, seed), so they run next to each other.
    """
    cells = []
    for seed in grid.seeds:
        for dataset in grid.datasets:
            cells += [CellSpec(dataset, trigger, floor, seed) for trigger in grid.triggers_for(dataset)
                      for floor in grid.floors]
            for threat in grid.threats_for(dataset):
                adapter_attack = parse_threat(threat).adapter_attack  # only the adapter cells apply
                cells += [CellSpec(dataset, threat, d, seed) for d in grid.defenses
                          if not adapter_attack or d in ADAPTER_DEFENSES]
    return cells


# Preset name -> (grid, settings overrides). The wall-time estimates are in benchmarks/run_matrix.py.
PRESETS: dict[str, tuple[dict, dict]] = {
    "quick": (
        {"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty"], "floors": [CLEAN_FLOOR, CLEAN_LORA],
         "seeds": [0]},
        {"train_size": 64, "test_size": 48, "clean_size": 32, "reference_size": 16, "max_length": 32,
         "batch_size": 16, "epochs": 1.0, "purify_epochs": 1.0, "w2s_epochs": 1.0, "teacher_epochs": 1.0,
         "epur_tokens": 20},
    ),
    # `make demo-minilm` (hf_backdoor_defense/demo.py): the v2 setup at a size that fits about 10 minutes.
    "demo-minilm": (
        {"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty", "addsent-dirty"],
         "defenses": ["none", "lora", "musclelora"], "floors": [CLEAN_FLOOR, CLEAN_LORA], "seeds": [0]},
        {"train_size": 1000, "test_size": 600, "clean_size": 96, "reference_size": 96, "max_length": 48,
         "batch_size": 32, "epochs": 2.0, "full_ft_lr": 1e-4},
    ),
    # The Gradient Control threat model (docs/concepts/gradient-control.md): the attacker publishes a poisoned
    # LoRA adapter, trained plainly or with Gradient Control (+gc); the user re-tunes it on 1,000 clean sentences
    # of a shifted domain (SpamAssassin collection 2) or of the same one (Rotten Tomatoes validation sentences).
    # Does the backdoor survive the re-tune better with Gradient Control? The v2 budget otherwise.
    "gradient-control": (
        {"datasets": ["spamassassin@1->spamassassin@2", "rotten_tomatoes"],
         "threats": ["badnets-dirty", "badnets-dirty+gc"], "defenses": ["lora", "retune"],
         "floors": [CLEAN_FLOOR, CLEAN_LORA]},
        {"train_size": 3000, "test_size": 1000, "clean_size": 1000, "max_length": 48, "batch_size": 32,
         "epochs": 3.0, "full_ft_lr": 1e-4, "retune_epochs": 2.0, "fm_ratio": 0.5, "fp_ratio": 0.5},
    ),
    # The evidence regime, chosen on validation (benchmarks/studies.py, docs/results.md "How the regime was
    # chosen"): the clean full fine-tune within 2 points of the full-data reference, every kept threat
    # planted at >= 90 % ASR before any defense.
    "v2": (
        {"datasets": ["rotten_tomatoes", "spamassassin", "spamassassin@1->spamassassin@2"],
         # SpamAssassin drops BadNets x4 clean-label: 43.5 % ASR undefended on validation (the `budget` study),
         # so no defense could be judged there. Of the baselines, STRIP and RAP (about a minute a cell) are in
         # the grid; CUBE (3.5 min a cell), BKI (7.5 min) and ONION (over 20 min) are not yet. RAP's loss weight
         # 10 is the authors' advice for a threshold <= 0, chosen on validation (the `detectors` study).
         "threats_by_dataset": {"spamassassin": ["badnets-dirty", "addsent-dirty", "addsent-mixed"],
                                "spamassassin@1->spamassassin@2": ["badnets-dirty"]},
         "defenses": [*OUR_DEFENSES, "strip", "rap"],
         "floors": [CLEAN_FLOOR, CLEAN_LORA]},
        {"train_size": 3000, "test_size": 1000, "clean_size": 256, "max_length": 48, "batch_size": 32,
         "epochs": 3.0, "full_ft_lr": 1e-4, "rap_scale": 10.0},
    ),
}


RATES: dict[str, float] = {
    "full": 0.032,       # full fine-tune (also the teacher and the post-purification fine-tune)
    "lora": 0.023,       # LoRA on the poisoned set
    "musclelora": 0.050, # MuScleLoRA: adapter + a reference batch every step
    "w2s": 0.035,        # W2SDefense student step (LoRA + the teacher's forward)
    "fisher": 0.02,      # Fine-purifying's empirical Fisher, per clean example
    "eval": 0.011,       # one forward pass, per test example
    "onion": 0.8,        # ONION, per input scored: >= 0.8 s (a 1,000-sentence cell ran past 20 min and was stopped)
    "cell": 3.0,         # fixed cost of a cell: loading models, building trainers (seconds)
}
"""Seconds per example and epoch at ``max_length`` 64 on the project's idle 2-core machine with 2 torch threads,
from the validation studies at length 48 (full fine-tune of all-MiniLM-L6-v2: 215 s for 3,000 sentences x 3
epochs; LoRA 104 s for 2,000 x 3), scaled linearly. Estimates only: once cells of a grid have finished, the
runner uses their measured wall times instead."""


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
    # W2SDefense's set: the trusted clean set, or unused training rows (their number depends on the corpus; the
    # training sample's size stands in when no cap is given).
    w2s_rows = s.clean_size if s.w2s_clean_source == "clean" else (s.w2s_clean_size or s.train_size)
    seen: set[tuple] = set()
    total = 0.0
    for c in cells:
        shared = []
        if c.defense == CLEAN_FLOOR:
            shared.append((("clean", c.dataset, c.seed), poisoned_train * r["full"]))
        elif c.defense == CLEAN_LORA:
            shared.append((("clean_lora", c.dataset, c.seed), poisoned_train * r["lora"]))
        elif c.defense in ("none", "fine_mixing", "e_pur", "fine_purifying", "w2sdefense", "w2s_lora", *BASELINES,
                           *DATA_FILTERS) and not c.parsed.adapter_attack:
            shared.append((("suspect", c.dataset, c.threat, c.seed), poisoned_train * r["full"]))
        elif c.defense == "retune" or c.parsed.adapter_attack:
            # the poisoned adapter; the Gradient Control attacker adds a poison batch and per-layer gradients
            gc = 2.0 if c.parsed.adapter_attack else 1.0
            shared.append((("adapter", c.dataset, c.threat, c.seed), gc * poisoned_train * r["lora"]))
        if c.defense == "w2sdefense":
            shared.append((("teacher", c.dataset, c.seed), w2s_rows * s.teacher_epochs * scale * r["full"]))
        for key, seconds in shared:
            if key not in seen:
                seen.add(key)
                total += seconds + r["cell"]
        own = {"lora": 0.0 if c.parsed.adapter_attack else poisoned_train * r["lora"],
               "retune": s.clean_size * s.retune_epochs * scale * r["lora"],
               "musclelora": s.train_size * (s.musclelora_epochs or s.epochs) * scale * r["musclelora"],
               "fine_mixing": clean_ft * r["full"], "e_pur": clean_ft * r["full"],
               "fine_purifying": clean_ft * r["full"] + s.clean_size * scale * r["fisher"],
               "w2sdefense": w2s_rows * s.w2s_epochs * scale * r["w2s"],
               "w2s_lora": w2s_rows * s.w2s_epochs * scale * r["lora"],
               "onion": (min(s.test_size, s.onion_eval_size or s.test_size)
                         + min(s.test_size // 2, s.onion_eval_size or s.test_size)) * scale * r["onion"],
               "strip": (1.5 * s.test_size + s.clean_size) * s.strip_copies * r["eval"] * scale,
               "rap": (3 * s.test_size + s.rap_epochs * 3 * s.clean_size) * r["eval"] * scale,
               "bki": poisoned_train * r["full"] + s.train_size * 20 * r["eval"] * scale,
               "cube": poisoned_train * r["full"] + s.train_size * r["eval"] * scale + 30.0}.get(c.defense, 0.0)
        total += own + evaluate + r["cell"]
    return total
