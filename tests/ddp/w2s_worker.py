"""2-process DDP worker for tests/trainers/test_w2sdefense.py (run with `accelerate launch --multi_gpu --num_processes 2`).

Trains a tiny LoRA Llama student with a tiny BERT teacher for one SGD step on 4 examples (2 per process)
and writes the trainable parameters (rank 0) plus the log history to the output folder.

Usage: accelerate launch --multi_gpu --num_processes 2 tests/ddp/w2s_worker.py OUTPUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hf_backdoor_defense.launch import end_process_group  # noqa: E402


def build(seed: int = 3):
    """The shared set-up: (student, teacher, student tokenizer, teacher tokenizer, 4-example dataset)."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForSequenceClassification

    from hf_backdoor_defense.assets import minilm_path, smollm2_path
    from hf_backdoor_defense.trainers.teacher import W2STeacher, W2STeacherConfig

    stok = AutoTokenizer.from_pretrained(smollm2_path())
    if stok.pad_token is None:
        stok.pad_token = stok.eos_token
    ttok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(seed)
    llama = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(stok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=stok.pad_token_id,
            num_labels=2,
        )
    )
    student = get_peft_model(
        llama,
        LoraConfig(
            task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
        ),
    )
    torch.manual_seed(seed + 1)
    enc = BertModel(
        BertConfig(
            vocab_size=ttok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    teacher = W2STeacher(
        W2STeacherConfig(encoder_config=enc.config, student_hidden_size=32, num_labels=2), encoder=enc
    )
    ds = datasets.Dataset.from_dict(
        {
            "text": [
                "a great and moving film",
                "i was bored the whole time",
                "funny warm and clever",
                "a dull mess",
            ],
            "label": [1, 0, 1, 0],
        }
    )
    return student, teacher, stok, ttok, ds


def run(output_dir: str, per_device_batch: int) -> dict[str, torch.Tensor]:
    from hf_backdoor_defense.trainers.w2sdefense import W2SDefenseTrainer, W2SDefenseTrainingArguments

    student, teacher, stok, ttok, ds = build()
    args = W2SDefenseTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    trainer = W2SDefenseTrainer(
        model=student,
        teacher=teacher,
        teacher_tokenizer=ttok,
        processing_class=stok,
        args=args,
        train_dataset=ds,
    )
    trainer.train()
    params = {n: p.detach().cpu().contiguous() for n, p in student.named_parameters() if p.requires_grad}
    if trainer.is_world_process_zero():
        save_file(params, os.path.join(output_dir, "trainable.safetensors"))
        with open(os.path.join(output_dir, "log_history.json"), "w") as f:
            json.dump({"world_size": trainer.args.world_size, "log_history": trainer.state.log_history}, f)
    return params


if __name__ == "__main__":
    run(sys.argv[1], per_device_batch=2)
    end_process_group()
