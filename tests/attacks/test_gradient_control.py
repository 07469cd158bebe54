"""GradientControlTrainer: the CLNorm / ILProj maths, layer resolution, training, checkpoint resume."""

from __future__ import annotations

import json
import os

import datasets
import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding

from hf_backdoor_defense.attacks.layer_index import infer_num_layers, layer_groups, resolve_layer_index
from hf_backdoor_defense.trainers.gradient_control import (
    STATE_FILE,
    GradientControlTrainer,
    GradientControlTrainingArguments,
    beta_schedule_values,
    clnorm_targets,
    clnorm_update,
    ilproj,
)

# ---------------------------------------------------------------- maths


def test_clnorm_targets_linear_in_depth_zero_at_output():
    targets = clnorm_targets({0: 1.0, 1: 2.0, 2: 3.0, 3: 6.0, 4: 3.0}, anchor_layer=2, output_layer=4)
    # mean = 3; target(l) = 3 * (l - 4) / (2 - 4)
    assert targets == pytest.approx({0: 6.0, 1: 4.5, 2: 3.0, 3: 1.5, 4: 0.0})


def test_clnorm_update_hand_made_numbers():
    weights = {0: 1.0, 1: 0.5, 2: 1.0}
    norms = {0: 2.0, 1: 1.0, 2: 3.0}  # mean 2; anchor 1, output 2 -> targets 4, 2, 0
    new = clnorm_update(weights, norms, anchor_layer=1, output_layer=2, alpha=0.1, min_weight=None)
    assert new[0] == pytest.approx(1.0 - 0.1 * (1.0 * 2.0 - 4.0) * 2.0)  # 1.4
    assert new[1] == pytest.approx(0.5 - 0.1 * (0.5 * 1.0 - 2.0) * 1.0)  # 0.65
    assert new[2] == pytest.approx(1.0 - 0.1 * (3.0 - 0.0) * 3.0)  # 0.1
    assert weights == {0: 1.0, 1: 0.5, 2: 1.0}  # input untouched
    clamped = clnorm_update(weights, norms, anchor_layer=1, output_layer=2, alpha=1.0, min_weight=0.0)
    assert clamped[2] == 0.0  # 1 - 1 * 3 * 3 < 0 -> clamped
    with pytest.raises(ValueError, match="anchor_layer"):
        clnorm_targets({0: 1.0}, anchor_layer=2, output_layer=2)


def test_ilproj_conflict():
    g_c, g_p = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # dot -1
    g, conflict = ilproj(g_c, g_p, beta=0.0)
    assert conflict
    # hat_c = [0.5, 0.5] (orthogonal to g_p), hat_p = [0, 1] (orthogonal to g_c)
    assert torch.allclose(g, torch.tensor([0.5, 1.5]))
    g_half, _ = ilproj(g_c, g_p, beta=0.5)
    assert torch.allclose(g_half, 0.5 * torch.tensor([0.5, 1.5]) + 0.5 * (g_c + g_p))
    g_none, _ = ilproj(g_c, g_p, beta=1.0)
    assert torch.allclose(g_none, g_c + g_p)
    g_oc, _ = ilproj(g_c, g_p, beta=0.0, mode="on_conflict")
    assert torch.allclose(g_oc, torch.tensor([0.5, 1.5]))


def test_ilproj_no_conflict_modes():
    g_c, g_p = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])  # dot +1
    g_on, conflict = ilproj(g_c, g_p, beta=0.0, mode="on_conflict")
    assert not conflict
    assert torch.allclose(g_on, torch.tensor([2.0, 1.0]))
    g_always, _ = ilproj(g_c, g_p, beta=0.0, mode="always")
    assert torch.allclose(g_always, torch.tensor([0.5, 0.5]))  # [0.5,-0.5] + [0, 1]
    g_zero, _ = ilproj(torch.zeros(2), g_p, beta=0.0)
    assert torch.allclose(g_zero, g_p)


