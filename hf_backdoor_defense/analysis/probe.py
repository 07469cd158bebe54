"""The probe set of the frequency analysis and the model outputs on it (embedding-layer points, class
probabilities).

Example:
    >>> from hf_backdoor_defense.analysis.probe import build_probe_set
    >>> probe = build_probe_set(poisoned_train, n_clean=200, n_poisoned=200, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["build_probe_set", "probe_outputs"]


def build_probe_set(
    dataset, n_clean: int = 200, n_poisoned: int = 200, *, seed: int = 0, poison_column: str = "is_poisoned"
):
    """A fixed, seeded probe subset of a poisoned *training* set: ``n_clean`` clean and ``n_poisoned``
    poisoned rows (clean rows first). The input is not modified.

    Example:
        >>> from datasets import Dataset
        >>> data = Dataset.from_dict({"text": list("abcdef"), "label": [0, 1] * 3,
        ...                           "is_poisoned": [True, False, False, True, False, False]})
        >>> probe = build_probe_set(data, n_clean=2, n_poisoned=2)
        >>> list(probe["is_poisoned"])
        [False, False, True, True]
    """
    if poison_column not in dataset.column_names:
        raise ValueError(
            f"the probe source has no {poison_column!r} column (columns: {dataset.column_names}); "
            "pass the output of an attack's .poison()."
        )
    flags = np.asarray(dataset[poison_column], dtype=bool)
    clean_idx, poison_idx = np.flatnonzero(~flags), np.flatnonzero(flags)
    if n_clean < 0 or n_poisoned < 0 or n_clean + n_poisoned == 0:
        raise ValueError(f"n_clean and n_poisoned must be >= 0 and not both 0, got {n_clean}, {n_poisoned}.")
    if n_clean > len(clean_idx) or n_poisoned > len(poison_idx):
        raise ValueError(
            f"asked for {n_clean} clean and {n_poisoned} poisoned probe rows but the dataset has "
            f"{len(clean_idx)} and {len(poison_idx)}; lower n_clean / n_poisoned."
        )
    rng = np.random.default_rng(seed)
    chosen_clean = np.sort(rng.choice(clean_idx, size=n_clean, replace=False))
    chosen_poison = np.sort(rng.choice(poison_idx, size=n_poisoned, replace=False))
    return dataset.select(np.concatenate([chosen_clean, chosen_poison]).tolist())


@torch.no_grad()
def probe_outputs(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 32,
    pooling: str = "flatten",
    disable_progress_bar: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [n, d] float64, probs [n, c] float64)`` of a sequence classifier on ``texts``.

    The embedding is the embedding-layer output (``hidden_states[0]``: for BERT word + position + type
    embeddings after LayerNorm; for Llama/GPT-2 the input embeddings), at a fixed length ``max_length`` with
    padded positions set to zero (inputs are right-padded whatever the tokenizer's default, so token t is in
    slot t and a sentence's point does not depend on its batch), then flattened (``pooling="flatten"``) or mean-pooled over real tokens.
    The model's train/eval mode is restored afterwards.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    embeddings, probs = [], []
    try:
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="Frequency probe", disable=disable_progress_bar, leave=False):
            batch = list(texts[start : start + batch_size])
            # Pad to the longest in the batch for the forward pass (cheaper), then zero-pad the embeddings
            # to `max_length`: the same points as padding every input to `max_length`, since padded
            # positions are zeroed either way.
            # Right padding always, so token t of every sentence sits in slot t of the flattened point.
            enc = tokenizer(
                batch,
                truncation=True,
                max_length=max_length,
                padding=True,
                padding_side="right",
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model(**enc, output_hidden_states=True, return_dict=True)
            if out.hidden_states is None:
                raise ValueError(f"{type(model).__name__} returned no hidden_states; cannot read embeddings.")
            mask = enc["attention_mask"].unsqueeze(-1).to(torch.float64)
            hidden = out.hidden_states[0].to(torch.float64) * mask
            if pooling == "flatten" and hidden.shape[1] < max_length:
                hidden = torch.nn.functional.pad(hidden, (0, 0, 0, max_length - hidden.shape[1]))
            if pooling == "flatten":
                points = hidden.flatten(1)
            elif pooling == "mean":
                points = hidden.sum(1) / mask.sum(1).clamp_min(1.0)
            else:
                raise ValueError(f"pooling must be 'flatten' or 'mean', got {pooling!r}.")
            embeddings.append(points.cpu())
            probs.append(torch.softmax(out.logits.to(torch.float64), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(embeddings), torch.cat(probs)
