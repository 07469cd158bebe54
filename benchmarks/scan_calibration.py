"""How well does ``hbd scan`` tell backdoored models from clean ones? Calibration on the matrix's own models.

The v2 matrix keeps every model it trained under ``<HBD cache>/matrix_work/models``: the backdoored full
fine-tunes (``suspect-*``, one per dataset, threat and seed) and the clean full fine-tunes (``clean-*``, the
floors). This script scans each of them (:func:`hf_backdoor_defense.scan.scan_model`, the pre-trained MiniLM as
the drift reference) with clean validation sentences of its task (the test split is never read) and reports:

* **AUC** of the scan score between backdoored (positive) and clean (negative) models, overall and per trigger;
* the share of backdoored / clean models flagged at each of a few thresholds (true and false positive rates);
* **trigger recall@k**: the share of backdoored models whose top ``k`` candidates hold one of the trigger's
  tokens (a BadNets word, or a word of the AddSent sentence);

each for several values of ``max_clean_frequency`` (candidates found in more than that share of the clean
texts, the task's own words, do not count), recomputed from every tested candidate of one scan per model.

Only models already trained are scanned (nothing is trained here). Writes
``benchmarks/results/scan_calibration.json`` after every model (a rerun skips the models already in it) and
prints a Markdown table.

Usage:
    python benchmarks/scan_calibration.py                   # every cached v2 model
    python benchmarks/scan_calibration.py --max_models 4    # a smoke run
    python benchmarks/scan_calibration.py --figure docs/figures/scan_calibration.png   # table and figure
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hf_backdoor_defense.assets import cache_dir  # noqa: E402
from hf_backdoor_defense.atomic import write_json_atomic  # noqa: E402
from hf_backdoor_defense.matrix import PRESETS  # noqa: E402
from hf_backdoor_defense.matrix.cells import MatrixContext  # noqa: E402
from hf_backdoor_defense.matrix.config import MatrixSettings, parse_dataset  # noqa: E402
from hf_backdoor_defense.models import load_sequence_classifier  # noqa: E402
from hf_backdoor_defense.reporting import markdown_table, percent, prepare_machine  # noqa: E402
from hf_backdoor_defense.scan import ScanConfig, scan_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "scan_calibration.json"
THRESHOLDS = (0.5, 0.7, 0.85, 0.9)  # 0.85: the default, chosen on the seed 0 and 1 models
CAPS = (None, 0.05, 0.01, 0.0)  # max_clean_frequency values compared
# The v2 regime's models only: other budgets (studies, older runs) answer another question.
V2_KEYS = ("train_size", "max_length", "epochs", "full_ft_lr", "pooling")


def current(config: dict) -> bool:
    """Trained at the v2 settings on the corpora's current rows (a model of an older corpus revision is not)."""
    preset = MatrixSettings(**PRESETS["v2"][1]).to_dict()
    revisions = parse_dataset(config.get("dataset", "")).corpus_revisions
    return (config.get("kind") in ("suspect", "clean") and all(config.get(k) == preset[k] for k in V2_KEYS)
            and config.get("corpus_revisions", {}) == revisions)


def stale(folder: Path) -> bool:
    """A scanned model that is still in the workdir but no longer a v2 model (a model folder this machine does
    not hold keeps its record)."""
    info = folder / "hbd_matrix_model.json"
    return info.is_file() and not current(json.loads(info.read_text()).get("config", {}))


def v2_models(workdir: Path) -> list[tuple[Path, dict]]:
    """``(folder, config)`` of every cached suspect and clean full fine-tune trained at the v2 settings."""
    found = []
    for info in sorted((workdir / "models").glob("*/hbd_matrix_model.json")):
        config = json.loads(info.read_text()).get("config", {})
        if current(config):
            found.append((info.parent, config))
    return found


def trigger_tokens(attack: dict | None, tokenizer) -> set[str]:
    """The word pieces a scan candidate must match to count as the trigger (empty for a clean model)."""
    if not attack:
        return set()
    words = attack.get("triggers") or attack.get("sentence", "").split()
    return {piece.lower() for word in words for piece in tokenizer.tokenize(word)}