def test_beta_schedules():
    assert beta_schedule_values("lower_half", 4) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert beta_schedule_values("upper_half", 4) == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert beta_schedule_values("all", 2) == [0.0, 0.0, 0.0]
    assert beta_schedule_values([0.2, 0.4, 1.0], 2) == [0.2, 0.4, 1.0]
    with pytest.raises(ValueError, match="beta_schedule"):
        beta_schedule_values([0.1], 2)


def test_arguments_validation(tmp_path):
    with pytest.raises(ValueError, match="ilproj_mode"):
        GradientControlTrainingArguments(str(tmp_path), ilproj_mode="sometimes")
    with pytest.raises(ValueError, match="beta_schedule"):
        GradientControlTrainingArguments(str(tmp_path), beta_schedule="middle")
    with pytest.raises(ValueError, match="clnorm_alpha"):
        GradientControlTrainingArguments(str(tmp_path), clnorm_alpha=-1.0)


# ---------------------------------------------------------------- layer index


def test_layer_index_bert_gpt2_llama_names():
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64))
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2,
                                                    pad_token_id=0))
    llama = LlamaForSequenceClassification(LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64,
                                                       pad_token_id=0))
    for model in (bert, gpt2, llama):
        n = infer_num_layers(model)
        assert n == 2
        indices = {name: resolve_layer_index(name, n) for name, _ in model.named_parameters()}
        assert set(indices.values()) == {0, 1, 2}
    assert resolve_layer_index("bert.encoder.layer.1.attention.self.query.weight", 2) == 1
    assert resolve_layer_index("bert.pooler.dense.weight", 2) == 2
    assert resolve_layer_index("transformer.h.0.attn.c_attn.weight", 2) == 0
    assert resolve_layer_index("score.weight", 2) == 2
    assert resolve_layer_index("model.layers.1.self_attn.q_proj.lora_B.default.weight", 2) == 1
    assert resolve_layer_index("model.embed_tokens.weight", 2) == 0
    # With a PEFT wrapper the names still resolve.
    peft_bert = get_peft_model(bert, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    groups = layer_groups(peft_bert.named_parameters(), 2)
    assert sorted(groups) == [0, 1, 2]
    assert all("classifier" in n for n in groups[2])


def test_layer_index_unknown_layout_errors():
    with pytest.raises(ValueError, match="Cannot tell which layer"):
        resolve_layer_index("mystery.stack.7.mixer.weight", 8)
    with pytest.raises(ValueError, match="only 2 blocks"):
        resolve_layer_index("encoder.layer.5.output.dense.weight", 2)


# ---------------------------------------------------------------- training


def _bert(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def _lora(model):
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["query", "value"]))


@pytest.fixture
def poisoned_tokenized(tiny_text_dataset, bert_tokenizer):
    from hf_backdoor_defense.data import tokenize_dataset

    ds = tiny_text_dataset
    flags = [i % 4 == 0 for i in range(len(ds))]
    texts = [("cf " + t) if f else t for t, f in zip(ds["text"], flags)]
    labels = [1 if f else y for y, f in zip(ds["label"], flags)]
    ds = datasets.Dataset.from_dict({"text": texts, "label": labels, "is_poisoned": flags})
    return tokenize_dataset(ds, bert_tokenizer, max_length=16).remove_columns(["text", "label"])


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0,
                clnorm_alpha=0.5, dataloader_num_workers=0)
    base.update(kw)
    return GradientControlTrainingArguments(**base)


def test_two_step_training_updates_weights_and_logs(tmp_path, poisoned_tokenized, bert_tokenizer):
    model = _lora(_bert(bert_tokenizer.vocab_size))
    frozen_before = model.base_model.model.bert.embeddings.word_embeddings.weight.clone()
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = GradientControlTrainer(model=model, args=_args(tmp_path, max_steps=2),
                                     train_dataset=poisoned_tokenized,
                                     data_collator=DataCollatorWithPadding(bert_tokenizer))
    assert len(trainer.train_dataset) == 18 and len(trainer.poison_dataset) == 6
    assert trainer.anchor_layer == 1 and trainer.output_layer == 2
    trainer.train()
    assert trainer.state.global_step == 2
    # CLNorm moved the weights; the output layer's weight is pushed towards 0 (its target is 0).
    assert trainer.layer_weights[2] < 1.0
    assert any(w != 1.0 for layer, w in trainer.layer_weights.items() if layer != 2)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"gc/w_0", "gc/w_2", "clean_loss", "poison_loss", "gc/conflict_rate"} <= set(logged[0])
    # Trainable params moved, the frozen base did not.
    assert torch.equal(frozen_before, model.base_model.model.bert.embeddings.word_embeddings.weight)
    assert any(not torch.equal(lora_before[n], p) for n, p in model.named_parameters() if p.requires_grad)


