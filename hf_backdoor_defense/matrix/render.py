"""Render ``matrix.json`` as the Markdown results page and a scatter plot of ASR - floor against CACC - floor.

Everything is computed from the payload alone (the per-cell records it holds), so a page can be rebuilt
at any time with ``python benchmarks/run_matrix.py --render``.

Example:
    >>> import json
    >>> from hf_backdoor_defense.matrix.render import render_results
    >>> payload = json.load(open("benchmarks/results/matrix.json"))                     # doctest: +SKIP
    >>> render_results(payload, "docs/results.md", "docs/figures/matrix_scatter.png")   # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import statistics
from pathlib import Path

from ..atomic import write_bytes_atomic, write_text_atomic
from ..reporting import markdown_table
from .config import CLEAN_FLOOR, CLEAN_LORA, DEFENSES, DETECTORS, FLOORS, parse_threat
from .runner import format_duration, summarise_cells

__all__ = ["PLANTED_ASR", "format_cell", "plot_scatter", "plot_study", "render_defense_snippet", "render_markdown",
           "render_results", "verdict"]

PLANTED_ASR = 0.90
"""A threat counts as planted when the undefended model (``none``) reaches this ASR; below it, no defense
of that column can be judged and the page says so."""
REMOVED_GAP = 0.05
"""A defense removes the backdoor when its ASR is within this of the clean-data floor's (paired mean)."""
KEPT_CACC = 0.02
"""... and keeps the task when its CACC is at most this below the undefended model's."""
_THREAT_COLOURS = ["tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:green", "tab:brown", "tab:pink"]
_DEFENSE_MARKERS = {"none": "o", "lora": "s", "musclelora": "D", "fine_mixing": "^", "e_pur": "v",
                    "fine_purifying": "P", "w2sdefense": "*", "w2s_lora": "d", "retune": "H", "onion": "<", "strip": ">", "rap": "h", "bki": "p", "cube": "8",
                    CLEAN_LORA: "X"}


