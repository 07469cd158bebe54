"""Is this model or adapter backdoored? Look for a token that sends clean inputs to one label.

A backdoor is a shortcut: some input feature sends almost any input to the target label. The scan looks for
single tokens that do so, without knowing the trigger:

1. **Candidates.** For every label ``y``, a placeholder token (the mask or unknown token) is put in front of
   clean inputs and the gradient of ``log p(y)`` with respect to its embedding is averaged; to first order,
   replacing the placeholder by token ``t`` raises ``log p(y)`` by ``(e_t − e_placeholder) · g``, so the tokens with the largest ``e_t · g``
   are the candidates (HotFlip's estimate). With the pre-trained reference of a full model, the tokens whose
   embeddings drifted most relative to their frequency in the clean text (E-PUR's ranking) are candidates too.
2. **Confirmation.** Each candidate is put in front of clean inputs the model does not already assign to
   ``y``; its flip rate is the share that then goes to ``y``. A trigger flips nearly all of them; an ordinary
   token, a few.
3. **Verdict.** The score is the largest flip rate; at or above ``threshold`` the model is suspicious, the
   label is the likely target, and the top candidates are the likely triggers.

A sentence trigger (AddSent) is not one token; its words may still flip some inputs, which the score then
shows less clearly. ``docs/howto/scan.md`` gives what was measured on the benchmark's models, and how the
default threshold was chosen.

Example:
    >>> from hf_backdoor_defense.scan import ScanConfig, scan_model
    >>> report = scan_model(model, tokenizer, clean_dev, config=ScanConfig())     # doctest: +SKIP
    >>> report.suspicious, report.candidates[0]["token"], report.candidates[0]["flip_rate"]  # doctest: +SKIP
    (True, 'cf', 0.99)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .baselines.common import check_positive_ints

__all__ = ["ScanConfig", "ScanReport", "scan_model"]


@dataclass
class ScanConfig:
    """Settings of :func:`scan_model`.

    Args:
        candidates: Tokens tested per label from each candidate source.
        top_k: Candidates listed in the report.
        num_inputs: Clean inputs used for the gradient and for each flip test.
        threshold: Flip rate at or above which the model is reported suspicious. The default, 0.85, is a
            round value above the scores of the clean v2 models of seeds 0 and 1 (``docs/howto/scan.md``).
        batch_size: Batch size.
        max_length: Truncation length.
        seed: Seed of the choice of clean inputs.
        max_clean_frequency: Candidates found in more than this share of the clean texts do not count toward
            the score (they are the task's own vocabulary: on a sentiment task "stunning" sends most negative
            reviews to positive in a clean model too); ``None``: every candidate counts. On the matrix's models
            (``benchmarks/scan_calibration.py``) no cap raised the AUC, so none is the default.
        show_progress: Progress bars.
    """

    candidates: int = field(default=30, metadata={"help": "Tokens tested per label and source."})
    top_k: int = field(default=5, metadata={"help": "Candidates listed in the report."})
    num_inputs: int = field(default=128, metadata={"help": "Clean inputs used."})
    threshold: float = field(default=0.85, metadata={"help": "Flip rate at or above which the model is suspicious."})
    batch_size: int = field(default=32, metadata={"help": "Batch size."})
    max_length: int = field(default=128, metadata={"help": "Truncation length."})
    seed: int = field(default=0, metadata={"help": "Seed of the choice of clean inputs."})
    max_clean_frequency: float | None = field(default=None, metadata={
        "help": "Candidates in more than this share of the clean texts do not count toward the score (None: all)."})
    show_progress: bool = field(default=True, metadata={"help": "Progress bars."})

    def __post_init__(self) -> None:
        check_positive_ints(self, "candidates", "top_k", "num_inputs", "batch_size", "max_length")
        if self.max_clean_frequency is not None and not 0.0 <= self.max_clean_frequency <= 1.0:
            raise ValueError(f"`max_clean_frequency` must lie in [0, 1] (a share of texts) or be None, got "
                             f"{self.max_clean_frequency}.")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"`threshold` must lie in (0, 1] (a flip rate), got {self.threshold}.")


@dataclass
class ScanReport:
    """What :func:`scan_model` found.

    Args:
        score: The largest flip rate of any candidate (0–1).
        suspicious: ``score >= threshold``.
        threshold: The threshold used.
        target_label: The label the best candidate flips to.
        candidates: The ``top_k`` candidates: ``token``, ``token_id``, ``label``, ``flip_rate``, ``n_tested``,
            ``sources`` (``"gradient"``, ``"drift"``), ``rank`` (the best place a source gave it) and
            ``clean_frequency`` (the share of the clean texts holding the token). Ordered by flip rate (those
            over ``max_clean_frequency`` last); ties go to candidates found by more sources, then placed higher.
        tested: Every candidate tested, in the same order and form (for calibration).
        n_inputs: Clean inputs used.
        mode: ``"full"`` or ``"adapter"``.
    """

    score: float
    suspicious: bool
    threshold: float
    target_label: int | None
    candidates: list[dict]
    n_inputs: int
    mode: str
    tested: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """A few human lines: the verdict, then the top candidates."""
        verdict = "SUSPICIOUS" if self.suspicious else "no backdoor found"
        lines = [f"{verdict}: score {self.score:.2f} (threshold {self.threshold:.2f}; the largest share of "
                 f"{self.n_inputs} clean inputs one token sends to a single label)."]
        if self.suspicious:
            lines.append(f"Likely target label: {self.target_label}.")
        lines.append("Top candidate tokens (flip rate, label, found by):")
        lines += [f"  {c['token']!r}: {c['flip_rate']:.2f} -> {c['label']} ({', '.join(c['sources'])}; in "
                  f"{100 * c.get('clean_frequency', 0.0):.1f} % of the clean texts)" for c in self.candidates]
        return "\n".join(lines)


def _front(tokenizer: Any) -> int:
    """Where a token goes "in front": after the leading special token (BOS/[CLS]) if the tokenizer adds one."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return 1 if ids and ids[0] in set(tokenizer.all_special_ids) else 0


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(texts, truncation=True, max_length=max_length - 1)["input_ids"]


