"""CUBE: cluster the training set in the backdoored model's representation space, drop the minority clusters.

From "A Unified Evaluation of Textual Backdoor Learning: Frameworks and Benchmarks" (Cui et al., NeurIPS 2022
Datasets and Benchmarks). A model trained on poisoned data maps the poisoned samples to a region of their own,
apart from the clean samples of the target label. CUBE reduces the training set's representations (PCA, then
UMAP), clusters them with HDBSCAN, and within every label keeps the largest cluster and drops each other
cluster (HDBSCAN's noise included) that holds less than ``drop_below`` of the label's samples; the model is
then retrained on what is kept.

Choices, each documented:

* The encoder is the model trained on the poisoned data (CUBE trains one for the purpose; the backdoored model
  the caller already has is that model), read as the last hidden layer averaged over non-padding tokens.
* Reduction and clustering follow the authors' toolkit: PCA to 20 dimensions, UMAP to 2 (100 neighbours,
  ``min_dist`` 0), HDBSCAN with ``min_samples`` 100; both counts are capped below the number of samples, so a
  small set still clusters.
* scikit-learn (PCA, HDBSCAN) and umap-learn are optional dependencies: ``pip install
  "hf-backdoor-defense[baselines]"``.

Example:
    >>> from hf_backdoor_defense.baselines import CUBE, CUBEConfig
    >>> cube = CUBE(suspect, tokenizer, CUBEConfig()).fit(poisoned_train)    # doctest: +SKIP
    >>> kept = poisoned_train.select(np.flatnonzero(~cube.flagged))          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .bki import sentence_representations
from .common import check_positive_ints, texts_of

__all__ = ["CUBE", "CUBEConfig"]


@dataclass
class CUBEConfig:
    """Settings of :class:`CUBE`.

    Args:
        pca_components: Dimensions kept by PCA before UMAP.
        umap_neighbors: UMAP's ``n_neighbors``.
        umap_min_dist: UMAP's ``min_dist``.
        umap_components: Dimensions of the UMAP embedding that is clustered.
        min_samples: HDBSCAN's ``min_samples``.
        min_cluster_size: HDBSCAN's ``min_cluster_size``.
        drop_below: Within a label, clusters (other than the largest) holding less than this share of the
            label's samples are dropped.
        batch_size: Texts per forward pass.
        max_length: Truncation length.
        seed: Seed of PCA and UMAP.
        show_progress: Progress bar over the batches.
    """

    pca_components: int = field(default=20, metadata={"help": "PCA dimensions before UMAP."})
    umap_neighbors: int = field(default=100, metadata={"help": "UMAP n_neighbors."})
    umap_min_dist: float = field(default=0.0, metadata={"help": "UMAP min_dist."})
    umap_components: int = field(default=2, metadata={"help": "UMAP dimensions clustered."})
    min_samples: int = field(default=100, metadata={"help": "HDBSCAN min_samples."})
    min_cluster_size: int = field(default=5, metadata={"help": "HDBSCAN min_cluster_size."})
    drop_below: float = field(default=0.5, metadata={"help": "Drop clusters under this share of their label."})
    batch_size: int = field(default=64, metadata={"help": "Texts per forward pass."})
    max_length: int = field(default=128, metadata={"help": "Truncation length."})
    seed: int = field(default=42, metadata={"help": "Seed of PCA and UMAP."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bar."})

    def __post_init__(self) -> None:
        check_positive_ints(self, "pca_components", "umap_neighbors", "umap_components", "min_samples", "batch_size",
                            "max_length")
        if not isinstance(self.min_cluster_size, int) or self.min_cluster_size < 2:
            raise ValueError(f"`min_cluster_size` must be an integer >= 2, got {self.min_cluster_size!r}.")
        if not 0.0 < self.drop_below <= 1.0:
            raise ValueError(f"`drop_below` must lie in (0, 1], got {self.drop_below}.")
        if self.umap_min_dist < 0:
            raise ValueError(f"`umap_min_dist` must be >= 0, got {self.umap_min_dist}.")


def _clustering_tools():
    try:
        from sklearn.cluster import HDBSCAN
        from sklearn.decomposition import PCA
        from umap import UMAP
    except ImportError as err:
        raise ImportError("CUBE needs scikit-learn (>= 1.3) and umap-learn: "
                          "pip install 'hf-backdoor-defense[baselines]'.") from err
    return PCA, UMAP, HDBSCAN


def drop_minority_clusters(labels: np.ndarray, clusters: np.ndarray, drop_below: float) -> np.ndarray:
    """``True`` for the samples to drop: within each label, every cluster but the largest that holds less than
    ``drop_below`` of the label's samples (the noise label ``-1`` counts as a cluster)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    drop = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = labels == label
        ids, counts = np.unique(clusters[members], return_counts=True)
        if len(ids) < 2:
            continue
        largest = ids[np.argmax(counts)]
        for cluster, count in zip(ids, counts):
            if cluster != largest and count < drop_below * members.sum():
                drop |= members & (clusters == cluster)
    return drop


class CUBE:
    """The CUBE data filter: :meth:`fit` on the (poisoned) training set the model was trained on.

    After :meth:`fit`: ``flagged`` (a boolean per sample: remove it), ``clusters`` (HDBSCAN's label per sample,
    ``-1`` for noise) and ``embedding`` (the UMAP coordinates, for a plot).
    """

    def __init__(self, model: Any, tokenizer: Any, config: CUBEConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or CUBEConfig()
        self.flagged: np.ndarray | None = None

    def representations(self, texts: list[str]) -> np.ndarray:
        c = self.config
        was_training = self.model.training
        self.model.eval()
        try:
            parts = [sentence_representations(self.model, self.tokenizer, texts[i : i + c.batch_size],
                                              max_length=c.max_length)
                     for i in tqdm(range(0, len(texts), c.batch_size), desc="CUBE representations",
                                   disable=not c.show_progress)]
        finally:
            self.model.train(was_training)
        return torch.cat(parts).cpu().numpy()

    def fit(self, data: Any, text_column: str = "text", label_column: str = "label") -> CUBE:
        """Represent, reduce, cluster and flag the samples of ``data`` (a dataset with texts and labels)."""
        PCA, UMAP, HDBSCAN = _clustering_tools()
        c = self.config
        texts = texts_of(data, text_column)
        if label_column not in data.column_names:
            raise ValueError(f"`label_column` {label_column!r} is not a column of the dataset: {data.column_names}.")
        n = len(texts)
        if n < 3:
            raise ValueError(f"`data` has {n} sample(s): CUBE clusters a training set, give it at least 3.")
        features = self.representations(texts)
        reduced = PCA(n_components=min(c.pca_components, n, features.shape[1]), random_state=c.seed).fit_transform(features)
        self.embedding = UMAP(n_neighbors=min(c.umap_neighbors, n - 1), min_dist=c.umap_min_dist,
                              n_components=min(c.umap_components, n - 2), random_state=c.seed).fit_transform(reduced)
        self.clusters = HDBSCAN(min_samples=min(c.min_samples, n - 1),
                                min_cluster_size=min(c.min_cluster_size, n)).fit_predict(self.embedding)
        self.flagged = drop_minority_clusters(np.asarray(data[label_column]), self.clusters, c.drop_below)
        return self