def _n(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _pct(stats: dict, spread: bool = True, signed: bool = False) -> str:
    mean = f"{100 * stats['mean']:+.1f}" if signed else f"{100 * stats['mean']:.1f}"
    mean = mean.replace("-0.0", "0.0").replace("+0.0", "0.0")
    return f"{mean} ± {100 * stats['std']:.1f}" if spread else mean


def format_cell(entry: dict | None, expected_seeds: int, *, delta: bool = True) -> str:
    """``"CACC / ASR"`` in percent as mean ± std (the mean alone for one seed), then, with ``delta``, the
    paired ASR - floor on a second line; ``(n=k)`` when fewer than ``expected_seeds`` seeds finished."""
    if not entry:
        return "–"
    n = len(entry["seeds"])
    suffix = f" (n={n})" if n != expected_seeds else ""
    text = f"{_pct(entry['cacc'], n > 1)} / {_pct(entry['asr'], n > 1)}{suffix}"
    gap = entry.get("asr_minus_floor") or {}
    if delta and gap.get("n"):
        text += f"<br>Δ {_pct(gap, gap['n'] > 1, signed=True)}"
    return text


def _dataset_label(name: str) -> str:
    labels = {"rotten_tomatoes": "Rotten Tomatoes", "spamassassin": "SpamAssassin"}

    def one(part: str) -> str:
        corpus, _, collection = part.partition("@")
        label = labels.get(corpus, Path(corpus).name or corpus)
        return f"{label} (collection {collection})" if collection else label

    parts = name.split("->")
    return " → ".join(one(p.strip()) for p in parts) + (" (cross-domain)" if len(parts) > 1 else "")


def _threats(payload: dict, dataset: str) -> list[str]:
    grid = payload["grid"]
    return list((grid.get("threats_by_dataset") or {}).get(dataset, grid["threats"]))


def _table(payload: dict, dataset: str, summary: dict) -> list[str]:
    grid = payload["grid"]
    seeds = len(grid["seeds"])
    threats = _threats(payload, dataset)
    data = summary.get(dataset, {})
    rows = [[DEFENSES.get(defense, defense), *(format_cell(data.get(t, {}).get(defense), seeds) for t in threats)]
            for defense in grid["defenses"]]
    rows += [[f"*{FLOORS[floor]}*", *(format_cell(data.get(parse_threat(t).trigger, {}).get(floor), seeds,
                                                  delta=floor != CLEAN_FLOOR) for t in threats)]
             for floor in grid.get("floors", [CLEAN_FLOOR])]
    header = ["Defense"] + [parse_threat(t).label for t in threats]
    return markdown_table(header, rows, align="l" + "c" * len(threats)).split("\n")


def _unplanted(payload: dict, dataset: str, summary: dict) -> list[str]:
    """Threats of ``dataset`` whose undefended model stayed under :data:`PLANTED_ASR` (seed mean)."""
    out = []
    for t in _threats(payload, dataset):
        entry = summary.get(dataset, {}).get(t, {}).get("none")
        if entry and entry["asr"]["mean"] is not None and entry["asr"]["mean"] < PLANTED_ASR:
            out.append(f"{parse_threat(t).label} ({100 * entry['asr']['mean']:.1f} %)")
    return out


def verdict(base: dict, entry: dict) -> str:
    """Where a defense's ``entry`` stands against the undefended ``base`` of the same column (paired means):
    ``"removed"`` (ASR − floor ≤ :data:`REMOVED_GAP`), ``"removed, at a cost in clean accuracy"`` (CACC more
    than :data:`KEPT_CACC` below the undefended model), ``"lowered"`` (to at most half the undefended gap) or
    ``"left in place"``."""
    gap, loss = entry["asr_minus_floor"]["mean"], base["cacc"]["mean"] - entry["cacc"]["mean"]
    if gap <= REMOVED_GAP:
        return "removed" if loss <= KEPT_CACC else "removed, at a cost in clean accuracy"
    return "lowered" if gap <= base["asr_minus_floor"]["mean"] / 2 else "left in place"


def _judged(payload: dict, dataset: str, summary: dict):
    """``(threat, column, base)`` for every threat of ``dataset`` whose backdoor is planted (undefended ASR ≥
    :data:`PLANTED_ASR`) and paired with its floor."""
    for t in _threats(payload, dataset):
        column = summary.get(dataset, {}).get(t, {})
        base = column.get("none")
        if base and base["asr_minus_floor"].get("n") and base["asr"]["mean"] >= PLANTED_ASR:
            yield t, column, base


def _cacc_change(base: dict, entry: dict) -> str:
    return f"{100 * (entry['cacc']['mean'] - base['cacc']['mean']):+.1f}".replace("-0.0", "+0.0")


_VERDICT_RULE = (f"removed: Δ ≤ {100 * REMOVED_GAP:g} points; a cost: CACC more than {100 * KEPT_CACC:g} points "
                 "below the undefended full fine-tune; lowered: Δ at most half the undefended one")


def _verdicts(payload: dict, dataset: str, summary: dict) -> list[str]:
    """One line per planted threat of ``dataset``: the defenses grouped by :func:`verdict`."""
    lines = []
    for t, column, base in _judged(payload, dataset, summary):
        bins: dict[str, list[str]] = {"removed": [], "removed, at a cost in clean accuracy": [], "lowered": [],
                                      "left in place": []}
        for defense in payload["grid"]["defenses"]:
            entry = column.get(defense)
            if defense == "none" or not entry or not entry["asr_minus_floor"].get("n"):
                continue
            bins[verdict(base, entry)].append(f"{DEFENSES.get(defense, defense)} (Δ "
                                              f"{100 * entry['asr_minus_floor']['mean']:+.1f}, CACC "
                                              f"{_cacc_change(base, entry)})")
        found = "; ".join(f"{name}: {', '.join(items)}" for name, items in bins.items() if items)
        lines.append(f"- **{parse_threat(t).label}** (undefended Δ {100 * base['asr_minus_floor']['mean']:+.1f}): "
                     f"{found or 'no defense ran'}.")
    if lines:
        lines = [f"Verdicts (paired means; {_VERDICT_RULE}; CACC change against the undefended model):", "", *lines]
    return lines


def render_defense_snippet(payload: dict, defense: str) -> str:
    """One defense's rows of the matrix (every dataset and threat with a planted backdoor): the undefended
    model, the defense and its verdict, for the concept pages to include; the same figures as the results
    page, from the same payload."""
    summary = summarise_cells(payload["cells"])
    seeds = len(payload["grid"]["seeds"])
    rows = []
    for dataset in payload["grid"]["datasets"]:
        for t, column, base in _judged(payload, dataset, summary):
            entry = column.get(defense)
            if not entry or not entry["asr_minus_floor"].get("n"):
                continue
            rows.append([_dataset_label(dataset), parse_threat(t).label, format_cell(base, seeds),
                         format_cell(entry, seeds), _cacc_change(base, entry), verdict(base, entry)])
    name = DEFENSES.get(defense, defense)
    split = payload["settings"].get("eval_split", "test")
    if not rows:
        return f"*No cell of {name} has finished in the matrix yet ([results](../results.md)).*\n"
    table = markdown_table(["Data", "Threat", "undefended (full FT)", name, "CACC change", "verdict"], rows,
                           align="llcccl")
    facts = "".join(f"\n{line}\n" for line in _purifier_facts(payload["cells"], defense))
    return (f"{table}\n\nCACC / ASR in percent on the {split} split, mean ± std over the seeds that finished "
            f"((n=k) when fewer than {seeds}); Δ = ASR minus the clean-data floor, paired per seed; verdicts: "
            f"{_VERDICT_RULE}. Generated with the [results page](../results.md) from the same cells "
            f"({payload['n_finished']} of {payload['n_cells']} finished).\n{facts}")


def _purifier_facts(cells: list[dict], defense: str) -> list[str]:
    """What a purifier's cells record beside CACC and ASR: E-PUR's recall of the BadNets trigger words among
    the rows it reset, and the peak memory of the purification step (cells that measured it)."""
    mine = [c for c in cells if c["defense"] == defense]
    lines = []
    if defense == "e_pur":
        badnets = [(c["attack_config"]["triggers"], c["details"]["tokens_reset"]) for c in mine
                   if c["threat"].startswith("badnets") and (c.get("attack_config") or {}).get("triggers")
                   and (c.get("details") or {}).get("tokens_reset") is not None]
        if badnets:
            listed = min(len(reset) for _, reset in badnets)
            found = sum(t in reset[:listed] for triggers, reset in badnets for t in triggers)
            words = sum(len(triggers) for triggers, _ in badnets)
            complete = sum(all(t in reset[:listed] for t in triggers) for triggers, reset in badnets)
            lines.append(f"E-PUR's recall of the BadNets trigger words among the rows it reset (the first "
                         f"{listed} recorded per cell, the most drifted first): {found} of {words} words "
                         f"({100 * found / words:.0f} %); every trigger word found in {complete} of "
                         f"{_n(len(badnets), 'cell')}.")
    peaks = [c["details"]["peak_extra_x_model"] for c in mine
             if (c.get("details") or {}).get("peak_extra_x_model") is not None]
    if peaks:
        lines.append(f"Peak memory of the purification step, above the models it starts from: {statistics.mean(peaks):.2f}× the model on average, at most "
                     f"{max(peaks):.2f}× ({_n(len(peaks), 'cell')} measured).")
    return lines


def _cost_table(payload: dict) -> list[str]:
    per_defense: dict[str, list[dict]] = {}
    for cell in payload["cells"]:
        per_defense.setdefault(cell["defense"], []).append(cell)
    if not per_defense:
        return []
    rows = []
    for defense in [*payload["grid"]["defenses"], *payload["grid"].get("floors", [CLEAN_FLOOR])]:
        cells = per_defense.get(defense)
        if not cells:
            continue
        total = sum(c["seconds"] for c in cells) / len(cells)
        own = sum(c.get("defense_seconds", c["seconds"]) for c in cells) / len(cells)
        rows.append([FLOORS.get(defense) or DEFENSES.get(defense, defense), len(cells), f"{total:.0f} s",
                     f"{own:.0f} s"])
    header = ["Defense", "cells", "mean wall time per cell", "of which the defense itself"]
    return markdown_table(header, rows, align="lrrr").split("\n")


def _hardware_line(hw: dict | None) -> str:
    if not hw:
        return "no cell has run yet"
    return (f"{hw.get('cpu_model')}, {hw.get('cpus_usable')} usable of {hw.get('cpu_count')} logical CPUs, "
            f"{_n(hw.get('torch_threads') or 0, 'torch thread')}, torch {hw.get('torch')}, transformers "
            f"{hw.get('transformers')}, Python {hw.get('python')}, CUDA {'yes' if hw.get('cuda') else 'no'}")


def _wall_line(payload: dict) -> str:
    runs = payload.get("invocations") or []
    if not runs:
        return "- Wall time: not run yet."
    cells = format_duration(payload.get("cell_seconds_total"))
    if payload.get("rendered_from_cache"):
        return (f"- Wall time: {format_duration(payload.get('wall_seconds'))} over the "
                f"{_n(len(runs), 'invocation')} recorded (matrix_invocations.json) that finished cells of this grid (with "
                f"any cells they ran outside it); the finished cells' own wall times add up to {cells}.")
    return (f"- Wall time: {format_duration(payload.get('wall_seconds'))} over {_n(len(runs), 'invocation')} "
            f"of this grid that ran cells (cells reused from runs of a smaller grid, e.g. fewer seeds, are not in "
            f"it); the finished cells' own wall times add up to {cells}.")


def _busy_line(payload: dict) -> str | None:
    busy = [c for c in payload["cells"] if (c.get("machine") or {}).get("busy")]
    if not busy:
        return None
    return (f"- **{len(busy)} of {len(payload['cells'])} cells ran on a busy machine** (another torch process, or "
            "other processes using more than half a CPU): their wall times are not idle figures (see `machine` in their "
            "records).")


def render_markdown(payload: dict, *, figure: str | None = None, title: str | None = None,
                    extra: list[str] | None = None) -> str:
    """The results page: one table per dataset, the cost table, settings, hardware, command, missing cells.

    ``figure`` is the scatter plot's path relative to the page (left out when ``None``); ``extra`` are
    Markdown lines appended before the provenance (e.g. the validation studies behind the settings).
    """
    grid, settings = payload["grid"], payload["settings"]
    summary = summarise_cells(payload["cells"])
    seeds = len(grid["seeds"])
    smoke = payload.get("preset") == "quick"
    split = settings.get("eval_split", "test")
    out = [f"# {title or 'Results: defenses × attacks matrix'}", ""]
    if smoke:
        out += ['!!! warning "Smoke run"',
                "    Produced by `--preset quick`: a few dozen examples and one epoch. It proves the pipeline "
                "runs; the numbers mean nothing.", ""]
    spread = ("mean ± std over seeds" if seeds > 1
              else "one seed per cell, so no spread is shown and differences of a few points may be noise")
    out += [
        f"CACC / ASR in percent on the {split} split, {spread} "
        f"({seeds} seed{'s' if seeds != 1 else ''} requested; `(n=k)` marks a cell where only k finished). "
        "The second line of a cell, **Δ**, is ASR minus the clean-data floor's ASR, paired per seed (the floor "
        "is a full fine-tune on the same training sentences without poison, scored on the same triggered "
        f"sentences): 0 means no backdoor left. {payload['n_finished']} of {payload['n_cells']} cells finished.",
        "",
        f"Every model starts from `{settings['model'] or 'all-MiniLM-L6-v2'}` with a new classification head "
        f"(encoder setup `{settings.get('pooling', 'cls')}`). Poisoned training: {settings['train_size']:,} "
        f"training examples per seed, {100 * settings['poison_rate']:g} % poisoned, target label "
        f"{settings['target_label']}, {_n(settings['epochs'], 'epoch')}, max length {settings['max_length']}, "
        f"batch {settings['batch_size']}. Evaluation: up to {settings['test_size']:,} examples for CACC; ASR on "
        f"the triggered non-target ones. The trusted clean set ({settings['clean_size']} examples per seed from "
        "the validation split, never from the training set) feeds the post-hoc defenses; MuScleLoRA's reference "
        f"set is its first {settings['reference_size']} examples.",
        "",
    ]
    if any(c.get("defense") in DETECTORS for c in payload["cells"]):
        out += ["STRIP and RAP (baselines) reject inputs instead of changing the model: a rejected clean input "
                "counts as wrong and a rejected triggered input as a failed attack, so their CACC and ASR stay "
                "fractions of all inputs. Their ASR can fall below the floor's: a clean model still sends some "
                "triggered inputs to the target by mistake, while a detector turns inputs away "
                "(docs/concepts/baselines.md).", ""]
    if settings.get("trigger_room") is not None:
        out += [f"Before poisoning, every text is cut to the whole words that fit in the max length minus "
                f"{settings['trigger_room']} tokens (and the special tokens), so every inserted trigger lies "
                "inside what the model reads (SpamAssassin mails are much longer than the window).", ""]
    if not payload["cells"]:
        out += ['!!! note "Not run yet"',
                "    No cell of this matrix has finished. The tables and the figure appear here once "
                "the command under *Provenance* has run.", ""]
    for dataset in grid["datasets"]:
        out += [f"## {_dataset_label(dataset)}", "", *_table(payload, dataset, summary), ""]
        verdicts = _verdicts(payload, dataset, summary)
        if verdicts:
            out += [*verdicts, ""]
        weak = _unplanted(payload, dataset, summary)
        if weak:
            out += [f"Undefended ASR under {100 * PLANTED_ASR:.0f} % (the backdoor is not fully planted, so "
                    f"defenses cannot be judged there): {', '.join(weak)}.", ""]
    if figure:
        out += ["## ASR above the floor against the change in clean accuracy", "",
                f"![ASR - floor against CACC - floor, one marker per defense, colour per threat]({figure})", "",
                "Paired per seed with the clean-data floor, mean with ± std bars; one panel per dataset. A defense "
                "that works sits near x = 0 (no backdoor left) and y = 0 (no clean accuracy lost).", ""]
    out += ["## How the cells are built", "",
            "- **none (full FT)**: the backdoored model: full fine-tune on the poisoned set. Fine-mixing, E-PUR, "
            "Fine-purifying and W2SDefense start from this same model (trained once per dataset, threat and "
            "seed).",
            f"- **LoRA** (query/value, r=8) and **MuScleLoRA** (adapter + gradient alignment on the reference "
            f"set) train on the poisoned set at learning rate {settings['adapter_lr']:g}; full fine-tuning at "
            f"{settings['full_ft_lr']:g}. **clean-data LoRA** is the same LoRA on the clean set: the CACC the "
            "adapter defenses should keep.",
            f"- **Fine-mixing** (random mask, {100 * settings['fm_ratio']:g} % of the fine-tuned dimensions reset), "
            f"**E-PUR** ({settings['epur_tokens']} embedding rows reset) and **Fine-purifying** "
            f"({100 * settings['fp_ratio']:g} % of the dimensions reset, empirical Fisher on the clean set) are "
            f"each followed by {_n(settings['purify_epochs'], 'epoch')} of clean fine-tuning (lr "
            f"{settings['purify_lr']:g}); the classification head is kept.",
            f"- **W2SDefense**: LoRA (r={settings['w2s_lora_r']}) + head on the backdoored model, "
            f"{_n(settings['w2s_epochs'], 'epoch')} on the clean set with the W2SDefense loss (word preset for "
            f"BadNets, sentence preset for AddSent) and a teacher fine-tuned on the same clean set "
            f"({_n(settings['teacher_epochs'], 'epoch')}). {payload['notes']['w2sdefense']}",
            f"- **clean-data floor**: {payload['notes']['floor'].split(': ', 1)[1]}",
            f"- **Label modes**: {payload['notes']['label_modes'].split(': ', 1)[1]} BadNets ×4 inserts four "
            "distinct trigger words in every poisoned training sentence and every triggered test sentence.",
            "- **Cross-domain** (`a → b`): the poisoned training set comes from `a`; the trusted clean set (from "
            "`b`'s training split), the floors' scoring and the evaluation from `b`.",
            *([f"- **Gradient Control** (`+gc` threats): the poisoned LoRA adapter is trained by the Gradient "
               "Control attacker; on such a threat LoRA is that published adapter and the purifiers act on it in "
               "adapter mode (their clean fine-tune at the adapter learning rate). **retune** is the user's plain "
               f"re-tune of the poisoned adapter on the trusted clean set ({_n(settings['retune_epochs'], 'epoch')})."]
              if any(c["defense"] == "retune" or (c["defense"] not in FLOORS and parse_threat(c["threat"]).adapter_attack)
                     for c in payload["cells"]) else []),
            ""]
    cost = _cost_table(payload)
    if cost:
        out += ["## Cost", "",
                "Wall time per cell; the first column includes shared models a cell trained (the backdoored "
                "model, the clean model, the teacher), the second only the defense's own work and the evaluation.",
                "", *cost, ""]
    out += list(extra or [])
    out += ["## Provenance", "",
            f"- Hardware: {_hardware_line(payload.get('hardware'))}.",
            _wall_line(payload),
            f"- Preset: `{payload.get('preset')}`; all settings and every cell's record are in the JSON file.",
            "- Command (every figure in the tables above comes from it):", "",
            "```bash", payload.get("command") or "(not recorded)", "```", ""]
    busy = _busy_line(payload)
    if busy:
        out += [busy, ""]
    variants = payload.get("cell_hardware_variants") or []
    if len(variants) > 1:
        out += [f"- The cells ran under {len(variants)} different hardware/thread settings (see the JSON file).",
                ""]
    missing = payload.get("missing") or []
    if missing and not payload["cells"]:
        out += [f"All {len(missing)} cells are missing.", ""]
    elif missing:
        names = [m["name"] for m in missing]
        shown = ", ".join(f"`{n}`" for n in names[:40]) + (f" and {len(names) - 40} more" if len(names) > 40 else "")
        out += [f"**Missing cells ({len(missing)}):** {shown}. Run the command again to compute them.", ""]
    else:
        out += ["No cell is missing.", ""]
    return "\n".join(out)


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - matplotlib is the optional `plot` extra
        raise ImportError("the scatter plot needs matplotlib: pip install 'hf-backdoor-defense[plot]'") from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_png(plt, fig, path: str | os.PathLike) -> Path:
    """Lay ``fig`` out, write it as a PNG atomically and close it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def plot_scatter(payload: dict, path: str | os.PathLike) -> Path | None:
    """ASR - floor against CACC - floor (paired per seed), one panel per dataset; ``None`` when nothing is paired."""
    summary = summarise_cells(payload["cells"])
    datasets = [d for d in payload["grid"]["datasets"]
                if any(e.get("asr_minus_floor", {}).get("n") for t, es in summary.get(d, {}).items()
                       for name, e in es.items() if name != CLEAN_FLOOR)]
    if not datasets:
        return None
    from matplotlib.lines import Line2D

    plt = _pyplot()
    threats = list(dict.fromkeys(t for d in datasets for t in _threats(payload, d)))
    colours = {t: _THREAT_COLOURS[i % len(_THREAT_COLOURS)] for i, t in enumerate(threats)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for threat in _threats(payload, dataset):
            entries = dict(summary[dataset].get(threat, {}))
            clean_lora = summary[dataset].get(parse_threat(threat).trigger, {}).get(CLEAN_LORA)
            if clean_lora:
                entries[CLEAN_LORA] = clean_lora
            for defense, entry in entries.items():
                gap, drop = entry.get("asr_minus_floor") or {}, entry.get("cacc_minus_floor") or {}
                if not gap.get("n"):
                    continue
                ax.errorbar(100 * gap["mean"], 100 * drop["mean"], xerr=100 * gap["std"], yerr=100 * drop["std"],
                            marker=_DEFENSE_MARKERS.get(defense, "o"),
                            markersize=8 if defense != "w2sdefense" else 11, color=colours[threat],
                            linestyle="none", elinewidth=0.8, capsize=2, alpha=0.9)
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_title(_dataset_label(dataset))
        ax.set_xlabel("ASR − floor (points)")
        ax.set_ylabel("CACC − floor (points)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=_DEFENSE_MARKERS.get(d, "o"), color="dimgray", linestyle="none",
                      label=DEFENSES.get(d, d)) for d in payload["grid"]["defenses"]]
    if CLEAN_LORA in payload["grid"].get("floors", []):
        handles.append(Line2D([], [], marker=_DEFENSE_MARKERS[CLEAN_LORA], color="dimgray", linestyle="none",
                              label=FLOORS[CLEAN_LORA]))
    handles += [Line2D([], [], marker="o", color=colours[t], linestyle="none", label=parse_threat(t).label)
                for t in threats]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    return _save_png(plt, fig, path)


def plot_study(payload: dict, path: str | os.PathLike) -> Path | None:
    """A study's trade-off: ASR − floor against CACC − floor for every variant and defense, one panel per
    (dataset, threat), the variants numbered in the order of the study (legend beside); ``None`` when no
    cell is paired with its floor yet."""
    panels = []  # (dataset, threat, [(variant index, defense, entry)])
    labels = list(payload["variants"])
    for dataset in payload["grid"]["datasets"]:
        for threat in payload["grid"]["threats"]:
            points = [(i, defense, entry) for i, label in enumerate(labels)
                      for defense, entry in payload["variants"][label]["summary"].get(dataset, {}).get(threat, {}).items()
                      if defense not in FLOORS and (entry.get("asr_minus_floor") or {}).get("n")]
            if points:
                panels.append((dataset, threat, points))
    if not panels:
        return None
    from matplotlib.lines import Line2D

    plt = _pyplot()
    defenses = list(dict.fromkeys(d for _, _, points in panels for _, d, _ in points))
    colours = {d: _THREAT_COLOURS[i % len(_THREAT_COLOURS)] for i, d in enumerate(defenses)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    for ax, (dataset, threat, points) in zip(axes[0], panels):
        for i, defense, entry in points:
            x, y = 100 * entry["asr_minus_floor"]["mean"], 100 * entry["cacc_minus_floor"]["mean"]
            ax.plot(x, y, marker=_DEFENSE_MARKERS.get(defense, "o"), color=colours[defense], markersize=8,
                    linestyle="none", alpha=0.9)
            ax.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_title(f"{_dataset_label(dataset)}, {parse_threat(threat).label}", fontsize="medium")
        ax.set_xlabel("ASR − floor (points)")
        ax.set_ylabel("CACC − floor (points)")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=_DEFENSE_MARKERS.get(d, "o"), color=colours[d], linestyle="none",
                      label=DEFENSES.get(d, d)) for d in defenses]
    handles += [Line2D([], [], linestyle="none", label=f"{i + 1}: {label}") for i, label in enumerate(labels)]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize="small", frameon=False,
               ncol=2)
    return _save_png(plt, fig, path)


def render_results(payload: dict, markdown_path: str | os.PathLike, figure_path: str | os.PathLike, *,
                   title: str | None = None, extra: list[str] | None = None,
                   snippet_dir: str | os.PathLike | None = None) -> dict:
    """Write the scatter PNG (when a cell has finished) and the Markdown page that links it; with
    ``snippet_dir``, also one ``matrix_<defense>.md`` per defense (:func:`render_defense_snippet`) that the
    concept pages include.

    Returns ``{"markdown": path, "figure": path or None, "snippets": [paths]}``.
    """
    markdown_path, figure_path = Path(markdown_path), Path(figure_path)
    figure = plot_scatter(payload, figure_path)
    relative = os.path.relpath(figure_path, markdown_path.parent) if figure else None
    text = render_markdown(payload, figure=relative.replace(os.sep, "/") if relative else None, title=title,
                           extra=extra)
    write_text_atomic(markdown_path, text)
    snippets = []
    if snippet_dir is not None:
        for defense in payload["grid"]["defenses"]:
            if defense != "none":
                path = Path(snippet_dir) / f"matrix_{defense}.md"
                write_text_atomic(path, render_defense_snippet(payload, defense))
                snippets.append(path)
    return {"markdown": markdown_path, "figure": figure, "snippets": snippets}
