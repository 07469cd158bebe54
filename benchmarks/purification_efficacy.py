"""Purification efficacy on Rotten Tomatoes + MiniLM: CACC / ASR after Fine-mixing, E-PUR, Fine-purifying.

For each attack (dirty-label BadNets and AddSent, 10 %) and seed: MiniLM is fully fine-tuned on the poisoned
training set (the suspect) and, once per seed, on the clean training set (the ASR floor: a model that never
saw a trigger). Then, for each clean-set size (64, 128, 256 examples drawn from the validation split), every
defense purifies the suspect and fine-tunes on the clean set:

    none                   the suspect as is
    clean_ft               plain clean fine-tune of the suspect (no weight reset)
    fine_mixing            random mask, ratio --fm_ratio reset, + clean fine-tune
    e_pur                  top --epur_tokens embedding rows reset, + clean fine-tune
    fine_purifying         ratio --fp_ratio of the largest r_i reset, + clean fine-tune
    e_pur+fine_purifying   both, + clean fine-tune

Each row reports CACC, ASR, the floor's ASR (the clean model's), seconds and the peak RSS increase of the
purification step relative to the model size (glibc set to return freed memory, so RSS follows live memory).
The test split is used only for these final numbers; ``--ratio_search`` chooses each ratio on a dev half of
the validation split instead of using the fixed ratios.

The results JSON is rewritten after every row (``"complete": false`` until the last one); an interrupted run
continues with the same command plus ``--resume``, which keeps the finished rows and trains only what the
missing ones need. Seeds, attacks, clean-set sizes and defenses are the grid, not settings: ``--resume`` with
more of them adds their rows to the same file. An existing output is never replaced without ``--overwrite``.

Usage:
    python benchmarks/purification_efficacy.py --quick     # smoke run (~2-3 min on 2 busy cores)
    python benchmarks/purification_efficacy.py             # full: 2 attacks x 3 seeds x 3 sizes x 6 defenses
"""

from __future__ import annotations

import os
import sys

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # glibc reads it at start-up: re-exec once with it set,
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # so freed tensors go back to the OS and RSS = live memory
    os.execv(sys.executable, [sys.executable, *sys.argv])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _common import hardware_info, previous_results, read_results, settings_of, summarise, write_json  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.attacks import build_attack  # noqa: E402
from hf_backdoor_defense.data import load_text_classification  # noqa: E402
from hf_backdoor_defense.metrics import evaluate_backdoor  # noqa: E402
from hf_backdoor_defense.purification import (  # noqa: E402
    EmbeddingPurification,
    FineMixing,
    FinePurifying,
    compose,
    ratio_search,
)
from hf_backdoor_defense.trainers.purification import PurificationTrainingArguments, finetune_clean  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "purification_efficacy.json"
DEFENSES = ("none", "clean_ft", "fine_mixing", "e_pur", "fine_purifying", "e_pur+fine_purifying")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny subsample, 1 seed, 1 size: proves the script runs")
    p.add_argument("--train_size", type=int, default=3000, help="training examples (subsample of train)")
    p.add_argument("--test_size", type=int, default=1000, help="test examples (subsample of test)")
    p.add_argument("--clean_sizes", type=int, nargs="+", default=[64, 128, 256], help="clean-set sizes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--attacks", nargs="+", default=["badnets", "addsent"], choices=["badnets", "addsent"])
    p.add_argument("--defenses", nargs="+", default=list(DEFENSES), choices=DEFENSES,
                   help="defenses to run (default: all six)")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs of the suspect / clean-model fine-tune")
    p.add_argument("--ft_epochs", type=float, default=3.0, help="epochs of the post-purification clean fine-tune")
    p.add_argument("--suspect_lr", type=float, default=5e-5, help="learning rate of the suspect / clean-model fine-tune")
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--fm_ratio", type=float, default=0.5, help="Fine-mixing: fraction reset")
    p.add_argument("--fp_ratio", type=float, default=0.3, help="Fine-purifying: fraction reset")
    p.add_argument("--epur_tokens", type=int, default=100, help="E-PUR: rows reset")
    p.add_argument("--ratio_search", action="store_true", help="choose ratios on a dev set (budget --budget)")
    p.add_argument("--budget", type=float, default=0.02, help="ΔACC budget for --ratio_search")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="ratios --ratio_search tries (Fine-mixing, Fine-purifying)")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only print the Markdown tables of an existing results JSON (nothing is trained)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of an existing --output with the same settings and run only the missing ones")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.clean_sizes, args.seeds = 64, 32, [16], [0]
        args.attacks, args.epochs, args.ft_epochs, args.max_length = ["badnets"], 1.0, 1.0, 32
        args.epur_tokens = 20
        if args.output == RESULTS:
            args.output = RESULTS.with_name("purification_efficacy_quick.json")
    return args


