"""The field's baseline defenses, to compare ours against.

* :class:`ONION` (inference time): remove the words whose deletion makes the sentence much more fluent.
* :class:`STRIP` (inference time): reject inputs whose prediction survives heavy word replacement (its stop
  words come from scikit-learn, the ``baselines`` extra).
* :class:`RAP` (inference time): reject target-class inputs that a learned rare word cannot shake.
* :class:`BKI` (training data): find the backdoor keyword with the backdoored model, drop its sentences.
* :class:`CUBE` (training data): cluster the training set in the backdoored model's representation space, drop
  the minority clusters of each label (needs the ``baselines`` extra).
* :func:`scores_after_rejection`: CACC / ASR after a detector, with its FRR and FAR; :func:`detection_auroc`:
  whether a detector's score separates triggered from clean inputs at any threshold; :func:`filter_quality`:
  precision and recall of a data filter.

Example:
    >>> from hf_backdoor_defense.baselines import ONION, ONIONConfig, STRIP, STRIPConfig
    >>> onion = ONION(ONIONConfig(language_model="gpt2", threshold=0.0))                # doctest: +SKIP
    >>> strip = STRIP(model, tokenizer, STRIPConfig(frr=0.01)).fit(clean_dev_texts)     # doctest: +SKIP
"""

from .bki import BKI, BKIConfig, sentence_representations
from .cube import CUBE, CUBEConfig, drop_minority_clusters
from .metrics import detection_auroc, filter_quality, scores_after_rejection
from .onion import ONION, ONIONConfig
from .rap import RAP, RAPConfig
from .strip import STRIP, STRIPConfig, tfidf_words

__all__ = ["BKI", "BKIConfig", "CUBE", "CUBEConfig", "ONION", "ONIONConfig", "RAP", "RAPConfig", "STRIP", "STRIPConfig",
           "detection_auroc", "drop_minority_clusters", "filter_quality", "scores_after_rejection", "sentence_representations", "tfidf_words"]