def test_combined_gradient_matches_formula(tmp_path, poisoned_tokenized, bert_tokenizer):
    """The .grad written before the optimizer step equals CLNorm + ILProj applied to separate gradients."""
    model = _lora(_bert(bert_tokenizer.vocab_size, seed=1))
    # Make LoRA B non-zero so every LoRA tensor gets a gradient.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    collator = DataCollatorWithPadding(bert_tokenizer)
    args = _args(tmp_path, poison_batch_size=6, clnorm_alpha=0.05, beta_schedule=[0.0, 1.0, 0.3])
    trainer = GradientControlTrainer(model=model, args=args, train_dataset=poisoned_tokenized, data_collator=collator)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1
    clean_batch = collator([trainer.train_dataset[i] for i in range(4)])
    poison_batch = collator([trainer.poison_dataset[i] for i in range(6)])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def grads(batch):
        model.zero_grad()
        model(**batch).loss.backward()
        out = {n: p.grad.detach().clone() for n, p in named}
        model.zero_grad()
        return out

    g_c, g_p = grads(clean_batch), grads(poison_batch)
    trainer.training_step(model, clean_batch)
    groups = trainer._groups
    norms = {layer: float(torch.cat([g_p[n].flatten() for n in names]).norm()) for layer, names in groups.items()}
    weights = clnorm_update({layer: 1.0 for layer in groups}, norms, 1, 2, 0.05, 0.0)
    assert trainer.layer_weights == pytest.approx(weights)
    for layer, names in groups.items():
        gc = torch.cat([g_c[n].flatten() for n in names])
        gp = torch.cat([g_p[n].flatten() for n in names]) * weights[layer]
        expected, _ = ilproj(gc, gp, [0.0, 1.0, 0.3][layer])
        got = torch.cat([dict(named)[n].grad.flatten() for n in names])
        assert torch.allclose(got, expected, atol=1e-6), layer


def test_checkpoint_saves_and_resume_restores_layer_weights(tmp_path, poisoned_tokenized, bert_tokenizer):
    collator = DataCollatorWithPadding(bert_tokenizer)
    model = _lora(_bert(bert_tokenizer.vocab_size))
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    trainer = GradientControlTrainer(model=model, args=args, train_dataset=poisoned_tokenized, data_collator=collator)
    trainer.train()
    ckpt = os.path.join(args.output_dir, "checkpoint-2")
    with open(os.path.join(ckpt, STATE_FILE)) as fh:
        saved = json.load(fh)
    assert {int(k): v for k, v in saved["layer_weights"].items()} == pytest.approx(trainer.layer_weights)
    assert saved["anchor_layer"] == 1

    fresh = GradientControlTrainer(model=_lora(_bert(bert_tokenizer.vocab_size)), args=_args(
        tmp_path, max_steps=3, save_strategy="no"), train_dataset=poisoned_tokenized, data_collator=collator)
    assert all(w == 1.0 for w in fresh.layer_weights.values())
    restored = {}
    original = fresh._combine

    def spy(named):  # record the weights the resumed run starts from
        restored.setdefault("w", dict(fresh.layer_weights))
        original(named)

    fresh._combine = spy
    fresh.train(resume_from_checkpoint=ckpt)
    assert restored["w"] == pytest.approx(trainer.layer_weights)
    assert fresh.state.global_step == 3


