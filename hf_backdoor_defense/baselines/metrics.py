"""How an inference-time baseline is scored: CACC and ASR after it acted, and the error rates of a detector.

A detector (STRIP) rejects inputs; a rejected input gets no prediction. Here a rejected clean input counts as
a lost prediction (not correct) and a rejected triggered input as a failed attack, so that CACC and ASR stay
fractions of all the inputs and compare with the undefended model's:

* ``frr``: clean inputs rejected / clean inputs (false rejection rate);
* ``far``: triggered inputs accepted / triggered inputs (false acceptance rate);
* ``cacc``: clean inputs accepted and correctly classified / clean inputs;
* ``asr``: triggered inputs accepted and classified as the target / triggered inputs.

A detector's threshold is one operating point; :func:`detection_auroc` asks whether its score separates the
attacks at all: among the inputs the model predicts as the target (the only ones whose rejection matters), the
probability that a triggered input scores as more suspect than a clean one.

A corrector (ONION) rejects nothing: its CACC and ASR are those of the classifier on the corrected texts.

A training-data filter (BKI) is scored by the model retrained on what it kept, and by the precision and recall
of what it removed against the rows that were poisoned (:func:`filter_quality`).

Example:
    >>> from hf_backdoor_defense.baselines import scores_after_rejection
    >>> scores_after_rejection(clean_preds=[1, 0, 1], clean_labels=[1, 0, 0], clean_rejected=[False, True, False],
    ...                        triggered_preds=[1, 1], target_label=1, triggered_rejected=[True, False])
    {'cacc': 0.3333333333333333, 'asr': 0.5, 'frr': 0.3333333333333333, 'far': 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["detection_auroc", "filter_quality", "scores_after_rejection"]


def scores_after_rejection(*, clean_preds: Sequence[int], clean_labels: Sequence[int],
                           clean_rejected: Sequence[bool], triggered_preds: Sequence[int], target_label: int,
                           triggered_rejected: Sequence[bool]) -> dict[str, float]:
    """CACC, ASR, FRR and FAR of a detector (see the module docstring for the definitions)."""
    cp, cl, cr = (np.asarray(x) for x in (clean_preds, clean_labels, clean_rejected))
    tp, tr = np.asarray(triggered_preds), np.asarray(triggered_rejected)
    if not (len(cp) == len(cl) == len(cr)) or len(cp) == 0:
        raise ValueError("`clean_preds`, `clean_labels` and `clean_rejected` need the same, non-zero length.")
    if len(tp) != len(tr) or len(tp) == 0:
        raise ValueError("`triggered_preds` and `triggered_rejected` need the same, non-zero length.")
    cr, tr = cr.astype(bool), tr.astype(bool)
    return {"cacc": float(((cp == cl) & ~cr).mean()), "asr": float(((tp == target_label) & ~tr).mean()),
            "frr": float(cr.mean()), "far": float((~tr).mean())}


def detection_auroc(*, clean_scores: Sequence[float], triggered_scores: Sequence[float], clean_preds: Sequence[int],
                    triggered_preds: Sequence[int], target_label: int) -> float | None:
    """AUROC of a detector's score, lower meaning more suspect (STRIP's entropy, RAP's drop), among the inputs
    predicted as ``target_label``: triggered ones are the positives, clean ones the negatives; ties count one
    half and scores that are not finite are left out. ``None`` when either group is empty.

    Example:
        >>> detection_auroc(clean_scores=[0.9, 0.5, 0.1], triggered_scores=[0.2, 0.05], clean_preds=[1, 1, 0],
        ...                 triggered_preds=[1, 1], target_label=1)
        1.0
    """
    cs, ts = np.asarray(clean_scores, dtype=float), np.asarray(triggered_scores, dtype=float)
    cp, tp = np.asarray(clean_preds), np.asarray(triggered_preds)
    if len(cs) != len(cp) or len(ts) != len(tp):
        raise ValueError("each score needs its prediction: `clean_scores`/`clean_preds` and "
                         "`triggered_scores`/`triggered_preds` must have the same lengths.")
    negatives = cs[(cp == target_label) & np.isfinite(cs)]
    positives = ts[(tp == target_label) & np.isfinite(ts)]
    if len(negatives) == 0 or len(positives) == 0:
        return None
    negatives = np.sort(negatives)  # for each positive: negatives above it, and those equal to it
    above = len(negatives) - np.searchsorted(negatives, positives, side="right")
    ties = np.searchsorted(negatives, positives, side="right") - np.searchsorted(negatives, positives, side="left")
    return float((above + 0.5 * ties).sum() / (len(positives) * len(negatives)))


def filter_quality(removed: Sequence[bool], is_poisoned: Sequence[bool]) -> dict[str, float | int | None]:
    """``removed`` rows counted, and their ``precision`` (poisoned among the removed; ``None`` when nothing was
    removed) and ``recall`` (removed among the poisoned; ``None`` without poisoned rows).

    Example:
        >>> filter_quality([True, True, False, False], [True, False, True, False])
        {'removed': 2, 'precision': 0.5, 'recall': 0.5}
    """
    r, p = np.asarray(removed, dtype=bool), np.asarray(is_poisoned, dtype=bool)
    if len(r) != len(p):
        raise ValueError(f"`removed` ({len(r)}) and `is_poisoned` ({len(p)}) need the same length.")
    hits = int((r & p).sum())
    return {"removed": int(r.sum()), "precision": hits / int(r.sum()) if r.any() else None,
            "recall": hits / int(p.sum()) if p.any() else None}
