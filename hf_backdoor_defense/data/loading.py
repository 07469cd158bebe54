"""One loader for every text-classification source: built-in offline corpora, local files, Hub names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from .corpora import BUILTIN_CORPORA

logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def load_text_classification(
    name_or_path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    config_name: str | None = None,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    split_seed: int = 42,
    collection: int | None = None,
    trust_remote_code: bool = False,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load a text-classification dataset as ``train`` / ``validation`` / ``test`` with ``text`` and ``label``.

    ``label`` is a :class:`datasets.ClassLabel`, so ``dataset["train"].features["label"].names`` gives the
    label names. Other columns are kept.

    Args:
        name_or_path: ``"rotten_tomatoes"`` or ``"spamassassin"`` (built-in, offline), a local CSV / TSV /
            JSON / JSONL / parquet file or a folder of them (``train.*``, ``validation.*`` or ``dev.*``,
            ``test.*``), or any other name, passed to :func:`datasets.load_dataset` (e.g. ``"sst2"``).
        text_column: Column holding the input text; renamed to ``text``.
        label_column: Column holding the label (ints or strings); renamed to ``label``.
        label_names: Names of the classes, index = label id. Default: taken from a ClassLabel feature,
            else the sorted distinct string labels, else ``"0"`` … ``"C-1"`` for integer labels.
        config_name: Dataset configuration for :func:`datasets.load_dataset` (e.g. ``"sst2"`` of ``"glue"``).
        validation_size: Fraction of ``train`` carved out (stratified, seeded) when there is no validation split.
        test_size: Fraction of the data carved out when there is no (labelled) test split.
        split_seed: Seed of every split this function makes; the built-in corpora use the default 42.
        collection: ``"spamassassin"`` only: keep collection period 1 or 2 (the domain-shift halves).
        trust_remote_code: Forwarded to :func:`datasets.load_dataset`; off unless you ask.
        **load_kwargs: Forwarded to :func:`datasets.load_dataset`.

    Example:
        >>> from hf_backdoor_defense.data import load_text_classification
        >>> rt = load_text_classification("rotten_tomatoes")       # doctest: +SKIP
        >>> rt["train"].features["label"].names                    # doctest: +SKIP
        ['negative', 'positive']
        >>> mine = load_text_classification("reviews.csv", text_column="review", label_column="stars")  # doctest: +SKIP
    """
    _check_fraction("validation_size", validation_size)
    _check_fraction("test_size", test_size)
    name = str(name_or_path)
    key = name.lower().replace("-", "_")
    if collection is not None and key != "spamassassin":
        raise ValueError(f"collection={collection!r} only applies to the built-in 'spamassassin' corpus.")

    if key in BUILTIN_CORPORA:
        full = BUILTIN_CORPORA[key]()
        if collection is not None:
            if collection not in (1, 2):
                raise ValueError(f"collection must be 1 or 2 for spamassassin, got {collection!r}.")
            full = full.filter(lambda c: c == collection, input_columns="collection")
        raw = datasets.DatasetDict({"train": full})
    else:  # split names normalised there (dev -> validation...)
        raw = load_dataset_splits(name, config_name, trust_remote_code=trust_remote_code, **load_kwargs)
    if "train" not in raw:
        raise ValueError(
            f"{name}: no 'train' split (found {sorted(raw)}). Name the files train.* / validation.* / test.*, "
            "or pass a single file."
        )
    raw = datasets.DatasetDict({k: v for k, v in raw.items() if k in ("train", "validation", "test")})
    raw = _normalise_columns(raw, name, text_column, label_column)
    had_test = "test" in raw
    raw = _drop_unlabelled(raw)
    raw = _to_class_label(raw, name, label_names)
    # GLUE-style data (unlabelled test): the labelled validation split serves as the test split.
    promote_validation = had_test and "test" not in raw
    return _complete_splits(raw, name, validation_size, test_size, split_seed, promote_validation)