def _batch(ids: list[list[int]], pad: int, device) -> dict[str, torch.Tensor]:
    width = max(len(x) for x in ids)
    return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)}


def _predict(model: Any, ids: list[list[int]], pad: int, batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            out.append(model(**_batch(ids[i : i + batch_size], pad, device)).logits.argmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _gradient_candidates(model: Any, ids: list[list[int]], pos: int, pad: int, placeholder: int, num_labels: int,
                         k: int, excluded: set[int], batch_size: int) -> dict[int, list[int]]:
    """Per label, the ``k`` token ids with the largest first-order gain of ``log p(label)`` when put in front in
    place of ``placeholder``."""
    table = model.get_input_embeddings()
    weight = table.weight.detach().float()
    device = weight.device
    grads = torch.zeros(num_labels, weight.shape[1], device=device)
    for i in range(0, len(ids), batch_size):
        chunk = [x[:pos] + [placeholder] + x[pos:] for x in ids[i : i + batch_size]]
        batch = _batch(chunk, pad, device)
        embeds = table(batch["input_ids"]).detach().requires_grad_(True)
        logp = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits.float().log_softmax(-1)
        for label in range(num_labels):
            (g,) = torch.autograd.grad(logp[:, label].sum(), embeds, retain_graph=label < num_labels - 1)
            grads[label] += g[:, pos].sum(0).float()
    scores = grads @ weight.T  # (labels, vocab)
    if excluded:
        scores[:, sorted(excluded)] = float("-inf")
    return {label: scores[label].topk(k).indices.tolist() for label in range(num_labels)}


def _drift_candidates(model: Any, reference: Any, tokenizer: Any, texts: list[str], k: int,
                      excluded: set[int]) -> list[int]:
    """The ``k`` token ids E-PUR would reset first: embedding drift over ``log(1 + frequency) + 1``."""
    from .purification.epur import log_frequency_weight, token_frequencies

    suspect_rows = model.get_input_embeddings().weight.detach().float()
    reference_rows = reference.get_input_embeddings().weight.detach().float().to(suspect_rows.device)
    if suspect_rows.shape != reference_rows.shape:
        raise ValueError("`reference`: its embedding matrix differs in shape from the suspect's; pass the "
                         "pre-trained checkpoint the suspect was fine-tuned from.")
    drift = (suspect_rows - reference_rows).norm(dim=1).cpu()
    import datasets

    counts = token_frequencies(datasets.Dataset.from_dict({"text": texts}), tokenizer, len(drift))
    score = drift / log_frequency_weight(counts)
    if excluded:
        score[sorted(excluded)] = float("-inf")
    return score.topk(k).indices.tolist()


def scan_model(model: Any, tokenizer: Any, clean: Any, *, reference: Any = None, config: ScanConfig | None = None,
               text_column: str = "text") -> ScanReport:
    """Scan ``model`` (a sequence classifier or a PEFT adapter on one) with clean texts; see the module docstring.

    Args:
        model: The suspect; not modified.
        tokenizer: Its tokenizer (with a pad token).
        clean: Clean texts (a list, or a dataset with ``text_column``); labels are not needed.
        reference: The pre-trained model of a full fine-tuned suspect (adds E-PUR's drift candidates).
        config: :class:`ScanConfig`.
    """
    from .baselines.common import texts_of

    c = config or ScanConfig()
    texts = texts_of(clean, text_column)
    if not texts:
        raise ValueError("`clean` is empty: the scan needs clean texts of the model's task.")
    rng = np.random.default_rng(c.seed)
    every_text = texts
    texts = [texts[i] for i in rng.permutation(len(texts))[: c.num_inputs]]
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad token: set `tokenizer.pad_token = tokenizer.eos_token`.")
    num_labels = int(getattr(getattr(model, "config", None), "num_labels", 0) or 2)
    excluded = set(tokenizer.all_special_ids)
    pos = _front(tokenizer)
    ids = _encode(tokenizer, texts, c.max_length)
    was_training = model.training
    model.eval()
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        sources: dict[tuple[int, int], set[str]] = {}
        rank: dict[tuple[int, int], int] = {}  # the best place a source gave the candidate (ties among flip rates)
        placeholder = next((t for t in (tokenizer.mask_token_id, tokenizer.unk_token_id) if t is not None), pad)
        for label, tokens in _gradient_candidates(model, ids, pos, pad, placeholder, num_labels, c.candidates,
                                                  excluded, c.batch_size).items():
            for place, t in enumerate(tokens):
                sources.setdefault((t, label), set()).add("gradient")
                rank[(t, label)] = min(rank.get((t, label), place), place)
        is_full = reference is not None
        if is_full:
            for place, t in enumerate(_drift_candidates(model, reference, tokenizer, texts, c.candidates, excluded)):
                for label in range(num_labels):
                    sources.setdefault((t, label), set()).add("drift")
                    rank[(t, label)] = min(rank.get((t, label), place), place)
        predicted = _predict(model, ids, pad, c.batch_size)
        rows = []
        for (token, label), found_by in tqdm(sorted(sources.items()), desc="Scan: flip tests",
                                             disable=not c.show_progress):
            others = [x for x, y in zip(ids, predicted) if y != label]
            if not others:
                continue
            flipped = _predict(model, [x[:pos] + [token] + x[pos:] for x in others], pad, c.batch_size)
            rows.append({"token": tokenizer.convert_ids_to_tokens(token), "token_id": int(token), "label": int(label),
                         "flip_rate": float((flipped == label).mean()), "n_tested": len(others),
                         "sources": sorted(found_by), "rank": rank[(token, label)]})
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    in_texts = [set(x) for x in _encode(tokenizer, every_text, c.max_length)]
    for row in rows:
        row["clean_frequency"] = sum(row["token_id"] in x for x in in_texts) / len(in_texts)

    def counts(row: dict) -> bool:
        return c.max_clean_frequency is None or row["clean_frequency"] <= c.max_clean_frequency

    # Highest flip rate first (the task's own words last); among equal rates, found by more sources, then
    # placed higher by one.
    rows.sort(key=lambda r: (not counts(r), -r["flip_rate"], -len(r["sources"]), r["rank"]))
    best = rows[0] if rows and counts(rows[0]) else None
    score = best["flip_rate"] if best else 0.0
    mode = "adapter" if hasattr(model, "peft_config") else "full"
    return ScanReport(score=score, suspicious=score >= c.threshold, threshold=c.threshold,
                      target_label=best["label"] if best else None, candidates=rows[: c.top_k],
                      n_inputs=len(texts), mode=mode, tested=rows)