def auc(positives: list[float], negatives: list[float]) -> float | None:
    """P(score of a backdoored model > score of a clean one), ties counting one half."""
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def rescore(record: dict, cap: float | None, k: int) -> tuple[float, bool | None]:
    """A model's score and trigger-in-top-k with ``max_clean_frequency=cap``, from its tested candidates."""
    counted = [c for c in record["tested"] if cap is None or c["clean_frequency"] <= cap]
    counted.sort(key=lambda c: -c["flip_rate"])
    score = counted[0]["flip_rate"] if counted else 0.0
    found = bool(set(record["trigger_tokens"]) & {c["token"] for c in counted[:k]}) if record["backdoored"] else None
    return score, found


def summarise(records: list[dict], k: int, cap: float | None = None) -> dict:
    records = [{**r, **dict(zip(("score", "trigger_found"), rescore(r, cap, k)))} for r in records]
    groups: dict[str, list[dict]] = {"all": [r for r in records if r["backdoored"]]}
    for r in records:
        if r["backdoored"]:
            groups.setdefault(r["threat"], []).append(r)
    clean_scores = [r["score"] for r in records if not r["backdoored"]]
    out = {}
    for name, rows in groups.items():
        scores = [r["score"] for r in rows]
        out[name] = {
            "n_backdoored": len(rows), "n_clean": len(clean_scores), "auc": auc(scores, clean_scores),
            "tpr": {str(t): sum(s >= t for s in scores) / len(scores) if scores else None for t in THRESHOLDS},
            "fpr": {str(t): sum(s >= t for s in clean_scores) / len(clean_scores) if clean_scores else None
                    for t in THRESHOLDS},
            f"trigger_recall_at_{k}": sum(r["trigger_found"] for r in rows) / len(rows) if rows else None,
        }
    return out