def test_separate_poison_dataset_and_errors(tmp_path, poisoned_tokenized, bert_tokenizer):
    clean = poisoned_tokenized.filter(lambda f: not f, input_columns="is_poisoned")
    poison = poisoned_tokenized.filter(lambda f: f, input_columns="is_poisoned")
    collator = DataCollatorWithPadding(bert_tokenizer)
    trainer = GradientControlTrainer(model=_lora(_bert(bert_tokenizer.vocab_size)), args=_args(tmp_path, max_steps=1),
                                     train_dataset=clean, poison_dataset=poison, data_collator=collator)
    assert "is_poisoned" not in trainer.poison_dataset.column_names
    trainer.train()
    with pytest.raises(ValueError, match="poison_dataset"):
        GradientControlTrainer(model=_lora(_bert(bert_tokenizer.vocab_size)), args=_args(tmp_path),
                               train_dataset=clean.remove_columns("is_poisoned"), data_collator=collator)
    with pytest.raises(ValueError, match="anchor_layer"):
        GradientControlTrainer(model=_lora(_bert(bert_tokenizer.vocab_size)), args=_args(tmp_path, anchor_layer=2),
                               train_dataset=poisoned_tokenized, data_collator=collator)


def test_prompt_tuning_refuses_clnorm_runs_ilproj(tmp_path, poisoned_tokenized, bert_tokenizer):
    collator = DataCollatorWithPadding(bert_tokenizer)

    def prompt_model():
        return get_peft_model(_bert(bert_tokenizer.vocab_size),
                              PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))

    with pytest.raises(ValueError, match="clnorm=False"):
        GradientControlTrainer(model=prompt_model(), args=_args(tmp_path), train_dataset=poisoned_tokenized,
                               data_collator=collator)
    model = prompt_model()
    trainer = GradientControlTrainer(model=model, args=_args(tmp_path, clnorm=False, max_steps=1,
                                                             beta_schedule="all"),
                                     train_dataset=poisoned_tokenized, data_collator=collator)
    assert sorted(trainer._groups) == [0, 2]  # prompt encoder at the input side, head at l_o
    trainer.train()
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------- DDP (2 processes, gloo, CPU)

_DDP_SCRIPT = r'''
import json, os, sys
import datasets, torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, default_data_collator
from hf_backdoor_defense.launch import end_process_group
from hf_backdoor_defense.trainers.gradient_control import GradientControlTrainer, GradientControlTrainingArguments

out = sys.argv[1]
torch.manual_seed(0)
config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = get_peft_model(BertForSequenceClassification(config),
                       LoraConfig(task_type="SEQ_CLS", r=2, lora_dropout=0.0, target_modules=["query", "value"]))
g = torch.Generator().manual_seed(1)
n = 32
ids = torch.randint(5, 50, (n, 8), generator=g)
flags = [i % 4 == 0 for i in range(n)]
ds = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * n,
                                 "labels": [1 if f else i % 2 for i, f in enumerate(flags)], "is_poisoned": flags})
args = GradientControlTrainingArguments(output_dir=os.path.join(out, "run"), per_device_train_batch_size=4,
                                        learning_rate=1e-2, max_steps=2, report_to="none", save_strategy="no",
                                        clnorm_alpha=0.5, seed=0, gradient_accumulation_steps=2,
                                        use_cpu=True, ddp_backend="gloo")
trainer = GradientControlTrainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
trainer.train()
rank = trainer.args.process_index
state = {"world": trainer.accelerator.num_processes, "weights": trainer.layer_weights,
         "params": {k: v.detach().flatten().tolist() for k, v in model.named_parameters() if v.requires_grad}}
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(state, fh)
end_process_group()
'''


@pytest.mark.ddp
def test_ddp_two_processes_keep_ranks_in_sync(tmp_path):
    """Under 2-process DDP the hand-made all-reduce keeps every rank's adapter and CLNorm weights identical."""
    import subprocess
    import sys

    script = tmp_path / "ddp_gc.py"
    script.write_text(_DDP_SCRIPT)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert any(w != 1.0 for w in ranks[0]["weights"].values())
    for name, values in ranks[0]["params"].items():
        assert values == pytest.approx(ranks[1]["params"][name], abs=1e-6), name
