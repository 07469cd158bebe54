"""How each defense cell of the matrix is trained and scored, and the on-disk cache of shared models.

Three models are shared between cells and stored once under the work dir (safetensors, in a folder named
after a hash of what they were trained from, written to a temporary sibling and renamed into place):

* ``suspect``: full fine-tune on the poisoned training set, one per (dataset, threat, seed). It
  is the ``none`` cell and the starting point of Fine-mixing, E-PUR, Fine-purifying and W2SDefense.
* ``clean``: full fine-tune on the clean training set, one per (dataset, seed): the clean-floor cells.
* ``clean_lora``: LoRA on the clean training set, merged into its base, one per (dataset, seed): the
  ``clean_lora`` floor cells of every trigger.
* ``teacher``: the W2SDefense teacher (the same encoder + projection head) trained on the trusted clean set,
  one per (dataset, seed).

Example:
    >>> from hf_backdoor_defense.matrix.cells import MatrixContext
    >>> ctx = MatrixContext(settings, workdir="/tmp/matrix-work")           # doctest: +SKIP
    >>> result = ctx.run_cell(CellSpec("rotten_tomatoes", "badnets-dirty", "lora", 0))  # doctest: +SKIP
    >>> result["cacc"], result["asr"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..reporting import PeakMemory
from .config import (
    ADAPTER_DEFENSES,
    BASELINES,
    CLEAN_FLOOR,
    DATA_FILTERS,
    DEFENSES,
    FLOORS,
    MATRIX_VERSION,
    CellSpec,
    MatrixSettings,
    Threat,
    config_hash,
    parse_dataset,
)

__all__ = ["MatrixContext", "make_attack", "make_purifier"]

_INFO_FILE = "hbd_matrix_model.json"
_W2S_PRESET = {"badnets": "word", "addsent": "sentence"}  # the authors' loss weights per trigger family
_W2S_LOGGED = ("loss_ce", "loss_kd", "loss_feature", "grad_share_ce", "grad_share_kd", "grad_share_feature")


def make_attack(threat: Threat, seed: int, settings: MatrixSettings):
    """The attack of a cell; a floor's trigger (``label_mode=None``) uses ``"dirty"`` (only its test set matters)."""
    from ..attacks import build_attack

    return build_attack(threat.attack, poison_rate=settings.poison_rate, target_label=settings.target_label,
                        label_mode=threat.label_mode or "dirty", seed=seed,
                        num_triggers=threat.num_triggers)


def make_purifier(defense: str, settings: MatrixSettings, seed: int):
    """The weight-space purifier of ``fine_mixing``, ``e_pur`` or ``fine_purifying``."""
    from ..models import head_module_names
    from ..purification import EmbeddingPurification, FineMixing, FinePurifying

    head_names = tuple(n for n in head_module_names(settings.pooling) if n != "classifier")
    # The settings' defaults keep the ranking the cells were first measured with (ratio over all dimensions,
    # embeddings ranked, batch Fisher); the library's own defaults are "moved", "exclude" and "example".
    if defense == "fine_mixing":
        return FineMixing(ratio=settings.fm_ratio, ratio_of=settings.fm_ratio_of, mask="random", seed=seed,
                          head_names=head_names)
    if defense == "e_pur":
        return EmbeddingPurification(num_tokens=settings.epur_tokens, head_names=head_names)
    if defense == "fine_purifying":
        return FinePurifying(ratio=settings.fp_ratio, ratio_of=settings.fp_ratio_of, embeddings=settings.fp_embeddings,
                             estimator=settings.fp_estimator, alpha=settings.fp_alpha,
                             batch_size=16, max_length=settings.max_length, show_progress=False,
                             head_names=head_names)
    raise ValueError(f"{defense!r} is not a purifier; purifiers: fine_mixing, e_pur, fine_purifying.")