def plot_scores(records: list[dict], path: Path, cap: float | None = None) -> Path:
    """One row of dots per kind of model (clean, then each threat): its scan scores, the thresholds as lines."""
    from hf_backdoor_defense.matrix.render import _pyplot, _save_png

    plt = _pyplot()
    rows = ["clean"] + sorted({r["threat"] for r in records if r["backdoored"]})
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(rows) + 1.2))
    for y, name in enumerate(rows):
        mine = [r for r in records if (r["threat"] if r["backdoored"] else "clean") == name]
        for k, r in enumerate(mine):
            score = rescore(r, cap, 1)[0]
            marker = "o" if r["dataset"].startswith("rotten") else ("s" if "->" not in r["dataset"] else "^")
            ax.scatter(score, y + 0.07 * (k % 5 - 2), marker=marker, facecolors="none",  # equal scores apart
                       edgecolors="tab:green" if name == "clean" else "tab:red", s=40)
    for t in THRESHOLDS:
        default = t == ScanConfig().threshold
        ax.axvline(t, color="0.3" if default else "0.8", lw=1.0 if default else 0.8, ls="--" if default else "-",
                   zorder=0)
    ax.set_yticks(range(len(rows)), [f"{name} ({sum((r['threat'] if r['backdoored'] else 'clean') == name for r in records)})"
                                     for name in rows])
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("scan score: the largest flip rate of a candidate token (dashed: the default threshold)")
    ax.set_title("hbd scan on the v2 models (o Rotten Tomatoes, s SpamAssassin, ^ SpamAssassin 1->2)", fontsize=9)
    return _save_png(plt, fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=str(cache_dir() / "matrix_work"), help="The matrix's shared-model folder.")
    p.add_argument("--output", default=str(OUT), help="JSON results (default benchmarks/results/scan_calibration.json).")
    p.add_argument("--num_inputs", type=int, default=128, help="Clean validation sentences per scan.")
    p.add_argument("--top_k", type=int, default=5, help="Candidates searched for the trigger (recall@k).")
    p.add_argument("--max_models", type=int, default=None, help="Scan at most this many models (smoke runs).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable CPU).")
    p.add_argument("--figure", default=None, help="Also draw the scores per kind of model to this PNG.")
    args = p.parse_args(argv)
    machine = prepare_machine(args.threads)
    output = Path(args.output)
    done = json.loads(output.read_text()) if output.is_file() else {"models": []}
    models = v2_models(Path(args.workdir))
    done["models"] = [r for r in done["models"] if not stale(Path(args.workdir) / "models" / r["folder"])]
    seen = {r["folder"] for r in done["models"]}
    ctx = MatrixContext(MatrixSettings(**PRESETS["v2"][1]), workdir=args.workdir)
    reference = None
    models = models[: args.max_models]
    config = ScanConfig(num_inputs=args.num_inputs, top_k=args.top_k, max_length=ctx.settings.max_length,
                        show_progress=False)
    for index, (folder, cfg) in enumerate(models, 1):
        if folder.name in seen:
            continue
        corpus = cfg["dataset"].split("->")[0].strip()
        clean = ctx.dataset(corpus)["validation"].shuffle(seed=cfg["seed"])
        num_labels = ctx.num_labels(corpus)
        if reference is None:
            reference = load_sequence_classifier(str(ctx.model_path), pooling=ctx.settings.pooling,
                                                 num_labels=num_labels).eval()
        model = load_sequence_classifier(str(folder), num_labels=num_labels).eval()
        report = scan_model(model, ctx.tokenizer, clean, reference=reference, config=config)
        attack = cfg.get("attack") if cfg["kind"] == "suspect" else None
        wanted = trigger_tokens(attack, ctx.tokenizer)
        found = [c["token"].lower() for c in report.candidates]
        threat = (f"{attack['attack']}x{attack.get('num_triggers', 1)}-{attack['label_mode']}" if attack else "clean")
        done["models"].append({
            "folder": folder.name, "kind": cfg["kind"], "dataset": cfg["dataset"], "seed": cfg["seed"],
            "threat": threat, "backdoored": attack is not None, "score": report.score,
            "suspicious": report.suspicious, "target_label": report.target_label, "candidates": found,
            "trigger_found": bool(wanted & set(found)) if attack else None, "trigger_tokens": sorted(wanted),
            "tested": [{k: c[k] for k in ("token", "label", "flip_rate", "clean_frequency")}
                       for c in report.tested],
        })
        done.update(settings={"num_inputs": args.num_inputs, "top_k": args.top_k, "thresholds": list(THRESHOLDS)},
                    machine=machine,
                    summary={str(cap): summarise(done["models"], args.top_k, cap) for cap in CAPS})
        write_json_atomic(output, done)
        print(f"[{index}/{len(models)}] {folder.name} ({threat}): score {report.score:.2f}", flush=True)
    if done["models"]:  # the summary follows the thresholds and caps of this version of the script
        done.update(settings={**done.get("settings", {}), "thresholds": list(THRESHOLDS)},
                    summary={str(cap): summarise(done["models"], args.top_k, cap) for cap in CAPS})
        write_json_atomic(output, done)
    rows = [[f"{name}, cap {cap}", s["n_backdoored"], s["n_clean"], "-" if s["auc"] is None else f"{s['auc']:.2f}",
             *(f"{percent(s['tpr'][str(t)], 0)} / {percent(s['fpr'][str(t)], 0)}" for t in THRESHOLDS),
             percent(s[f"trigger_recall_at_{args.top_k}"], 0)]
            for cap in CAPS for name, s in summarise(done["models"], args.top_k, cap).items()]
    print(markdown_table(["backdoored models, max_clean_frequency", "n", "clean n", "AUC",
                          *(f"flagged at {t} (backdoored / clean)" for t in THRESHOLDS), f"trigger in top {args.top_k}"],
                         rows, align="lrrr" + "r" * len(THRESHOLDS) + "r"))
    if args.figure and done["models"]:
        print(f"figure: {plot_scores(done['models'], Path(args.figure))}")
    return done


if __name__ == "__main__":
    main()
