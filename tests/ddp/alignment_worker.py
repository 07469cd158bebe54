"""Worker for tests/trainers/test_alignment_ddp.py: train a tiny BERT + LoRA with MuScleLoRATrainer and save the
trainable weights. Launched both as a plain 1-process script and under
`accelerate launch --multi_gpu --num_processes 2` (CPU, gloo).

Every epoch is exactly one optimizer step over the whole 8-example training set, so the training gradient does
not depend on how the sampler orders or shards examples; the reference batches come from the trainer's own
seeded sampler, which splits one global reference batch across processes.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification  # noqa: E402

from hf_backdoor_defense.assets import minilm_path  # noqa: E402
from hf_backdoor_defense.data import tokenize_dataset  # noqa: E402
from hf_backdoor_defense.launch import end_process_group  # noqa: E402
from hf_backdoor_defense.trainers.musclelora import MuScleLoRATrainer, MuScleLoRATrainingArguments  # noqa: E402

TRAIN = [f"a good film number {i}" for i in range(4)] + [f"a bad movie number {i}" for i in range(4)]
REFERENCE = [f"lovely story part {i}" for i in range(6)] + [f"boring plot part {i}" for i in range(6)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--per_device_train_batch_size", type=int, required=True)
    parser.add_argument("--reference_batch_size", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    cli = parser.parse_args()

    tok = AutoTokenizer.from_pretrained(minilm_path())
    train = tokenize_dataset(
        datasets.Dataset.from_dict({"text": TRAIN, "label": [1] * 4 + [0] * 4}), tok, max_length=16
    )
    reference = tokenize_dataset(
        datasets.Dataset.from_dict({"text": REFERENCE, "label": [1] * 6 + [0] * 6}), tok, max_length=16
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
    )
    model = get_peft_model(
        BertForSequenceClassification(config),
        LoraConfig(
            task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False
        ),
    )
    args = MuScleLoRATrainingArguments(
        output_dir=cli.output_dir,
        per_device_train_batch_size=cli.per_device_train_batch_size,
        reference_batch_size=cli.reference_batch_size,
        num_train_epochs=cli.epochs,
        learning_rate=1e-2,
        alignment_preset="encoder",
        min_reference_loss=0.0,  # keep projecting: the encoder preset's mix phase then never hides a bug
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    trainer = MuScleLoRATrainer(
        model=model, args=args, train_dataset=train, reference_dataset=reference, processing_class=tok
    )
    if trainer.args.process_index == 0:
        os.makedirs(cli.output_dir, exist_ok=True)
        initial = {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(initial, os.path.join(cli.output_dir, "initial.safetensors"))
    trainer.train()
    if trainer.args.process_index == 0:
        weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, os.path.join(cli.output_dir, "trainable.safetensors"))
        with open(os.path.join(cli.output_dir, "alignment.json"), "w") as handle:
            json.dump({"world_size": trainer.args.world_size, "history": trainer.alignment_history}, handle)


if __name__ == "__main__":
    main()
    end_process_group()
