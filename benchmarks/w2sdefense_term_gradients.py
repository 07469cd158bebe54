"""How hard does each W2SDefense loss term pull on the adapter? Gradient norms per term, at the defense's start.

Under Adam a loss term matters through the share of the gradient it contributes, not through its value.
This script builds the W2SDefense benchmark's student (the backdoored SmolLM2 with a fresh LoRA on q/v and its
head) and teacher, takes one batch of the clean defense set, and reports for each unweighted term
(``ce``, ``kd``, ``feature`` under both feature distances) its value and the L2 norm of its gradient on the
LoRA weights and on the head. Multiply by a weight to compare terms: ``c * |grad feature|`` against
``a * |grad ce|``.

Usage:
    python benchmarks/w2sdefense_term_gradients.py --student ~/w2s/badnets-s0-<hash> --teacher ~/w2s/teacher0
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from _common import hardware_info, write_json  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from w2sdefense_efficacy import PRESETS, _lora, _student, student_tokenizer, subsamples  # noqa: E402

from hf_backdoor_defense.assets import smollm2_path  # noqa: E402
from hf_backdoor_defense.data import load_text_classification  # noqa: E402
from hf_backdoor_defense.models.teacher import W2STeacher  # noqa: E402
from hf_backdoor_defense.trainers.w2sdefense import (  # noqa: E402
    FEATURE_DISTANCES,
    TEACHER_PREFIX,
    W2SDefenseTrainer,
    W2SDefenseTrainingArguments,
    w2s_loss,
)

RESULTS = Path(__file__).resolve().parent / "results" / "w2sdefense_term_gradients.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=Path, required=True, help="saved backdoored SmolLM2 classifier folder")
    p.add_argument("--teacher", type=Path, required=True, help="saved W2STeacher folder")
    p.add_argument("--preset", choices=list(PRESETS), default="reduced", help="clean set size and max length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--output", type=Path, default=RESULTS)
    return p.parse_args(argv)


def _norm(grads, params, part: str) -> float:
    return float(sum(g.pow(2).sum() for (n, _), g in zip(params, grads) if g is not None and part in n) ** 0.5)


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, flag in ((args.student, "--student"), (args.teacher, "--teacher")):
        if not (path / "config.json").is_file():
            raise SystemExit(f"{flag}: {path} holds no saved model (no config.json); pass a model folder.")
    preset = PRESETS[args.preset]
    tok = student_tokenizer(smollm2_path())
    teacher = W2STeacher.from_pretrained(args.teacher).eval()
    teacher_tok = AutoTokenizer.from_pretrained(args.teacher)
    torch.manual_seed(args.seed)
    student = _lora(_student(args.student, tok), args.lora_r)
    _, clean, _ = subsamples(load_text_classification("rotten_tomatoes"), argparse.Namespace(**preset), args.seed)
    rows = clean.select(range(min(args.batch_size, len(clean))))
    # The trainer's own collator and student forward, so phi_s is exactly what its loss sees (the head's input).
    with tempfile.TemporaryDirectory() as tmp:
        targs = W2SDefenseTrainingArguments(output_dir=tmp, max_length=preset["max_length"], use_cpu=True,
                                            teacher_max_length=preset["max_length"], report_to="none")
        trainer = W2SDefenseTrainer(model=student, teacher=teacher, teacher_tokenizer=teacher_tok,
                                    processing_class=tok, args=targs, train_dataset=rows)
        batch = trainer.data_collator([rows[i] for i in range(len(rows))])
        params = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        logits, phi_s = trainer._student_forward(student, batch)
    with torch.no_grad():
        t_out = teacher(**{k[len(TEACHER_PREFIX):]: v for k, v in batch.items() if k.startswith(TEACHER_PREFIX)})
    terms = {}
    for distance in FEATURE_DISTANCES:
        loss = w2s_loss(logits, t_out.logits, phi_s, t_out.features, batch["labels"], temperature=2.0,
                        feature_distance=distance)
        terms.update({"ce": loss["ce"], "kd": loss["kd"], f"feature_{distance}": loss["feature"]})
    report = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value.mean(), [p for _, p in params], retain_graph=True, allow_unused=True)
        report[name] = {"value": value.mean().item(), "grad_norm_lora": _norm(grads, params, "lora_"),
                        "grad_norm_head": _norm(grads, params, "score")}
        print(name, report[name], flush=True)
    scales = {"phi_s_sq_norm": phi_s.pow(2).sum(-1).mean().item(),
              "phi_s_batch_mean_sq_norm": phi_s.mean(0).pow(2).sum().item(),
              "phi_t_sq_norm": t_out.features.pow(2).sum(-1).mean().item(),
              "phi_t_zero_fraction": (t_out.features == 0).float().mean().item()}
    print(scales)
    write_json(args.output, {"benchmark": "w2sdefense_term_gradients", "student": str(args.student),
                             "teacher": str(args.teacher), "n_examples": len(rows), "terms": report,
                             "feature_scales": scales, "hardware": hardware_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
