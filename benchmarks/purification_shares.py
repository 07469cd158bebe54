"""How much of a backdoored model a purification ratio reaches: the shares behind ``ratio_of`` and
``embeddings`` (docs/concepts/purification.md, "What ``ratio`` means").

On the v2 regime's backdoored Rotten Tomatoes model (MiniLM, 3,000 sentences x 3 epochs, BadNets dirty-label,
seed 0; trained by the engine, or reused from ``<HBD cache>/matrix_work``) it measures the share of ranked weights
that never moved (delta == 0), what ratios counted over all weights mean over the moved ones, and the share of a
0.3 Fine-purifying budget (the old ranking: every weight, embeddings included, batch Fisher) that word-embedding
entries take. Writes ``benchmarks/results/purification_shares.json``.

Usage:
    python benchmarks/purification_shares.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hf_backdoor_defense.assets import cache_dir  # noqa: E402
from hf_backdoor_defense.atomic import write_json_atomic  # noqa: E402
from hf_backdoor_defense.matrix import PRESETS  # noqa: E402
from hf_backdoor_defense.matrix.cells import MatrixContext  # noqa: E402
from hf_backdoor_defense.matrix.config import MatrixSettings, parse_threat  # noqa: E402
from hf_backdoor_defense.models import head_module_names  # noqa: E402
from hf_backdoor_defense.purification import FinePurifying  # noqa: E402
from hf_backdoor_defense.purification.base import build_plan, input_embedding_names  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "purification_shares.json"


def main() -> dict:
    _, preset = PRESETS["v2"]
    settings = MatrixSettings(**{**preset, "eval_split": "validation"})
    ctx = MatrixContext(settings, workdir=cache_dir() / "matrix_work")
    folder, _ = ctx.suspect("rotten_tomatoes", parse_threat("badnets-dirty"), 0)
    suspect = ctx._load(folder, 2)
    reference = ctx._load(ctx.model_path, 2, fresh=True)
    head_names = tuple(n for n in head_module_names(settings.pooling) if n != "classifier")
    plan = build_plan(suspect, reference, head_names=head_names)
    plan._owner = suspect
    total = plan.dims_total
    moved = sum(int((plan.delta(n) != 0).sum()) for n in plan.body)
    embeddings = input_embedding_names(plan)
    clean = ctx.splits("rotten_tomatoes", 0)["clean"]
    legacy = FinePurifying(ratio=0.3, ratio_of="all", embeddings="include", estimator="batch", batch_size=16,
                           max_length=settings.max_length, show_progress=False, head_names=head_names)
    reset = legacy.purify(suspect, reference, clean, tokenizer=ctx.tokenizer).report
    out = {
        "model": "v2 rotten_tomatoes badnets-dirty suspect, seed 0",
        "dims_total": total,
        "dims_moved": moved,
        "unmoved_share": 1 - moved / total,
        "embedding_share_of_weights": sum(plan.suspect_params[n].numel() for n in embeddings) / total,
        "ratio_over_all_as_share_of_moved": {str(r): min(1.0, r * total / moved) for r in (0.3, 0.4, 0.5)},
        "fine_purifying_0.3_old_ranking_embedding_share_of_resets":
            sum(reset["dims_reset"][n] for n in embeddings) / reset["dims_reset_total"],
    }
    write_json_atomic(OUT, out)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