class PeakRSS:
    """Peak resident-memory increase over a block, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.extra = self.peak - self.base


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def train_model(folder, train, tokenizer, args, seed):
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    with tempfile.TemporaryDirectory() as tmp:
        ft = PurificationTrainingArguments(output_dir=tmp, num_train_epochs=args.epochs, learning_rate=args.suspect_lr,
                                           per_device_train_batch_size=32, max_length=args.max_length, seed=seed,
                                           disable_tqdm=True)
        return finetune_clean(model, train, tokenizer, ft)


def purifier_for(defense: str, args):
    # The ranking this script's published results were measured with (before the ratio_of, embeddings and
    # per-example Fisher defaults).
    fm = FineMixing(ratio=args.fm_ratio, ratio_of="all", mask="random")
    fp = FinePurifying(ratio=args.fp_ratio, ratio_of="all", embeddings="include", estimator="batch", batch_size=16,
                       max_length=args.max_length, show_progress=False)
    ep = EmbeddingPurification(num_tokens=args.epur_tokens)
    return {"fine_mixing": fm, "e_pur": ep, "fine_purifying": fp, "e_pur+fine_purifying": compose(ep, fp)}.get(defense)


def run_cell(defense, suspect, reference, clean, dev, test, attack, tokenizer, args, seed, model_bytes):
    ft = PurificationTrainingArguments(output_dir=tempfile.mkdtemp(prefix="hbd-bench-"), num_train_epochs=args.ft_epochs,
                                       learning_rate=2e-5, per_device_train_batch_size=16, max_length=args.max_length,
                                       seed=seed, disable_tqdm=True)
    start = time.perf_counter()
    row = {"defense": defense, "ratio": None, "dims_reset": 0, "peak_extra_x_model": 0.0, "purify_s": 0.0}
    if defense == "none":
        model = suspect
    elif defense == "clean_ft":
        model = finetune_clean(copy.deepcopy(suspect), clean, tokenizer, ft)
    else:
        purifier = purifier_for(defense, args)
        if args.ratio_search and defense != "e_pur":
            search = ratio_search(purifier, suspect, reference, clean, dev, args.budget,
                                  ratios=args.ratios, tokenizer=tokenizer, finetune=ft)
            model, report = search.result.model, search.result.report
            row["ratio_table"] = report["ratio_search"]["table"]
            row["peak_extra_x_model"] = row["purify_s"] = None  # not measured inside the search (see ratio_table)
        else:
            t0 = time.perf_counter()
            with PeakRSS() as mem:
                result = purifier.purify(suspect, reference, clean, tokenizer=tokenizer)
            row["purify_s"] = round(time.perf_counter() - t0, 2)
            row["peak_extra_x_model"] = round(mem.extra / model_bytes, 2)
            model, report = finetune_clean(result.model, clean, tokenizer, ft), result.report
        row.update(ratio=report.get("ratio"), dims_reset=report.get("dims_reset_total"),
                   tokens_reset=[t["token"] for t in report.get("tokens_reset", [])][:10])
    scores = evaluate_backdoor(model, tokenizer, test, attack, max_length=args.max_length, disable_progress_bar=True)
    row.update(cacc=scores["cacc"], asr=scores["asr"], seconds=round(time.perf_counter() - start, 2))
    return row


#: Arguments that do not change a row's figures (so a resumed run may differ in them). Seeds, attacks, defenses and
#: clean-set sizes are the grid: every row records its own, so a resume may add (or leave out) some.
NOT_SETTINGS = ("output", "render", "resume", "overwrite", "quick", "seeds", "attacks", "clean_sizes", "defenses")


def previous_rows(args) -> tuple[list[dict], float]:
    """``(rows, seconds)`` already in ``args.output`` when resuming (settings must match), else ``([], 0)``;
    an existing output without ``--resume`` or ``--overwrite`` stops the run before anything is trained."""
    previous = previous_results(args, NOT_SETTINGS)
    return ([], 0.0) if previous is None else (previous["rows"], float(previous.get("total_seconds", 0.0)))


def assemble(args, command: str, rows: list[dict], model_bytes: int, seconds: float) -> dict:
    """The results payload: the arguments, the rows so far, their means (± sample std) per attack / clean-set
    size / defense, and whether every row of the grid is there."""
    summary = {}
    for row in rows:
        summary.setdefault(f"{row['attack']}/{row['clean_size']}/{row['defense']}", []).append(row)
    table = {k: {**{m: round(statistics.mean(r[m] for r in v), 4) for m in ("cacc", "asr", "floor_asr", "seconds")},
                 **{f"{m}_std": round(summarise([r[m] for r in v])["std"], 4) for m in ("cacc", "asr")},
                 "n": len(v)}
             for k, v in summary.items()}
    grid = {(s, a, n, d) for s in args.seeds for a in args.attacks for n in args.clean_sizes for d in args.defenses}
    return {"args": settings_of(args), "command": command,
            "complete": grid <= {(r["seed"], r["attack"], r["clean_size"], r["defense"]) for r in rows},
            "model": "all-MiniLM-L6-v2 (22.7M params)", "model_bytes": model_bytes,
            "total_seconds": round(seconds, 1), "hardware": hardware_info(), "mean": table, "rows": rows}


def _pm(values) -> str:
    stat = summarise(values)
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def render_markdown(payload: dict) -> str:
    """One table per clean-set size: CACC / ASR (mean ± sample std over seeds) per defense and attack, the
    clean model's (floor) row, the mean seconds of a cell and the peak RSS increase of the purification step."""
    rows, args = payload["rows"], payload["args"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    out = [f"CACC / ASR in %, mean ± std over up to {len(seeds)} seed(s); {args['train_size']} training and "
           f"{args['test_size']} test sentences, max length {args['max_length']}; total "
           f"{payload['total_seconds'] / 60:.0f} min."
           + ("" if payload.get("complete", True) else
              f" **Incomplete: {len(rows)} rows so far; the same command with --resume adds the rest.**")]
    for size in sorted({r["clean_size"] for r in rows}):
        size_seeds = sorted({r["seed"] for r in rows if r["clean_size"] == size})
        out += ["", f"**{size} clean examples** (seeds {', '.join(map(str, size_seeds))})", "",
                "| Defense | " + " | ".join(attacks) + " | s per cell | peak RSS increase (× model) |",
                "|---|" + ":---:|" * len(attacks) + "---:|---:|"]
        for defense in DEFENSES:
            cells = [r for r in rows if r["clean_size"] == size and r["defense"] == defense]
            if not cells:
                continue
            scores = []
            for attack in attacks:
                these = [r for r in cells if r["attack"] == attack]
                scores.append(f"{_pm(r['cacc'] for r in these)} / {_pm(r['asr'] for r in these)}" if these else "–")
            seconds = statistics.mean(r["seconds"] for r in cells)
            peaks = [r["peak_extra_x_model"] for r in cells if r["peak_extra_x_model"] is not None]
            peak = f"{statistics.mean(peaks):.2f}" if peaks else "–"  # not measured inside a ratio search
            out.append(f"| {defense} | " + " | ".join(scores) + f" | {seconds:.0f} | {peak} |")
        floor = []
        for attack in attacks:
            these = [r for r in rows if r["clean_size"] == size and r["attack"] == attack and r["defense"] == "none"]
            floor.append(f"{_pm(r['floor_cacc'] for r in these)} / {_pm(r['floor_asr'] for r in these)}")
        out.append("| *clean-data floor* | " + " | ".join(floor) + " | | |")
    out += ["", "```bash", payload.get("command", "python benchmarks/purification_efficacy.py"), "```"]
    return "\n".join(out)


def main(argv=None):
    args = parse_args(argv)
    if args.render is not None:
        print(render_markdown(read_results(args.render)))
        return
    folder = str(minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = load_text_classification("rotten_tomatoes")
    train_all = data["train"].shuffle(seed=0).select(range(args.train_size))
    test = data["test"].shuffle(seed=0).select(range(min(args.test_size, len(data["test"]))))
    val = data["validation"].shuffle(seed=0)
    half = len(val) // 2
    reference = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    model_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
    rows, earlier_seconds = previous_rows(args)
    done = {(r["seed"], r["attack"], r["clean_size"], r["defense"]) for r in rows}
    started = time.perf_counter()

    command = "python benchmarks/purification_efficacy.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def save() -> dict:
        out = assemble(args, command, rows, model_bytes, earlier_seconds + time.perf_counter() - started)
        write_json(args.output, out)  # after every row: an interrupted run keeps what it measured (--resume)
        return out

    for seed in args.seeds:
        torch.manual_seed(seed)
        todo = {a: [(n, d) for n in args.clean_sizes for d in args.defenses if (seed, a, n, d) not in done]
                for a in args.attacks}
        if not any(todo.values()):
            continue
        clean_model = train_model(folder, train_all, tokenizer, args, seed)
        for attack_name in args.attacks:
            if not todo[attack_name]:
                continue
            attack = build_attack(attack_name, target_label=1, poison_rate=0.1, label_mode="dirty", seed=seed)
            floor = evaluate_backdoor(clean_model, tokenizer, test, attack, max_length=args.max_length,
                                      disable_progress_bar=True)
            suspect = train_model(folder, attack.poison(train_all), tokenizer, args, seed)
            for size, defense in todo[attack_name]:
                clean = val.select(range(seed * size, (seed + 1) * size))  # trusted clean pool: first half
                dev = val.select(range(half, len(val)))  # dev: second half, for ratio search only
                row = run_cell(defense, suspect, reference, clean, dev, test, attack, tokenizer, args, seed,
                               model_bytes)
                row.update(attack=attack_name, seed=seed, clean_size=size, floor_asr=floor["asr"],
                           floor_cacc=floor["cacc"])
                rows.append(row)
                save()
                print(json.dumps({k: v for k, v in row.items() if k != "ratio_table"}), flush=True)
    out = save()
    print(f"wrote {args.output} in {out['total_seconds']} s")
    print(render_markdown(out))


if __name__ == "__main__":
    main()