class MatrixContext:
    """Everything the cells of one run share: data, tokenizer, the cache of shared models.

    Args:
        settings: The shared :class:`~hf_backdoor_defense.matrix.config.MatrixSettings`.
        workdir: Folder of the cached shared models and of the trainers' scratch output.
        datasets: Optional ``{name: DatasetDict}`` used instead of loading ``name`` (tests, custom data).
        disable_progress: Silence the trainers' and the evaluation's progress bars.
    """

    def __init__(self, settings: MatrixSettings, workdir: str | os.PathLike, *,
                 datasets: dict[str, Any] | None = None, disable_progress: bool = True):
        self.settings = settings
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.disable_progress = disable_progress
        self._datasets = dict(datasets or {})
        self._splits: dict[tuple[str, int], dict] = {}
        self._tokenizer = None
        self.trained: list[str] = []  # shared models trained by this context (the tests count them)

    # ------------------------------------------------------------------ inputs
    @property
    def model_path(self) -> str:
        """The folder or Hub name of the backbone (``None``: the offline all-MiniLM-L6-v2)."""
        from ..assets import resolve_model_path

        return resolve_model_path("minilm" if self.settings.model is None else self.settings.model)

    @property
    def teacher_path(self) -> str:
        """W2SDefense's teacher encoder: ``teacher_model``, else the backbone itself."""
        from ..assets import resolve_model_path

        return self.model_path if self.settings.teacher_model is None else resolve_model_path(self.settings.teacher_model)

    @property
    def teacher_max_length(self) -> int:
        """The teacher's truncation length: texts are cut to fit the student's tokenizer, and another tokenizer
        may split them into more tokens, so a teacher of another backbone reads twice as many."""
        return self.settings.max_length * (1 if self.settings.teacher_model is None else 2)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            if self._tokenizer.pad_token is None:  # decoder LMs (SmolLM2, Llama) batch with their end token
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def dataset(self, name: str):
        """One corpus (``spamassassin@2`` is collection 2 of the built-in SpamAssassin); loaded once."""
        if name not in self._datasets:
            from ..data import load_text_classification

            corpus, _, collection = name.partition("@")
            if collection and Path(name).exists():  # a local path that happens to contain '@'
                corpus, collection = name, ""
            if collection and not collection.isdigit():
                raise ValueError(f"dataset {name!r}: after '@' comes a collection number, e.g. 'spamassassin@1'.")
            kwargs = {"collection": int(collection)} if collection else {}
            self._datasets[name] = load_text_classification(corpus, **kwargs)
        return self._datasets[name]

    def num_labels(self, name: str) -> int:
        """Classes of a cell's dataset (of its source for a cross-domain pair)."""
        train = self.dataset(parse_dataset(name).source)["train"]
        return getattr(train.features["label"], "num_classes", None) or int(max(train["label"])) + 1

    def splits(self, name: str, seed: int) -> dict:
        """``train`` (seeded subsample of the source), ``clean`` (trusted), ``reference`` and ``evaluation``.

        The trusted clean set comes from the target's validation split (from its training split for a
        cross-domain pair, whose target training split is otherwise unused). The evaluation set is a fixed
        subsample of the target's test split, or, with ``eval_split="validation"``, validation examples
        outside the clean set (for a pair, of the target's validation split): the test split is then never read.
        """
        if (name, seed) not in self._splits:
            s, spec = self.settings, parse_dataset(name)
            source, target = self.dataset(spec.source), self.dataset(spec.target)
            for split in ("train", "validation", "test"):
                for corpus, data in ((spec.source, source), (spec.target, target)):
                    if split not in data:
                        raise ValueError(f"dataset {corpus!r} has no {split!r} split (splits: {list(data)}).")
            train = source["train"].shuffle(seed=seed).select(range(min(s.train_size, len(source["train"]))))
            pool = (target["train"] if spec.cross_domain else target["validation"]).shuffle(seed=seed)
            n_clean = min(s.clean_size, len(pool))
            clean = pool.select(range(n_clean))
            if s.eval_split == "test":
                held_out = target["test"].shuffle(seed=s.test_seed)
            elif spec.cross_domain:
                held_out = target["validation"].shuffle(seed=s.test_seed)
            else:
                held_out = pool.select(range(n_clean, len(pool)))
                if not len(held_out):
                    raise ValueError(f"dataset {name!r}: `clean_size` {s.clean_size} leaves no validation example "
                                     f"to evaluate on (the split has {len(pool)}); lower it.")
            evaluation = held_out.select(range(min(s.test_size, len(held_out))))
            if s.trigger_room is not None:  # before any poisoning: triggers then land inside what the model reads
                from ..data import fit_to_window

                train, clean, evaluation = (fit_to_window(d, self.tokenizer, max_length=s.max_length,
                                                         trigger_room=s.trigger_room)
                                            for d in (train, clean, evaluation))
            reference = clean.select(range(min(s.reference_size, len(clean))))
            self._splits[(name, seed)] = {"train": train, "clean": clean, "reference": reference,
                                          "evaluation": evaluation}
            if s.w2s_clean_source == "unused_train":  # the target's training rows no other set of the cell holds
                rest = (pool.select(range(n_clean, len(pool))) if spec.cross_domain else
                        source["train"].shuffle(seed=seed).select(range(len(train), len(source["train"]))))
                rest = rest.select(range(min(s.w2s_clean_size or len(rest), len(rest))))
                if not len(rest):
                    raise ValueError(f"dataset {name!r}: w2s_clean_source='unused_train' finds no training row "
                                     f"outside the {len(train)} of the poisoned sample; lower `train_size`.")
                if s.trigger_room is not None:
                    from ..data import fit_to_window

                    rest = fit_to_window(rest, self.tokenizer, max_length=s.max_length, trigger_room=s.trigger_room)
                self._splits[(name, seed)]["w2s_clean"] = rest
        return self._splits[(name, seed)]

    # ------------------------------------------------------------------ shared models
    def _cached(self, kind: str, config: dict, train_fn) -> tuple[Path, dict]:
        """Folder of the shared model ``kind`` trained from ``config``; trains and stores it when missing."""
        config = {"version": MATRIX_VERSION, "kind": kind, "model": self.settings.model, **config}
        key = config_hash(config)
        folder = self.workdir / "models" / f"{kind}-{key}"
        info_path = folder / _INFO_FILE
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            info.pop("config", None)
            return folder, {"kind": kind, "key": key, "trained_here": False, **info}
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            start = time.perf_counter()
            extra = train_fn(tmp) or {}
            seconds = time.perf_counter() - start
            info = {"config": config, "train_seconds": seconds, **extra}
            (tmp / _INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
            if folder.exists():  # another run finished it meanwhile: keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.trained.append(f"{kind}-{key}")
        info.pop("config")
        return folder, {"kind": kind, "key": key, "trained_here": True, **info}

    def _full_ft(self, train, seed: int, num_labels: int, out: Path) -> dict:
        from ..data import tokenize_dataset
        from ..experiments import train_cell

        s = self.settings
        tokenized = tokenize_dataset(train, self.tokenizer, max_length=s.max_length)
        settings = self._cell_settings(seed)
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            model, info = train_cell("full_ft", tokenized, self.tokenizer, self.model_path, settings,
                                     workdir=scratch, num_labels=num_labels, disable_tqdm=self.disable_progress)
        model.save_pretrained(out, safe_serialization=True)
        extra = {"seconds_per_step": info["seconds_per_step"]}
        if "is_poisoned" in train.column_names:
            extra["poisoned_examples"] = int(sum(train["is_poisoned"]))
        return extra

    def _data_config(self, name: str, seed: int) -> dict:
        """What decides the texts a shared model is trained on (part of its cache key)."""
        s = self.settings
        cut = {} if s.trigger_room is None else {"trigger_room": s.trigger_room}  # uncut keys stay as they were
        revisions = parse_dataset(name).corpus_revisions
        revised = {"corpus_revisions": revisions} if revisions else {}
        return {"dataset": name, "seed": seed, "max_length": s.max_length, **cut, **revised}

    def _training_config(self, name: str, seed: int) -> dict:
        s = self.settings
        return {**self._data_config(name, seed), "train_size": s.train_size, "batch_size": s.batch_size,
                "epochs": s.epochs, "full_ft_lr": s.full_ft_lr, "pooling": s.pooling}

    def _cell_settings(self, seed: int, method: str = "full_ft"):
        from ..experiments import CellSettings

        s = self.settings
        settings = CellSettings(epochs=s.epochs, batch_size=s.batch_size, max_length=s.max_length,
                                full_ft_lr=s.full_ft_lr, adapter_lr=s.adapter_lr, seed=seed, pooling=s.pooling)
        if method == "musclelora":
            settings.epochs = s.musclelora_epochs or s.epochs
            settings.adapter_lr = s.musclelora_lr or s.adapter_lr
            settings.alignment_preset = s.musclelora_alignment
            settings.adapter_config = {"trainable_head": s.musclelora_head == "trainable",
                                       "init_weights": "paper" if s.musclelora_init == "paper" else True}
            if s.musclelora_multiscale_lr is not None:
                settings.extra_args["multiscale_learning_rate"] = s.musclelora_multiscale_lr
            if s.musclelora_gate != "tensor":
                settings.extra_args["alignment_gate"] = s.musclelora_gate
        if method == "gradient_control":
            settings.extra_args["clnorm_alpha"] = s.gc_clnorm_alpha
        return settings

    def suspect(self, name: str, threat: Threat, seed: int) -> tuple[Path, dict]:
        """The backdoored full fine-tune of a (dataset, threat, seed)."""
        attack = make_attack(threat, seed, self.settings)
        config = {**self._training_config(name, seed), "attack": attack.to_dict()}
        train = self.splits(name, seed)["train"]
        return self._cached("suspect", config, lambda out: self._full_ft(
            attack.poison(train), seed, self.num_labels(name), out))

    def clean_model(self, name: str, seed: int) -> tuple[Path, dict]:
        """The full fine-tune on the clean training subsample (the ASR floor)."""
        train = self.splits(name, seed)["train"]
        return self._cached("clean", self._training_config(name, seed),
                            lambda out: self._full_ft(train, seed, self.num_labels(name), out))

    def clean_lora_model(self, name: str, seed: int) -> tuple[Path, dict]:
        """LoRA on the clean training subsample, merged into its base and stored whole (the ``clean_lora`` floor
        of every trigger is this one model, scored on each trigger's test set)."""
        s = self.settings
        config = {**self._training_config(name, seed), "adapter_lr": s.adapter_lr, "method": "lora"}

        def train(out: Path) -> dict:
            from ..data import tokenize_dataset
            from ..experiments import train_cell

            tokenized = tokenize_dataset(self.splits(name, seed)["train"], self.tokenizer, max_length=s.max_length)
            with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
                model, info = train_cell("lora", tokenized, self.tokenizer, self.model_path, self._cell_settings(seed),
                                         workdir=scratch, num_labels=self.num_labels(name),
                                         disable_tqdm=self.disable_progress)
            model.merge_and_unload().save_pretrained(out, safe_serialization=True)
            return {"adapter": info["method"], "seconds_per_step": info["seconds_per_step"]}

        return self._cached("clean_lora", config, train)

    def poisoned_adapter(self, name: str, threat: Threat, seed: int) -> tuple[Path, dict]:
        """The LoRA adapter (with its head) trained on the poisoned training set, plainly or, for a ``+gc``
        threat, by the Gradient Control attacker; saved as a PEFT adapter, what an attacker publishes."""
        s = self.settings
        attack = make_attack(threat, seed, s)
        method = "gradient_control" if threat.attacker == "gradient_control" else "lora"
        config = {**self._training_config(name, seed), "attack": attack.to_dict(), "adapter_lr": s.adapter_lr,
                  "method": method}
        if method == "gradient_control":
            config["gc_clnorm_alpha"] = s.gc_clnorm_alpha

        def train(out: Path) -> dict:
            from ..data import tokenize_dataset
            from ..experiments import train_cell

            poisoned = attack.poison(self.splits(name, seed)["train"])
            tokenized = tokenize_dataset(poisoned, self.tokenizer, max_length=s.max_length)
            with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
                model, info = train_cell(method, tokenized, self.tokenizer, self.model_path,
                                         self._cell_settings(seed, method), workdir=scratch,
                                         num_labels=self.num_labels(name), disable_tqdm=self.disable_progress)
            model.save_pretrained(out, safe_serialization=True)
            return {"adapter": info["method"], "seconds_per_step": info["seconds_per_step"],
                    "poisoned_examples": int(sum(poisoned["is_poisoned"]))}

        return self._cached("adapter", config, train)

    def teacher(self, name: str, seed: int, student_hidden: int) -> tuple[Path, dict]:
        """The W2SDefense teacher trained on the trusted clean set."""
        s = self.settings
        config = {**self._data_config(name, seed), "clean_size": s.clean_size, "batch_size": s.batch_size,
                  "teacher_epochs": s.teacher_epochs, "teacher_lr": s.teacher_lr, "student_hidden": student_hidden}
        if s.teacher_model is not None:  # (a teacher of the student's own backbone keeps its former key)
            config["teacher_model"] = s.teacher_model
        if s.w2s_clean_source != "clean":  # (the trusted set keeps the keys of the teachers trained before)
            # the unused rows start after the poisoned sample: its size decides which rows the teacher learns
            config.update(w2s_clean_source=s.w2s_clean_source, w2s_clean_size=s.w2s_clean_size,
                          train_size=s.train_size)
        clean = self._w2s_set(name, seed)

        def train(out: Path) -> dict:
            import torch
            from transformers import TrainingArguments

            from ..models.teacher import train_teacher

            torch.manual_seed(seed)
            with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
                args = TrainingArguments(output_dir=scratch, num_train_epochs=s.teacher_epochs,
                                         learning_rate=s.teacher_lr, per_device_train_batch_size=s.batch_size,
                                         save_strategy="no", report_to="none", seed=seed, use_cpu=True,
                                         disable_tqdm=self.disable_progress, logging_strategy="no")
                teacher, tokenizer = train_teacher(self.teacher_path, student_hidden, clean, output_dir=scratch,
                                                   args=args, max_length=self.teacher_max_length,
                                                   num_labels=self.num_labels(name), save=False)
            teacher.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            return {}

        return self._cached("teacher", config, train)

    # ------------------------------------------------------------------ cells
    def _load(self, folder: str | Path, num_labels: int, *, fresh: bool = False):
        """A saved classifier as what it was saved as; ``fresh=True``: the base encoder with a new head built
        for the settings' pooling."""
        from ..models import load_sequence_classifier

        pooling = self.settings.pooling if fresh else None
        return load_sequence_classifier(str(folder), pooling=pooling, num_labels=num_labels).eval()

    def _load_adapter(self, folder: str | Path, num_labels: int, *, trainable: bool = False):
        """A saved PEFT adapter on a fresh copy of the backbone (its head comes from the adapter)."""
        from peft import PeftModel

        base = self._load(self.model_path, num_labels, fresh=True)
        if base.config.pad_token_id is None:
            base.config.pad_token_id = self.tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
        return model if trainable else model.eval()

    def _retune_cell(self, spec: CellSpec, num_labels: int, shared: list[dict]):
        """The user's clean re-tune of the poisoned adapter: plain training on the trusted clean set."""
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        from ..data import model_inputs, tokenize_dataset

        s = self.settings
        folder, info = self.poisoned_adapter(spec.dataset, spec.parsed, spec.seed)
        shared.append(info)
        model = self._load_adapter(folder, num_labels, trainable=True)
        clean = model_inputs(tokenize_dataset(self.splits(spec.dataset, spec.seed)["clean"], self.tokenizer,
                                              max_length=s.max_length))
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            args = TrainingArguments(output_dir=scratch, num_train_epochs=s.retune_epochs,
                                     learning_rate=s.adapter_lr if s.retune_lr is None else s.retune_lr, per_device_train_batch_size=s.batch_size,
                                     seed=spec.seed, save_strategy="no", report_to="none", use_cpu=True,
                                     logging_strategy="no", disable_tqdm=self.disable_progress)
            Trainer(model=model, args=args, train_dataset=clean, data_collator=DataCollatorWithPadding(self.tokenizer),
                    processing_class=self.tokenizer).train()
        return model.eval(), {"retune_rows": len(clean), "retune_seconds": time.perf_counter() - start}

    def _evaluate(self, model, name: str, seed: int, attack, tokenizer=None) -> dict:
        from ..metrics import evaluate_backdoor

        scores = evaluate_backdoor(model, tokenizer or self.tokenizer, self.splits(name, seed)["evaluation"],
                                   attack, max_length=self.settings.max_length,
                                   disable_progress_bar=self.disable_progress, split_name=self.settings.eval_split)
        return {k: scores[k] for k in ("cacc", "asr", "n_clean", "n_triggered")}

    def run_cell(self, spec: CellSpec) -> dict:
        """Train and score one cell; returns scores, timings and what the cell reused or trained."""
        if spec.defense not in DEFENSES and spec.defense not in FLOORS:
            raise ValueError(f"unknown defense {spec.defense!r}; choose from {[*DEFENSES, *FLOORS]}.")
        start = time.perf_counter()
        threat = spec.parsed
        attack = make_attack(threat, spec.seed, self.settings)
        shared: list[dict] = []
        details: dict[str, Any] = {}
        num_labels = self.num_labels(spec.dataset)
        if spec.defense in FLOORS:
            folder, info = (self.clean_model if spec.defense == CLEAN_FLOOR else self.clean_lora_model)(
                spec.dataset, spec.seed)
            shared.append(info)
            model = self._load(folder, num_labels)
        elif threat.adapter_attack and spec.defense not in ADAPTER_DEFENSES:
            raise ValueError(f"{spec.name}: {spec.threat!r} is an adapter attack; only {list(ADAPTER_DEFENSES)} run "
                             "on it.")
        elif spec.defense == "retune":
            model, details = self._retune_cell(spec, num_labels, shared)
        elif threat.adapter_attack:  # the published adapter, as the attacker made it or purified
            folder, info = self.poisoned_adapter(spec.dataset, threat, spec.seed)
            shared.append(info)
            if spec.defense == "lora":
                model = self._load_adapter(folder, num_labels)
            else:
                model, details = self._purifier_cell(spec, folder, num_labels, adapter=True)
        elif spec.defense in ("lora", "musclelora"):
            model, details = self._adapter_cell(spec, attack, num_labels)
        else:
            folder, info = self.suspect(spec.dataset, threat, spec.seed)
            shared.append(info)
            if spec.defense == "none":
                model = self._load(folder, num_labels)
            elif spec.defense in ("w2sdefense", "w2s_lora"):
                model, details = self._w2s_cell(spec, folder, num_labels, shared)
            elif spec.defense in BASELINES:
                model = self._load(folder, num_labels)
            elif spec.defense in DATA_FILTERS:
                model, details = self._filter_cell(spec, folder, num_labels, attack)
            else:
                model, details = self._purifier_cell(spec, folder, num_labels)
        if spec.defense in BASELINES:
            scores, details = self._baseline_scores(spec, model, attack)
        else:
            scores = self._evaluate(model, spec.dataset, spec.seed, attack)
        seconds = time.perf_counter() - start
        shared_seconds = sum(i["train_seconds"] for i in shared if i["trained_here"])
        for info in shared:
            if "poisoned_examples" in info:
                details.setdefault("poisoned_examples", info["poisoned_examples"])
        return {**scores, "seconds": seconds, "defense_seconds": seconds - shared_seconds,
                "shared_models": shared, "attack_config": attack.to_dict(), "details": details}

    def _adapter_cell(self, spec: CellSpec, attack, num_labels: int):
        """LoRA or MuScleLoRA on the poisoned training set."""
        from ..data import tokenize_dataset
        from ..experiments import train_cell

        s, splits = self.settings, self.splits(spec.dataset, spec.seed)
        poisoned = attack.poison(splits["train"])
        train = tokenize_dataset(poisoned, self.tokenizer, max_length=s.max_length)
        reference = tokenize_dataset(splits["reference"], self.tokenizer, max_length=s.max_length)
        dev = None
        if spec.defense == "musclelora" and s.musclelora_best_dev:  # the clean examples outside the reference
            clean = splits["clean"]
            dev = tokenize_dataset(clean.select(range(len(splits["reference"]), len(clean))), self.tokenizer,
                                   max_length=s.max_length)
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            model, info = train_cell(spec.defense, train, self.tokenizer, self.model_path,
                                     self._cell_settings(spec.seed, spec.defense), reference=reference, dev=dev,
                                     workdir=scratch, num_labels=num_labels, disable_tqdm=self.disable_progress)
        details = {"adapter": info["method"], "train_seconds": info["train_seconds"],
                   "seconds_per_step": info["seconds_per_step"],
                   "poisoned_examples": int(sum(poisoned["is_poisoned"]))}
        return model, {**details, **{k: info[k] for k in ("dev_accuracy", "best_checkpoint") if k in info}}

    def _purifier_cell(self, spec: CellSpec, suspect_dir: Path, num_labels: int, *, adapter: bool = False):
        """A purifier on the backdoored full fine-tune, or with ``adapter=True`` on the poisoned PEFT adapter
        (adapter mode: the reference is "no adapter"), then the clean fine-tune on the trusted set."""
        from ..trainers.purification import PurificationTrainingArguments, finetune_clean

        s, clean = self.settings, self.splits(spec.dataset, spec.seed)["clean"]
        if adapter:
            suspect, pretrained = self._load_adapter(suspect_dir, num_labels, trainable=True), None
        else:
            suspect = self._load(suspect_dir, num_labels)
            pretrained = self._load(self.model_path, num_labels, fresh=True)
        model_bytes = sum(p.numel() * p.element_size() for p in suspect.parameters())
        t0 = time.perf_counter()
        with PeakMemory() as peak:  # the papers' claim: a purifier holds about three copies of the model
            result = make_purifier(spec.defense, s, spec.seed).purify(suspect, pretrained, clean,
                                                                      tokenizer=self.tokenizer)
        purify_seconds = time.perf_counter() - t0
        del suspect, pretrained
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            # an adapter's clean fine-tune trains only its factors and head, at the adapter learning rate
            args = PurificationTrainingArguments(output_dir=scratch, num_train_epochs=s.purify_epochs,
                                                 learning_rate=s.adapter_lr if adapter else s.purify_lr, per_device_train_batch_size=16,
                                                 max_length=s.max_length, seed=spec.seed, use_cpu=True,
                                                 disable_tqdm=self.disable_progress)
            model = finetune_clean(result.model, clean, self.tokenizer, args)
        report = result.report
        details = {"purify_seconds": purify_seconds, "ratio": report.get("ratio"),
                   "dims_reset": report.get("dims_reset_total"), "dims_total": report.get("dims_total"),
                   "peak_extra_x_model": None if peak.extra is None else round(peak.extra / model_bytes, 2)}
        if report.get("tokens_reset"):  # in reset order (the most drifted first); the first cells kept 20
            details["tokens_reset"] = [t["token"] for t in report["tokens_reset"]]
        return model, details

    def _baseline_scores(self, spec: CellSpec, model, attack) -> tuple[dict, dict]:
        """CACC and ASR of the backdoored model behind ONION (inputs corrected), STRIP or RAP (inputs rejected:
        a rejected input counts as a lost prediction, see :mod:`hf_backdoor_defense.baselines.metrics`)."""
        import numpy as np

        from ..baselines import (
            ONION,
            RAP,
            STRIP,
            ONIONConfig,
            RAPConfig,
            STRIPConfig,
            detection_auroc,
            scores_after_rejection,
        )
        from ..metrics import attack_success_rate, clean_accuracy, predict

        s, splits = self.settings, self.splits(spec.dataset, spec.seed)
        clean_test = splits["evaluation"]
        triggered = attack.triggered_test_set(clean_test)
        text, label = attack.text_column, attack.label_column
        common = {"max_length": s.max_length, "text_column": text, "disable_progress_bar": self.disable_progress}
        start = time.perf_counter()
        if spec.defense == "onion":  # one LM pass per word: scored on seeded subsamples (`onion_eval_size`)
            from ..data import subsample

            clean_test, triggered = (subsample(d, s.onion_eval_size, s.test_seed) for d in (clean_test, triggered))
            onion = ONION(ONIONConfig(threshold=s.onion_threshold, show_progress=not self.disable_progress),
                          **self._onion_lm())
            corrected = [onion.filter_dataset(d, text_column=text) for d in (clean_test, triggered)]
            clean_preds, triggered_preds = (predict(model, self.tokenizer, d, **common) for d in corrected)
            scores = {"cacc": clean_accuracy(clean_preds, clean_test[label]),
                      "asr": attack_success_rate(triggered_preds, triggered["original_label"], attack.target_label)}
            removed = [sum(len(a.split()) - len(b.split()) for a, b in zip(d[text], c[text])) / max(len(d), 1)
                       for d, c in zip((clean_test, triggered), corrected)]
            details = {"words_removed_per_clean_input": removed[0], "words_removed_per_triggered_input": removed[1]}
        else:
            if spec.defense == "strip":
                detector = STRIP(model, self.tokenizer, STRIPConfig(
                    num_copies=s.strip_copies, swap_ratio=s.strip_swap_ratio, frr=s.strip_frr,
                    stop_words=s.strip_stop_words, seed=spec.seed,
                    max_length=s.max_length, show_progress=not self.disable_progress)).fit(splits["clean"], text)
            else:
                if s.rap_word in getattr(attack, "triggers", ()):
                    raise ValueError(f"`rap_word` {s.rap_word!r} is one of the attack's triggers "
                                     f"{list(attack.triggers)}: RAP needs another rare word.")
                detector = RAP(model, self.tokenizer, RAPConfig(
                    word=s.rap_word, target_label=attack.target_label, frr=s.rap_frr, epochs=s.rap_epochs,
                    learning_rate=s.rap_lr, scale=s.rap_scale, max_length=s.max_length,
                    show_progress=not self.disable_progress)).fit(splits["clean"], text, label)  # target rows only
            clean_preds, triggered_preds = (predict(model, self.tokenizer, d, **common) for d in (clean_test, triggered))
            clean_scores, triggered_scores = (detector.scores(d, text) for d in (clean_test, triggered))
            scores = scores_after_rejection(clean_preds=clean_preds, clean_labels=clean_test[label],
                                            clean_rejected=detector.rejects(clean_scores, clean_preds),
                                            triggered_preds=triggered_preds, target_label=attack.target_label,
                                            triggered_rejected=detector.rejects(triggered_scores, triggered_preds))
            threshold = detector.threshold if np.isfinite(detector.threshold) else None  # None: rejects nothing
            details = {"frr": scores.pop("frr"), "far": scores.pop("far"), "threshold": threshold,
                       "auroc": detection_auroc(clean_scores=clean_scores, triggered_scores=triggered_scores,
                                                clean_preds=clean_preds, triggered_preds=triggered_preds,
                                                target_label=attack.target_label)}
            if spec.defense == "rap":
                details["rap_history"] = detector.history
        details["defense_seconds"] = time.perf_counter() - start
        return {**scores, "n_clean": len(clean_test), "n_triggered": len(triggered)}, details

    def _filter_cell(self, spec: CellSpec, suspect_dir: Path, num_labels: int, attack):
        """BKI or CUBE: the backdoored model finds the poison in its own training set; a full fine-tune on the
        rows kept (same settings as the suspect) is the cell's model."""
        import numpy as np

        from ..baselines import BKI, CUBE, BKIConfig, CUBEConfig, filter_quality

        s = self.settings
        poisoned = attack.poison(self.splits(spec.dataset, spec.seed)["train"])
        suspect = self._load(suspect_dir, num_labels)
        progress = not self.disable_progress
        start = time.perf_counter()
        if spec.defense == "bki":
            found = BKI(suspect, self.tokenizer, BKIConfig(num_keywords=s.bki_keywords, max_length=s.max_length,
                                                           show_progress=progress)).fit(poisoned, attack.text_column)
            extra = {"keywords": found.keywords}
        else:
            found = CUBE(suspect, self.tokenizer, CUBEConfig(min_samples=s.cube_min_samples, max_length=s.max_length,
                                                             seed=spec.seed, show_progress=progress))
            found.fit(poisoned, attack.text_column, attack.label_column)
            extra = {"clusters": int(len(set(found.clusters.tolist()) - {-1})),
                     "noise": int((found.clusters == -1).sum())}
        filter_seconds = time.perf_counter() - start
        del suspect
        kept = poisoned.select(np.flatnonzero(~found.flagged))
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            info = self._full_ft(kept, spec.seed, num_labels, Path(scratch))
            model = self._load(scratch, num_labels)
        details = {**extra, "filter_seconds": filter_seconds, "kept": len(kept),
                   **filter_quality(found.flagged, poisoned["is_poisoned"]),
                   "seconds_per_step": info["seconds_per_step"]}
        return model, details

    def _onion_lm(self) -> dict:
        """ONION's language model and tokenizer, loaded once per context (``"smollm2"``: the offline asset)."""
        if getattr(self, "_onion_cache", None) is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from ..assets import resolve_model_path

            source = resolve_model_path(self.settings.onion_model)
            self._onion_cache = {"model": AutoModelForCausalLM.from_pretrained(source).eval(),
                                 "tokenizer": AutoTokenizer.from_pretrained(source)}
        return self._onion_cache

    def _w2s_set(self, name: str, seed: int):
        """The set W2SDefense's student distils on and its teacher learns (see ``w2s_clean_source``)."""
        splits = self.splits(name, seed)
        return splits["w2s_clean"] if self.settings.w2s_clean_source == "unused_train" else splits["clean"]

    def _w2s_cell(self, spec: CellSpec, suspect_dir: Path, num_labels: int, shared: list[dict]):
        """W2SDefense (the teacher distilled into a LoRA on the backdoored model) or, for ``w2s_lora``, its own
        baseline: the same LoRA on the same set with the cross-entropy alone."""
        import warnings

        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

        from ..data import tokenize_dataset
        from ..experiments import lora_target_modules
        from ..metrics import make_compute_metrics
        from ..models import head_module_names
        from ..models.teacher import W2STeacher
        from ..trainers import W2SDefenseTrainer, W2SDefenseTrainingArguments

        s, splits = self.settings, self.splits(spec.dataset, spec.seed)
        train, dev = self._w2s_set(spec.dataset, spec.seed), splits["clean"] if s.w2s_best_dev else None
        distil = spec.defense == "w2sdefense"
        torch.manual_seed(spec.seed)
        student = self._load(suspect_dir, num_labels)
        if student.config.pad_token_id is None:
            student.config.pad_token_id = self.tokenizer.pad_token_id
        details: dict[str, Any] = {"train_rows": len(train)}
        if distil:
            teacher_dir, info = self.teacher(spec.dataset, spec.seed, student.config.hidden_size)
            shared.append(info)
            teacher = W2STeacher.from_pretrained(teacher_dir).eval()
            teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
            if s.w2s_clean_source == "unused_train":  # weak-to-strong needs a teacher better on the task
                from ..metrics import clean_accuracy, predict

                common = {"max_length": s.max_length, "disable_progress_bar": self.disable_progress}
                labels = splits["clean"]["label"]
                details["teacher_dev_accuracy"] = clean_accuracy(
                    predict(teacher, teacher_tok, splits["clean"], **common), labels)
                details["student_dev_accuracy"] = clean_accuracy(
                    predict(student, self.tokenizer, splits["clean"], **common), labels)
                details["teacher_beats_student"] = details["teacher_dev_accuracy"] > details["student_dev_accuracy"]
                if not details["teacher_beats_student"]:
                    warnings.warn(f"{spec.name}: the W2SDefense teacher ({details['teacher_dev_accuracy']:.3f} on "
                                  f"dev) does not beat the backdoored student ({details['student_dev_accuracy']:.3f}): "
                                  "it cannot pull the student towards better clean behaviour. Give it more data or "
                                  "epochs (w2s_clean_size, teacher_epochs).", UserWarning, stacklevel=2)
        extra_head = [n for n in head_module_names(s.pooling) if n != "classifier"] or None
        lora = LoraConfig(task_type="SEQ_CLS", r=s.w2s_lora_r, lora_alpha=s.w2s_lora_alpha or 2 * s.w2s_lora_r,
                          lora_dropout=0.05, modules_to_save=extra_head,
                          target_modules=lora_target_modules(student.config))
        student = get_peft_model(student, lora)
        schedule = dict(num_train_epochs=s.w2s_epochs, learning_rate=s.w2s_lr, per_device_train_batch_size=s.w2s_batch_size,
                        weight_decay=s.w2s_weight_decay, max_grad_norm=s.w2s_max_grad_norm, report_to="none",
                        seed=spec.seed, use_cpu=True, logging_strategy="no", disable_tqdm=self.disable_progress)
        if dev is not None:  # the authors keep the best dev epoch
            schedule.update(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
                            metric_for_best_model="accuracy", greater_is_better=True, save_total_limit=1)
        else:
            schedule.update(save_strategy="no")
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            if distil:
                preset = _W2S_PRESET[spec.parsed.attack]
                weights = {"alpha_ce": s.w2s_ce_weight, "beta_kd": s.w2s_kd_weight, "gamma_feature": s.w2s_feature_weight}
                if s.w2s_ce_weight is None:  # (the weights are set together)
                    details["preset"] = preset
                # Each term's share of the update, measured on one batch per epoch (three extra backward passes).
                steps_per_epoch = max(1, math.ceil(len(train) / s.w2s_batch_size))
                args = W2SDefenseTrainingArguments(
                    output_dir=scratch, preset=preset, max_length=s.max_length,
                    teacher_max_length=self.teacher_max_length,
                    feature_alignment=s.w2s_feature_alignment, gradient_shares=True,
                    **{k: v for k, v in weights.items() if v is not None},
                    **{**schedule, "logging_strategy": "steps", "logging_steps": steps_per_epoch})
                details["loss_weights"] = {"ce": args.alpha_ce, "kd": args.beta_kd, "feature": args.gamma_feature}
                trainer = W2SDefenseTrainer(model=student, teacher=teacher, teacher_tokenizer=teacher_tok,
                                            processing_class=self.tokenizer, args=args, train_dataset=train,
                                            eval_dataset=dev, compute_metrics=make_compute_metrics())
            else:
                from transformers import TrainingArguments

                def encode(data):
                    return None if data is None else tokenize_dataset(data, self.tokenizer, max_length=s.max_length)

                trainer = Trainer(model=student, args=TrainingArguments(output_dir=scratch, **schedule),
                                  train_dataset=encode(train), eval_dataset=encode(dev),
                                  data_collator=DataCollatorWithPadding(self.tokenizer),
                                  compute_metrics=make_compute_metrics())
            trainer.train()
        student.eval()
        if distil:
            details["per_epoch"] = [
                {"epoch": round(h["epoch"], 2), **{k: h[k] for k in _W2S_LOGGED if k in h}}
                for h in trainer.state.log_history if "grad_share_ce" in h]
            teacher_scores = self._evaluate(teacher, spec.dataset, spec.seed,
                                            make_attack(spec.parsed, spec.seed, s), tokenizer=teacher_tok)
            details.update(teacher_cacc=teacher_scores["cacc"], teacher_asr=teacher_scores["asr"])
        return student, details
