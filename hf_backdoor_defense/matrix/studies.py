"""Named validation studies: settings variants run through the matrix's own cells, scored on validation only.

A study asks one question ("which encoder setup?", "which budget?") and answers it with a few *variants*
(``{label: settings overrides}``) of one grid. Every variant is an ordinary matrix run with
``eval_split="validation"`` forced, so its cells are cached by hash exactly like the matrix's, the shared
models (backdoored suspects, clean models, teachers) are reused by later test-split runs of the same
settings, and the test split is never read. :func:`run_study` writes one JSON file per study;
:func:`render_study` turns it into the Markdown table shown on the page that uses the choice.

Example:
    >>> from hf_backdoor_defense.matrix.studies import STUDIES, run_study, render_study
    >>> payload = run_study(STUDIES["encoder"], results_dir="benchmarks/results/studies",
    ...                     workdir="/tmp/matrix-work")                         # doctest: +SKIP
    >>> print("\n".join(render_study(payload)))                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from .config import CLEAN_FLOOR, DEFENSES, FLOORS, PRESETS, MatrixGrid, MatrixSettings, parse_threat
from .runner import cell_status, format_duration, run_matrix, summarise_cells

__all__ = ["STUDIES", "Study", "missing_cells", "render_studies_section", "render_study", "run_study", "study_settings"]


@dataclass
class Study:
    """One question answered on validation by a few settings variants of one grid.

    Args:
        name: Short name (the JSON file is ``<name>.json``).
        question: What the study decides, one sentence (the table's caption).
        grid: :class:`~hf_backdoor_defense.matrix.config.MatrixGrid` fields.
        variants: ``{label: settings overrides}``, applied on top of ``base``.
        base: Preset whose settings the variants start from (``eval_split`` is always ``"validation"``).
    """

    name: str
    question: str
    grid: dict
    variants: dict[str, dict]
    base: str = "v2"


# The purifiers' ranking as the theory and the library's defaults have it: the ratio counts the weights the
# fine-tune moved, the embeddings stay out of Fine-purifying's ranking, the Fisher is per example.
_THEORY_RANKING = {"fm_ratio_of": "moved", "fp_ratio_of": "moved", "fp_embeddings": "exclude",
                   "fp_estimator": "example"}

# W2SDefense's schedule in its authors' code (docs/concepts/w2sdefense.md), on 2,000 unused training rows.
_W2S_AUTHORS = {"w2s_clean_source": "unused_train", "w2s_clean_size": 2000, "w2s_batch_size": 32,
                "w2s_weight_decay": 0.01, "w2s_max_grad_norm": 0.0, "w2s_best_dev": True, "w2s_epochs": 5.0,
                "w2s_lr": 2e-4}

STUDIES: dict[str, Study] = {
    study.name: study
    for study in [
        Study(
            name="encoder",
            question="How should the classifier read all-MiniLM-L6-v2, whose pooler was never trained? Clean "
                     "full fine-tune and clean LoRA on Rotten Tomatoes, 2,000 sentences x 3 epochs.",
            grid={"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty"], "defenses": [],
                  "floors": ["clean_floor", "clean_lora"], "seeds": [0]},
            variants={"[CLS] + untrained pooler": {"pooling": "cls", "train_size": 2000},
                      "pooler trained as head": {"pooling": "pooler_head", "train_size": 2000},
                      "mean pooling (chosen)": {"pooling": "mean", "train_size": 2000}},
        ),
        Study(
            name="reference",
            question="What does the backbone reach on the whole training split (the clean reference every "
                     "budget is held against)?",
            grid={"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty"], "defenses": [],
                  "floors": ["clean_floor"], "seeds": [0]},
            variants={"whole training split, 3 epochs": {"train_size": 1_000_000}},
        ),
        Study(
            name="clean-budget",
            question="Which training budget brings the clean full fine-tune within 2 points of the full-data "
                     "reference, at the lowest cost?",
            grid={"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty"], "defenses": [],
                  "floors": ["clean_floor"], "seeds": [0]},
            variants={"2,000 x 3 epochs, lr 1e-4": {"train_size": 2000},
                      "2,000 x 3 epochs, lr 5e-5": {"train_size": 2000, "full_ft_lr": 5e-5},
                      "2,000 x 3 epochs, lr 2e-4": {"train_size": 2000, "full_ft_lr": 2e-4},
                      "2,000 x 4 epochs, lr 1e-4": {"train_size": 2000, "epochs": 4.0},
                      "3,000 x 3 epochs, lr 1e-4 (chosen)": {"train_size": 3000}},
        ),
        Study(
            name="budget",
            question="Does the v2 budget learn the task (clean CACC near the full-data reference) and plant "
                     "every threat (undefended ASR >= 90 %)?",
            grid={"datasets": ["rotten_tomatoes", "spamassassin", "spamassassin@1->spamassassin@2"],
                  "threats": ["badnets-dirty", "badnets4-clean", "addsent-dirty", "addsent-mixed"],
                  "threats_by_dataset": {"spamassassin@1->spamassassin@2": ["badnets-dirty"]},
                  "defenses": ["none"], "floors": ["clean_floor"], "seeds": [0]},
            variants={"3,000 sentences x 3 epochs": {}},
        ),
        Study(
            name="musclelora",
            question="Which MuScleLoRA setting removes the backdoor at the v2 budget: the task head frozen as the "
                     "authors keep it or trained, the multi-scale part initialised at zero or as the authors do, "
                     "the encoder preset (project, then mix) or pure projection, one learning rate or a smaller "
                     "one for the multi-scale factors, or the authors' own learning rate and epochs? Rotten "
                     "Tomatoes, 3,000 sentences x 3 epochs, lr 2e-3 unless the variant says otherwise.",
            grid={"datasets": ["rotten_tomatoes"],
                  "threats": ["badnets-dirty", "badnets4-clean", "addsent-dirty", "addsent-mixed"],
                  "defenses": ["musclelora"], "floors": ["clean_floor", "clean_lora"], "seeds": [0]},
            variants={"head trained (before)": {"musclelora_head": "trainable"},
                      "head frozen": {},
                      "head frozen, paper init": {"musclelora_init": "paper"},
                      "head frozen, paper init, multi-scale lr 2e-4": {"musclelora_init": "paper",
                                                                      "musclelora_multiscale_lr": 2e-4},
                      "head frozen, pure projection": {"musclelora_alignment": "llm"},
                      "the authors' regime: head frozen, paper init, lr 2e-5 x 10 epochs, best dev": {
                          "musclelora_init": "paper", "musclelora_lr": 2e-5, "musclelora_epochs": 10.0,
                          "musclelora_best_dev": True},
                      "head frozen, global gate": {"musclelora_gate": "global"},
                      "head frozen, 384 reference sentences": {"clean_size": 384, "reference_size": 384},
                      "head frozen, [CLS] + pooler, the multi-scale branch on the pooler (the authors' BERT "
                      "placement)": {"pooling": "pooler_head"}},
        ),
        Study(
            name="purification",
            question="Which ranking and ratio should Fine-mixing and Fine-purifying use at the v2 budget: the first "
                     "ranking (the ratio over all weights, embeddings ranked, batch Fisher) or the theory's (the "
                     "ratio over the weights the fine-tune moved, embeddings left out, per-example Fisher), at which "
                     "ratio, with which curvature exponent, does a stronger clean fine-tune help, and what do 64 or 128 "
                     "trusted sentences leave? Rotten Tomatoes, the backdoored full fine-tune of the v2 matrix, 256 "
                     "trusted sentences unless the variant says otherwise (with fewer, the validation rows scored "
                     "start earlier, so those variants' rows are scored on partly other sentences).",
            grid={"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty", "addsent-dirty"],
                  "defenses": ["none", "fine_mixing", "fine_purifying"], "floors": ["clean_floor"], "seeds": [0]},
            variants={"first ranking, Fine-mixing 0.5, Fine-purifying 0.3 (v2)": {},
                      **{f"theory's ranking, ratio {r:g}": {**_THEORY_RANKING, "fm_ratio": r, "fp_ratio": r}
                         for r in (0.3, 0.5, 0.7, 0.9)},
                      "theory's ranking, ratio 0.5, alpha 0.5": {**_THEORY_RANKING, "fm_ratio": 0.5, "fp_ratio": 0.5,
                                                                 "fp_alpha": 0.5},
                      "theory's ranking, ratio 0.5, clean fine-tune lr 1e-4": {
                          **_THEORY_RANKING, "fm_ratio": 0.5, "fp_ratio": 0.5, "purify_lr": 1e-4},
                      # fewer trusted sentences (the papers' defender has little clean data); the evaluation set
                      # is then drawn from a slightly larger rest of the validation split
                      **{f"first ranking, {n} trusted sentences": {"clean_size": n, "reference_size": min(n, 96)}
                         for n in (64, 128)}},
        ),
        Study(
            name="w2sdefense",
            question="Does W2SDefense beat its own baseline (the same LoRA on the same clean data, no teacher) once "
                     "it runs in its authors' regime: a clean set of 2,000 training rows the poisoned sample did not "
                     "draw (the trusted set becomes dev), a teacher trained on them, LoRA alpha = r, batch 32, weight "
                     "decay 0.01, no clipping, 5 epochs at lr 2e-4, best dev epoch? Do larger distillation weights "
                     "or a student stronger than its teacher (weak-to-strong: a backdoored SmolLM2-135M taught by a "
                     "clean MiniLM) change the answer? Rotten Tomatoes; MiniLM teacher and student unless the "
                     "variant says otherwise.",
            grid={"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty", "addsent-dirty"],
                  "defenses": ["none", "w2sdefense", "w2s_lora"], "floors": ["clean_floor"], "seeds": [0]},
            variants={"v2 (trusted set of 256, r 8)": {},
                      **{f"authors' regime, r {r}": {**_W2S_AUTHORS, "w2s_lora_r": r, "w2s_lora_alpha": float(r)}
                         for r in (64, 128)},
                      "authors' regime, r 64, the authors' feature term": {
                          **_W2S_AUTHORS, "w2s_lora_r": 64, "w2s_lora_alpha": 64.0,
                          "w2s_feature_alignment": "authors"},
                      "authors' regime, r 64, distillation weighted up (CE 1, KL 1, feature 0.01)": {
                          **_W2S_AUTHORS, "w2s_lora_r": 64, "w2s_lora_alpha": 64.0, "w2s_ce_weight": 1.0,
                          "w2s_kd_weight": 1.0, "w2s_feature_weight": 0.01},
                      "weak-to-strong: SmolLM2-135M student (its own last-token head), MiniLM teacher, authors' "
                      "regime, r 64": {**_W2S_AUTHORS, "model": "smollm2", "pooling": "cls",
                                       "teacher_model": "minilm", "w2s_lora_r": 64, "w2s_lora_alpha": 64.0}},
        ),
        Study(
            name="detectors",
            question="Which settings should the inference-time detectors use at the v2 budget: their reference "
                     "code's defaults (STRIP 5 copies, RAP loss weight 1, both rejecting 1 % of clean inputs), RAP "
                     "with the larger loss weight its authors advise when the threshold ends at or below zero, or "
                     "STRIP with more copies at the 3 % false rejection of the text STRIP paper? Rotten Tomatoes, "
                     "the backdoored full fine-tune of the v2 matrix, 256 trusted sentences.",
            grid={"datasets": ["rotten_tomatoes"], "threats": ["badnets-dirty", "addsent-dirty"],
                  "defenses": ["none", "strip", "rap"], "floors": ["clean_floor"], "seeds": [0]},
            variants={"reference defaults": {"rap_scale": 1.0},
                      "RAP loss weight 10 (chosen)": {"rap_scale": 10.0},
                      "STRIP 20 copies, FRR 3 %": {"rap_scale": 1.0, "strip_copies": 20, "strip_frr": 0.03}},
        ),
    ]
}
"""The studies behind the ``v2`` preset; ``benchmarks/studies.py NAME`` runs one."""


def study_settings(study: Study, label: str) -> MatrixSettings:
    """The settings of one variant: the base preset's, overridden by the variant's, on validation."""
    if label not in study.variants:
        raise ValueError(f"study {study.name!r} has no variant {label!r}; variants: {list(study.variants)}.")
    base = PRESETS[study.base][1]
    return MatrixSettings(**{**base, **study.variants[label], "eval_split": "validation"})


def run_study(study: Study, *, results_dir: str | os.PathLike, workdir: str | os.PathLike,
              variants: list[str] | None = None, command: str | None = None, threads: int | None = None,
              dry_run: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the variants of ``study`` (all, or the labels given) and write ``<results_dir>/<name>.json``.

    Every variant's cells land in ``<results_dir>/matrix_cells`` (cached by hash, so an interrupted study
    resumes); the study file collects, per variant, the settings and the summary of its cells.
    """
    results_dir = Path(results_dir)
    grid = MatrixGrid(**study.grid)
    labels = variants or list(study.variants)
    for label in labels:
        study_settings(study, label)  # bad labels fail before anything runs
    out: dict[str, Any] = {"study": study.name, "question": study.question, "grid": grid.to_dict(),
                           "command": command, "variants": {}}
    for label in labels:
        settings = study_settings(study, label)
        log(f"[{study.name}] {label}")
        payload = run_matrix(settings, grid, results_dir=results_dir, workdir=workdir,
                             output=results_dir / f".{study.name}-variant.json", command=command,
                             preset=f"study:{study.name}", dry_run=dry_run, progress=progress, threads=threads,
                             log=log)
        if dry_run:
            continue
        out["variants"][label] = {"settings": settings.to_dict(), "overrides": study.variants[label],
                                  "n_cells": payload["n_cells"], "n_finished": payload["n_finished"],
                                  "wall_seconds": payload["wall_seconds"],
                                  "cell_seconds_total": payload["cell_seconds_total"],
                                  "cells": payload["cells"], "summary": summarise_cells(payload["cells"])}
        (results_dir / f".{study.name}-variant.json").unlink(missing_ok=True)
    if not dry_run:
        merged = {**(_read(results_dir / f"{study.name}.json").get("variants") or {}), **out["variants"]}
        out["variants"] = {k: merged[k] for k in study.variants if k in merged}  # the variants run before stay
        write_json_atomic(results_dir / f"{study.name}.json", out)
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pct(stats: dict | None, signed: bool = False) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    value = 100 * stats["mean"]
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def render_study(payload: dict) -> list[str]:
    """Markdown lines: the question, then one row per (variant, dataset, cell kind) and one column per threat
    with ``CACC / ASR`` and, for poisoned cells, ASR - floor; then the command and the wall time."""
    grid = payload["grid"]
    lines = [f"**{payload['question']}** Validation split (never test), seed(s) "
             f"{', '.join(map(str, grid['seeds']))}; CACC / ASR in %, Δ = ASR − clean-data floor.", ""]
    columns = list(dict.fromkeys([*grid["threats"], *(t for ts in (grid.get("threats_by_dataset") or {}).values()
                                                     for t in ts)]))
    lines += ["| variant | dataset | model | " + " | ".join(parse_threat(t).label for t in columns) + " |",
              "|---|---|---|" + "---:|" * len(columns)]
    for label, variant in payload["variants"].items():
        summary = variant["summary"]
        for dataset, by_threat in summary.items():
            kinds = [*grid.get("floors", []), *grid.get("defenses", [])]
            for kind in kinds:
                row = []
                for threat in columns:
                    key = parse_threat(threat).trigger if kind in FLOORS else threat
                    entry = by_threat.get(key, {}).get(kind)
                    if not entry:
                        row.append("–")
                        continue
                    text = f"{_pct(entry['cacc'])} / {_pct(entry['asr'])}"
                    if kind != CLEAN_FLOOR and (entry.get("asr_minus_floor") or {}).get("n"):
                        text += f" (Δ {_pct(entry['asr_minus_floor'], signed=True)})"
                    row.append(text)
                if all(cell == "–" for cell in row):
                    continue
                name = FLOORS.get(kind) or DEFENSES.get(kind, kind)
                lines.append(f"| {label} | {dataset} | {name} | " + " | ".join(row) + " |")
    seconds = sum(v["cell_seconds_total"] for v in payload["variants"].values())
    lines += ["", f"Command: `{payload.get('command') or '(not recorded)'}`; the cells' wall times add up to "
              f"{format_duration(seconds)} over {len(payload['variants'])} variant(s).", ""]
    return lines


def missing_cells(study: Study, results_dir: str | os.PathLike) -> dict[str, int]:
    """``{variant: cells not yet cached}`` (for ``--dry_run`` and the tests)."""
    grid = MatrixGrid(**study.grid)
    return {label: sum(r is None for _, _, r in cell_status(grid, study_settings(study, label), results_dir))
            for label in study.variants}


def render_studies_section(results_dir: str | os.PathLike, names: list[str], *,
                           heading: str = "## How the regime was chosen (validation split)",
                           intro: str | None = None) -> list[str]:
    """The Markdown section of the studies ``names`` that have a JSON file in ``results_dir`` (``[]`` if none)."""
    found = [(n, _read(Path(results_dir) / f"{n}.json")) for n in names]
    found = [(n, p) for n, p in found if p.get("variants")]
    if not found:
        return []
    out = [heading, ""] + ([intro, ""] if intro else [])
    for name, payload in found:
        out += [f"### Study `{name}`", "", *render_study(payload)]
    return out
