"""Render ``matrix.json`` as the Markdown results page and a CACC-vs-ASR scatter plot.

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
from pathlib import Path

from ..atomic import write_bytes_atomic, write_text_atomic
from .config import ATTACKS, CLEAN_FLOOR, DEFENSES
from .runner import format_duration, summarise_cells

__all__ = ["format_cell", "plot_scatter", "render_markdown", "render_results"]

_ATTACK_COLOURS = {"badnets": "tab:red", "addsent": "tab:blue"}
_DEFENSE_MARKERS = {"none": "o", "lora": "s", "musclelora": "D", "fine_mixing": "^", "e_pur": "v",
                    "fine_purifying": "P", "w2sdefense": "*", CLEAN_FLOOR: "X"}
_FLOOR_LABEL = "clean-data floor"


def _n(count: float, noun: str) -> str:
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


def _pct(stats: dict, spread: bool = True) -> str:
    mean = f"{100 * stats['mean']:.1f}"
    return f"{mean} ± {100 * stats['std']:.1f}" if spread else mean


def format_cell(entry: dict | None, expected_seeds: int) -> str:
    """``"CACC / ASR"`` in percent as mean ± std (the mean alone for a single seed, which has no spread), with
    ``(n=k)`` when fewer than ``expected_seeds`` seeds finished."""
    if not entry:
        return "–"
    n = len(entry["seeds"])
    suffix = f" (n={n})" if n != expected_seeds else ""
    return f"{_pct(entry['cacc'], n > 1)} / {_pct(entry['asr'], n > 1)}{suffix}"


def _dataset_label(name: str) -> str:
    return {"rotten_tomatoes": "Rotten Tomatoes", "spamassassin": "SpamAssassin"}.get(name, Path(name).name or name)


def _table(payload: dict, dataset: str, summary: dict) -> list[str]:
    grid = payload["grid"]
    seeds = len(grid["seeds"])
    columns = [(a, m) for a in grid["attacks"] for m in grid["label_modes"]]
    header = ["Defense"] + [f"{ATTACKS.get(a, a)}, {m}-label" for a, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(columns)) + "|"]
    data = summary.get(dataset, {})
    for defense in grid["defenses"]:
        row = [DEFENSES.get(defense, defense)]
        row += [format_cell(data.get(f"{a}/{m}", {}).get(defense), seeds) for a, m in columns]
        lines.append("| " + " | ".join(row) + " |")
    floor = [format_cell(data.get(f"{a}/floor", {}).get(CLEAN_FLOOR), seeds) for a, _ in columns]
    lines.append("| " + " | ".join([f"*{_FLOOR_LABEL}*"] + floor) + " |")
    return lines


def _cost_table(payload: dict) -> list[str]:
    per_defense: dict[str, list[dict]] = {}
    for cell in payload["cells"]:
        per_defense.setdefault(cell["defense"], []).append(cell)
    if not per_defense:
        return []
    lines = ["| Defense | cells | mean wall time per cell | of which the defense itself |", "|---|---:|---:|---:|"]
    for defense in [*payload["grid"]["defenses"], CLEAN_FLOOR]:
        cells = per_defense.get(defense)
        if not cells:
            continue
        total = sum(c["seconds"] for c in cells) / len(cells)
        own = sum(c.get("defense_seconds", c["seconds"]) for c in cells) / len(cells)
        label = _FLOOR_LABEL if defense == CLEAN_FLOOR else DEFENSES.get(defense, defense)
        lines.append(f"| {label} | {len(cells)} | {total:.0f} s | {own:.0f} s |")
    return lines


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
    return (f"- Wall time: {format_duration(payload.get('wall_seconds'))} over {_n(len(runs), 'invocation')} "
            f"of this grid that ran cells (cells reused from runs of a smaller grid, e.g. fewer seeds, are not in "
            f"it); the finished cells' own wall times add up to {format_duration(payload.get('cell_seconds_total'))}.")


def render_markdown(payload: dict, *, figure: str | None = None) -> str:
    """The results page: one table per dataset, the cost table, settings, hardware, command, missing cells.

    ``figure`` is the scatter plot's path relative to the page (left out when ``None``).
    """
    grid, settings = payload["grid"], payload["settings"]
    summary = summarise_cells(payload["cells"])
    seeds = len(grid["seeds"])
    smoke = payload.get("preset") == "quick"
    out = ["# Results: defenses × attacks matrix", ""]
    if smoke:
        out += ['!!! warning "Smoke run"',
                "    Produced by `--preset quick`: a few dozen examples and one epoch. It proves the pipeline "
                "runs; the numbers mean nothing.", ""]
    spread = ("mean ± std over seeds" if seeds > 1
              else "one seed per cell, so no spread is shown and differences of a few points may be noise")
    out += [
        f"CACC / ASR in percent, {spread} "
        f"({seeds} seed{'s' if seeds != 1 else ''} requested; `(n=k)` marks a cell where only k finished). "
        f"{payload['n_finished']} of {payload['n_cells']} cells finished.",
        "",
        f"Every model starts from `{settings['model'] or 'all-MiniLM-L6-v2'}` with a new classification head. "
        f"Poisoned training: {settings['train_size']:,} training examples per seed, "
        f"{100 * settings['poison_rate']:g} % poisoned, target label {settings['target_label']}, "
        f"{_n(settings['epochs'], 'epoch')}, max length {settings['max_length']}. Test: {settings['test_size']:,} "
        "examples for CACC; ASR on the triggered non-target ones. The trusted clean set "
        f"({settings['clean_size']} validation examples per seed, never from the training set) feeds the "
        f"post-hoc defenses; MuScleLoRA's reference set is its first {settings['reference_size']} examples.",
        "",
    ]
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
    if figure:
        out += ["## CACC against ASR", "",
                f"![CACC against ASR, one marker per defense, colour per attack]({figure})", "",
                "Mean over seeds with ± std bars; filled markers dirty-label, hollow clean-label, crosses the "
                "clean-data floor. Up and to the left is better.", ""]
    out += ["## How the cells are built", "",
            "- **none (full FT)**: the backdoored model: full fine-tune on the poisoned set. Fine-mixing, E-PUR, "
            "Fine-purifying and W2SDefense start from this same model (trained once per dataset, attack, label "
            "mode and seed).",
            f"- **LoRA** (query/value, r=8) and **MuScleLoRA** (adapter + gradient alignment on the reference "
            f"set) train on the poisoned set at learning rate {settings['adapter_lr']:g}; full fine-tuning at "
            f"{settings['full_ft_lr']:g}.",
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
            f"- **Clean-label**: {payload['notes']['clean_label'].split(': ', 1)[1]}",
            ""]
    cost = _cost_table(payload)
    if cost:
        out += ["## Cost", "",
                "Wall time per cell; the first column includes shared models a cell trained (the backdoored "
                "model, the clean model, the teacher), the second only the defense's own work and the evaluation.",
                "", *cost, ""]
    out += ["## Provenance", "",
            f"- Hardware: {_hardware_line(payload.get('hardware'))}.",
            _wall_line(payload),
            f"- Preset: `{payload.get('preset')}`; all settings and every cell's record are in `matrix.json`.",
            "- Command (every figure on this page comes from it):", "",
            "```bash", payload.get("command") or "(not recorded)", "```", ""]
    variants = payload.get("cell_hardware_variants") or []
    if len(variants) > 1:
        out += [f"- The cells ran under {len(variants)} different hardware/thread settings (see `matrix.json`).",
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


def plot_scatter(payload: dict, path: str | os.PathLike) -> Path | None:
    """CACC against ASR, one panel per dataset; returns the path, or ``None`` when no cell has finished."""
    summary = summarise_cells(payload["cells"])
    if not summary:
        return None
    from matplotlib.lines import Line2D

    plt = _pyplot()
    datasets = [d for d in payload["grid"]["datasets"] if d in summary]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for column, entries in summary[dataset].items():
            attack, mode = column.split("/")
            colour = _ATTACK_COLOURS.get(attack, "tab:gray")
            for defense, entry in entries.items():
                x, y = 100 * entry["asr"]["mean"], 100 * entry["cacc"]["mean"]
                hollow = mode == "clean"
                ax.errorbar(x, y, xerr=100 * entry["asr"]["std"], yerr=100 * entry["cacc"]["std"],
                            marker=_DEFENSE_MARKERS.get(defense, "o"), markersize=8 if defense != "w2sdefense" else 11,
                            color=colour, markerfacecolor="none" if hollow else colour, linestyle="none",
                            elinewidth=0.8, capsize=2, alpha=0.9)
        ax.set_title(_dataset_label(dataset))
        ax.set_xlabel("ASR (%)")
        ax.set_ylabel("CACC (%)")
        ax.set_xlim(-3, 103)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=_DEFENSE_MARKERS.get(d, "o"), color="dimgray", linestyle="none",
                      label=DEFENSES.get(d, d)) for d in payload["grid"]["defenses"]]
    handles.append(Line2D([], [], marker=_DEFENSE_MARKERS[CLEAN_FLOOR], color="dimgray", linestyle="none",
                          label=_FLOOR_LABEL))
    handles += [Line2D([], [], marker="o", color=_ATTACK_COLOURS.get(a, "tab:gray"), linestyle="none",
                       label=ATTACKS.get(a, a)) for a in payload["grid"]["attacks"]]
    handles += [Line2D([], [], marker="o", color="dimgray", linestyle="none", label="dirty-label"),
                Line2D([], [], marker="o", color="dimgray", markerfacecolor="none", linestyle="none",
                       label="clean-label")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def render_results(payload: dict, markdown_path: str | os.PathLike, figure_path: str | os.PathLike) -> dict:
    """Write the scatter PNG (when a cell has finished) and the Markdown page that links it.

    Returns ``{"markdown": path, "figure": path or None}``.
    """
    markdown_path, figure_path = Path(markdown_path), Path(figure_path)
    figure = plot_scatter(payload, figure_path)
    relative = os.path.relpath(figure_path, markdown_path.parent) if figure else None
    text = render_markdown(payload, figure=relative.replace(os.sep, "/") if relative else None)
    write_text_atomic(markdown_path, text)
    return {"markdown": markdown_path, "figure": figure}