def load_dataset_splits(name_or_path: str | Path, config_name: str | None = None, *,
                        trust_remote_code: bool = False, **load_kwargs: Any) -> datasets.DatasetDict:
    """The splits of a local file / folder or a Hub dataset as they are (no column or label handling), with
    the split names normalised (``dev`` -> ``validation``...). The loader under
    :func:`load_text_classification` and the instruction loader.

    Example:
        >>> raw = load_dataset_splits("my_pairs.jsonl")   # doctest: +SKIP
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        raw = _load_local(local, **load_kwargs)
    else:
        raw = _load_hub(name, config_name, trust_remote_code=trust_remote_code, **load_kwargs)
    return datasets.DatasetDict({SPLIT_ALIASES.get(k.lower(), k): v for k, v in raw.items()})


def subsample(dataset: datasets.Dataset, n: int | None, seed: int, *, stratify: bool = False) -> datasets.Dataset:
    """A seeded subset of ``n`` rows of ``dataset``; the dataset itself when ``n`` is ``None`` or not below its size.

    ``stratify=False`` takes the first ``n`` rows of a seeded shuffle; ``stratify=True`` keeps the class shares
    of the ``label`` column (a ClassLabel). The input is not modified.

    Example:
        >>> subsample(datasets.Dataset.from_dict({"text": list("abcdef")}), 3, seed=0).num_rows
        3
    """
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"the subsample size must be >= 1 or None (every row), got {n}.")
    if stratify:
        return dataset.train_test_split(train_size=n, seed=seed, stratify_by_column="label")["train"]
    return dataset.shuffle(seed=seed).select(range(n))


def _check_fraction(field: str, value: float) -> None:
    if not 0.0 < float(value) < 0.5:
        raise ValueError(f"{field} must be a fraction in (0, 0.5), got {value!r}.")


def _load_local(path: Path, **load_kwargs) -> datasets.DatasetDict:
    if path.is_file():
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(LOCAL_FORMATS)}."
            )
        if path.suffix.lower() == ".tsv":
            load_kwargs.setdefault("delimiter", "\t")
        return _read_files(builder, {"train": [str(path)]}, path, **load_kwargs)
    files = [p for p in sorted(path.iterdir()) if p.suffix.lower() in LOCAL_FORMATS]
    if not files:
        raise ValueError(f"{path}: folder holds no {'/'.join(sorted(LOCAL_FORMATS))} files.")
    kinds = {LOCAL_FORMATS[p.suffix.lower()] for p in files}
    if len(kinds) > 1:
        raise ValueError(f"{path}: mixes file types {sorted(kinds)}; keep one format per folder.")
    by_split: dict[str, list[str]] = {}
    for p in files:
        split = SPLIT_ALIASES.get(p.stem.lower().split(".")[0])
        if split:
            by_split.setdefault(split, []).append(str(p))
    if not by_split:  # no split names: all files are one pool
        by_split = {"train": [str(p) for p in files]}
    if any(p.suffix.lower() == ".tsv" for p in files):
        load_kwargs.setdefault("delimiter", "\t")
    return _read_files(kinds.pop(), by_split, path, **load_kwargs)


def _read_files(builder: str, data_files: dict, path: Path, **load_kwargs) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(builder, data_files=data_files, **load_kwargs)
    except ValueError as err:
        if "corresponds to no data" in str(err) or "empty" in str(err).lower():
            raise ValueError(f"{path}: a split file holds no rows (empty split); add examples or remove it.") from err
        raise


def _load_hub(name: str, config_name: str | None, **load_kwargs) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(name, config_name, **load_kwargs)
    except (ConnectionError, OSError) as err:
        raise ValueError(
            f"Could not load dataset {name!r}: it is neither a built-in corpus "
            f"({', '.join(sorted(BUILTIN_CORPORA))}) nor a local file, and the Hub did not answer ({err}). "
            "Check the name, pass a local file, or go online."
        ) from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _normalise_columns(raw, name, text_column, label_column) -> datasets.DatasetDict:
    out = {}
    for split, ds in raw.items():
        if text_column == "text" and "text" not in ds.column_names and "sentence" in ds.column_names:
            text_column = "sentence"  # GLUE-style sets (sst2, cola, ...) name their single text column so
        for field, column in (("text_column", text_column), ("label_column", label_column)):
            if column not in ds.column_names:
                raise ValueError(
                    f"{name} [{split}]: no column {column!r} (columns: {ds.column_names}). "
                    f"Pass {field}= with the right column name."
                )
        if text_column != "text":
            if "text" in ds.column_names:
                ds = ds.remove_columns("text")
            ds = ds.rename_column(text_column, "text")
        if label_column != "label":
            if "label" in ds.column_names:
                ds = ds.remove_columns("label")
            ds = ds.rename_column(label_column, "label")
        if len(ds) == 0:
            raise ValueError(f"{name}: split {split!r} is empty; provide examples or drop that split.")
        bad = [i for i, t in enumerate(ds["text"]) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(
                f"{name} [{split}]: {len(bad)} rows have an empty or non-text 'text' (first row {bad[0]}); "
                "clean the file or choose another text_column."
            )
        out[split] = ds
    return datasets.DatasetDict(out)


def _drop_unlabelled(raw: datasets.DatasetDict) -> datasets.DatasetDict:
    # GLUE-style test splits carry label -1 everywhere: they cannot score anything.
    out = {}
    for split, ds in raw.items():
        labels = ds["label"]
        if split != "train" and all(lab == -1 for lab in labels):
            logger.warning("Split %r has no labels (all -1); a labelled test split is carved instead.", split)
            continue
        out[split] = ds
    return datasets.DatasetDict(out)


def _to_class_label(raw, name, label_names) -> datasets.DatasetDict:
    feature = raw["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        names = list(label_names) if label_names is not None else list(feature.names)
        if label_names is not None and len(names) != feature.num_classes:
            raise ValueError(
                f"label_names has {len(names)} names but {name} has {feature.num_classes} classes "
                f"({feature.names}); pass one name per class."
            )
        mapping = None
    else:
        values = sorted({v for ds in raw.values() for v in ds["label"]}, key=lambda v: (str(type(v)), v))
        if all(isinstance(v, str) for v in values):
            names = list(label_names) if label_names is not None else values
            unknown = [v for v in values if v not in names]
            if unknown:
                raise ValueError(
                    f"{name}: labels {unknown[:5]} are not in label_names={names}; add them to label_names."
                )
            mapping = {n: i for i, n in enumerate(names)}
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            top = max(values)
            names = list(label_names) if label_names is not None else [str(i) for i in range(top + 1)]
            mapping = None
        else:
            raise ValueError(
                f"{name}: labels must be all integers or all strings, got {values[:5]}; "
                "convert the label column or choose another label_column."
            )
    if len(names) < 2:
        raise ValueError(
            f"{name}: a classification dataset needs at least 2 classes, got {names}; "
            "check the label column or pass label_names with one name per class."
        )
    class_label = datasets.ClassLabel(names=names)
    out = {}
    for split, ds in raw.items():
        if mapping is not None:
            ds = ds.map(lambda b: {"label": [mapping[v] for v in b["label"]]}, batched=True,
                        input_columns=None, desc=None)
            ds = ds.cast_column("label", datasets.Value("int64"))
        labels = ds["label"]
        outside = sorted({v for v in labels if not 0 <= v < len(names)})
        if outside:
            raise ValueError(
                f"{name} [{split}]: labels {outside[:5]} are outside the {len(names)} classes {names}; "
                "fix the data or pass label_names with one name per class."
            )
        out[split] = ds.cast_column("label", class_label)
    return datasets.DatasetDict(out)


def _split(ds: datasets.Dataset, size: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    try:
        parts = ds.train_test_split(test_size=size, seed=seed, stratify_by_column="label")
    except ValueError:  # too few examples per class to stratify
        parts = ds.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]


def _complete_splits(raw, name, validation_size, test_size, seed, promote_validation) -> datasets.DatasetDict:
    train, test, validation = raw["train"], raw.get("test"), raw.get("validation")
    if test is None and validation is not None and promote_validation:
        test, validation = validation, None
    carved_test = test is None
    if carved_test:
        train, test = _split(train, test_size, seed)
    if validation is None:
        # Fractions are of the whole pool: rescale when the test part was already taken out of train.
        fraction = validation_size / (1.0 - test_size) if carved_test else validation_size
        train, validation = _split(train, fraction, seed)
    result = datasets.DatasetDict({"train": train, "validation": validation, "test": test})
    for split, ds in result.items():
        if len(ds) == 0:
            raise ValueError(f"{name}: split {split!r} came out empty; provide more examples.")
    return result
