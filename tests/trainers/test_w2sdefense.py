"""W2SDefense: teacher model, collator, loss decomposition, padding, GA, checkpoints, bad inputs, 4-bit."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForSequenceClassification

from hf_backdoor_defense.trainers.teacher import W2STeacher, W2STeacherConfig, train_teacher
from hf_backdoor_defense.trainers.w2sdefense import (
    W2SDataCollator,
    W2SDefenseTrainer,
    W2SDefenseTrainingArguments,
    last_token_pool,
)

HIDDEN = 32


@pytest.fixture(scope="module")
def student_tokenizer():
    from hf_backdoor_defense.assets import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _llama(tok, num_labels=2, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        num_labels=num_labels,
    )
    return LlamaForSequenceClassification(config)


def _lora(model):
    cfg = LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]
    )
    return get_peft_model(model, cfg)


@pytest.fixture
def student(student_tokenizer):
    return _lora(_llama(student_tokenizer))


def _teacher(bert_tokenizer, width=HIDDEN, num_labels=2, seed=1):
    torch.manual_seed(seed)
    enc = BertModel(
        BertConfig(
            vocab_size=bert_tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    )
    config = W2STeacherConfig(
        encoder_config=enc.config, student_hidden_size=width, num_labels=num_labels, head_dropout=0.1
    )
    return W2STeacher(config, encoder=enc)


@pytest.fixture
def teacher(bert_tokenizer):
    return _teacher(bert_tokenizer)


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
    )
    base.update(kw)
    return W2SDefenseTrainingArguments(**base)


def _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, dataset, **kw):
    return W2SDefenseTrainer(
        model=student,
        teacher=teacher,
        teacher_tokenizer=bert_tokenizer,
        processing_class=student_tokenizer,
        args=_args(tmp_path, **kw),
        train_dataset=dataset,
    )


# ---------------------------------------------------------------- arguments
def test_presets_fill_only_unset_weights(tmp_path):
    args = _args(tmp_path, preset="sentence", gamma_feature=0.5)
    assert (args.alpha_ce, args.beta_kd, args.gamma_feature) == (3.0, 0.01, 0.5)
    args = _args(tmp_path)
    assert (args.alpha_ce, args.beta_kd, args.gamma_feature, args.temperature) == (5.0, 0.001, 0.001, 2.0)
    assert args.remove_unused_columns is False
    with pytest.raises(ValueError, match="beta_kd"):
        _args(tmp_path, preset=None, alpha_ce=1.0, gamma_feature=1.0)
    with pytest.raises(ValueError, match="preset"):
        _args(tmp_path, preset="style")
    with pytest.raises(ValueError, match="temperature"):
        _args(tmp_path, temperature=0.0)
    assert args.feature_distance == "squared_l2"
    with pytest.raises(ValueError, match="feature_distance.*cosine"):
        _args(tmp_path, feature_distance="l1")


# ---------------------------------------------------------------- pooling / collator
def test_last_token_pool_right_and_left():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_collator_tokenises_for_both(student_tokenizer, bert_tokenizer, tiny_text_dataset):
    collator = W2SDataCollator(student_tokenizer, bert_tokenizer, max_length=6, teacher_max_length=5)
    batch = collator([tiny_text_dataset[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= 6
    assert batch["teacher_input_ids"].shape[1] <= 5
    assert batch["teacher_input_ids"][0, 0].item() == bert_tokenizer.cls_token_id
    assert batch["labels"].tolist() == tiny_text_dataset["label"][:3]
    with pytest.raises(ValueError, match="text_column"):
        collator([{"sentence": "x", "label": 0}])


# ---------------------------------------------------------------- loss
def _hand_loss(student, teacher, batch, a, b, c, T):
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        hidden = (
            student.get_base_model()
            .model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .last_hidden_state
        )
        last = batch["attention_mask"].sum(dim=1) - 1  # right padding
        phi_s = hidden[torch.arange(hidden.shape[0]), last]
        out = teacher(
            input_ids=batch["teacher_input_ids"],
            attention_mask=batch["teacher_attention_mask"],
            token_type_ids=batch["teacher_token_type_ids"],
        )
    y = batch["labels"]
    ce = -torch.log_softmax(s, -1)[torch.arange(len(y)), y]
    p_t = torch.softmax(out.logits / T, -1)
    p_s = torch.softmax(s / T, -1)
    kd = T * T * (p_t * (p_t.log() - p_s.log())).sum(-1)
    feat = ((out.features - phi_s) ** 2).sum(-1)
    return (a * ce + b * kd + c * feat).mean(), ce.mean(), kd.mean(), feat.mean()


def test_loss_decomposition_matches_hand_computation(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    student_tokenizer.padding_side = "right"
    a, b, c, T = 1.3, 0.7, 0.05, 3.0
    trainer = _trainer(
        tmp_path,
        student,
        teacher,
        student_tokenizer,
        bert_tokenizer,
        tiny_text_dataset,
        preset=None,
        alpha_ce=a,
        beta_kd=b,
        gamma_feature=c,
        temperature=T,
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = trainer.data_collator([tiny_text_dataset[i] for i in (0, 3, 7, 11, 2)])
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(batch))
    expected, ce, kd, feat = _hand_loss(student, teacher, batch, a, b, c, T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert logged["loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert logged["loss_kd"] == pytest.approx(kd.item(), rel=1e-3)  # tiny KL: float32 cancellation
    assert logged["loss_feature"] == pytest.approx(feat.item(), rel=1e-5)
    assert feat.item() > 0 and kd.item() > 0


def test_cosine_feature_distance_is_scale_free(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    """The opt-in cosine distance is 1 - cos(phi_t, phi_s) per example; CE and KL are unchanged."""
    student_tokenizer.padding_side = "right"
    a, b, c, T = 1.0, 0.5, 2.0, 2.0
    weights = dict(preset=None, alpha_ce=a, beta_kd=b, gamma_feature=c, temperature=T)
    trainer = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset,
                       feature_distance="cosine", **weights)
    batch = trainer.data_collator([tiny_text_dataset[i] for i in (0, 3, 7, 11, 2)])
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(batch))
        _, ce, kd, _ = _hand_loss(student, teacher, batch, a, b, c, T)
        hidden = student.get_base_model().model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        phi_s = hidden[torch.arange(hidden.shape[0]), batch["attention_mask"].sum(dim=1) - 1]
        phi_t = teacher(
            input_ids=batch["teacher_input_ids"],
            attention_mask=batch["teacher_attention_mask"],
            token_type_ids=batch["teacher_token_type_ids"],
        ).features
    cos = (phi_t * phi_s).sum(-1) / (phi_t.norm(dim=-1) * phi_s.norm(dim=-1))
    feat = (1 - cos).mean()
    torch.testing.assert_close(loss, a * ce + b * kd + c * feat, rtol=1e-5, atol=1e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert logged["loss_feature"] == pytest.approx(feat.item(), rel=1e-5)
    assert 0 < feat.item() < 2
    # Scale-free: the squared-L2 trainer on the same batch sees a different (scale-bound) distance.
    l2 = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset, **weights)
    with torch.no_grad():
        l2.compute_loss(student, dict(batch))
    assert l2._metrics["eval"]["loss_feature"][-1] == pytest.approx(((phi_t - phi_s) ** 2).sum(-1).mean().item(),
                                                                    rel=1e-5)


def test_padding_side_equivalence(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    trainer = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset)
    rows = [tiny_text_dataset[i] for i in (0, 4, 8, 2)]
    student.eval()
    results = {}
    for side in ("right", "left"):
        student_tokenizer.padding_side = side
        batch = trainer.data_collator(rows)
        with torch.no_grad():
            logits, feats = trainer._student_forward(student, batch)
            loss = trainer.compute_loss(student, dict(batch))
        results[side] = (logits, feats, loss)
    student_tokenizer.padding_side = "right"
    for r, l_ in zip(results["right"], results["left"]):
        torch.testing.assert_close(r, l_, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- training
@pytest.mark.slow
def test_training_freezes_teacher_logs_components_and_checkpoints_without_teacher(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_lora = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    trainer = _trainer(
        tmp_path,
        student,
        teacher,
        student_tokenizer,
        bert_tokenizer,
        tiny_text_dataset,
        max_steps=4,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_teacher[k]), k
    assert not teacher.training
    changed = [
        n for n, p in student.named_parameters() if p.requires_grad and not torch.equal(p, before_lora[n])
    ]
    assert any("lora" in n for n in changed) and any("score" in n for n in changed)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for h in logs:
        assert {"loss_ce", "loss_kd", "loss_feature"} <= set(h)
        # the logged total is (close to) the weighted sum of the logged components
        expected = 5.0 * h["loss_ce"] + 0.001 * h["loss_kd"] + 0.001 * h["loss_feature"]
        assert h["loss"] == pytest.approx(expected, rel=0.02)

    ckpt = tmp_path / "out" / "checkpoint-2"
    with safe_open(str(ckpt / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k or "score" in k for k in keys)
    assert not any("teacher" in k or "encoder" in k or "projection" in k for k in keys)
    assert not list(ckpt.glob("*teacher*"))

    # resume from the step-2 checkpoint with a fresh student: ends at step 4
    fresh = _lora(_llama(student_tokenizer, seed=5))
    resumed = _trainer(
        tmp_path,
        fresh,
        teacher,
        student_tokenizer,
        bert_tokenizer,
        tiny_text_dataset,
        max_steps=4,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
    )
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 4
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_gradient_accumulation_matches_full_batch(
    tmp_path, student_tokenizer, bert_tokenizer, tiny_text_dataset, teacher
):
    four = tiny_text_dataset.select([0, 1, 6, 7])
    finals = []
    for bs, ga in ((4, 1), (2, 2)):
        model = _lora(_llama(student_tokenizer, seed=3))
        trainer = _trainer(
            tmp_path / f"{bs}",
            model,
            teacher,
            student_tokenizer,
            bert_tokenizer,
            four,
            max_steps=1,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            warmup_steps=0,
        )
        trainer.train()
        finals.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    init = {n: p for n, p in _lora(_llama(student_tokenizer, seed=3)).named_parameters() if p.requires_grad}
    moved = max((finals[0][n] - init[n]).abs().max().item() for n in init)
    assert moved > 1e-4
    for n in finals[0]:
        torch.testing.assert_close(finals[0][n], finals[1][n], rtol=1e-4, atol=1e-6)


def test_evaluate_reports_components(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    trainer = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset)
    metrics = trainer.evaluate(eval_dataset=tiny_text_dataset.select(range(8)))
    assert {"eval_loss", "eval_loss_ce", "eval_loss_kd", "eval_loss_feature"} <= set(metrics)


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs(tmp_path, student_tokenizer, bert_tokenizer, tiny_text_dataset):
    def make(model, teach, ds=tiny_text_dataset, **kw):
        return _trainer(tmp_path, model, teach, student_tokenizer, bert_tokenizer, ds, **kw)

    with pytest.raises(ValueError, match="num_labels=2"):
        make(_lora(_llama(student_tokenizer)), _teacher(bert_tokenizer, num_labels=3))
    with pytest.raises(ValueError, match=f"student_hidden_size={HIDDEN}"):
        make(_lora(_llama(student_tokenizer)), _teacher(bert_tokenizer, width=48))
    renamed = tiny_text_dataset.rename_column("text", "sentence")
    with pytest.raises(ValueError, match="text_column"):
        make(_lora(_llama(student_tokenizer)), _teacher(bert_tokenizer), ds=renamed)
    # ... and the fix named in the message works
    make(_lora(_llama(student_tokenizer)), _teacher(bert_tokenizer), ds=renamed, text_column="sentence")
    no_pad = _llama(student_tokenizer)
    no_pad.config.pad_token_id = None
    with pytest.raises(ValueError, match="pad_token_id"):
        make(_lora(no_pad), _teacher(bert_tokenizer))


# ---------------------------------------------------------------- teacher
def test_train_teacher_saves_and_reloads(tmp_path, bert_tokenizer, tiny_text_dataset):
    torch.manual_seed(0)
    enc_dir = tmp_path / "enc"
    BertModel(
        BertConfig(
            vocab_size=bert_tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(enc_dir)
    bert_tokenizer.save_pretrained(enc_dir)
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "teacher"),
        num_train_epochs=6,
        learning_rate=5e-3,
        per_device_train_batch_size=12,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    teacher, tok = train_teacher(
        enc_dir, 40, tiny_text_dataset, output_dir=tmp_path / "teacher", args=args, max_length=16
    )
    assert teacher.config.num_labels == 2 and teacher.feature_size == 40 and not teacher.training
    cfg = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert cfg["model_type"] == "w2s_teacher" and "auto_map" not in cfg
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    reloaded = W2STeacher.from_pretrained(tmp_path / "teacher").eval()
    enc = tok(list(tiny_text_dataset["text"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = teacher(**enc), reloaded(**enc)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.features.shape == (24, 40) and (a.features >= 0).all()
    # it learned the (separable) training set
    assert (a.logits.argmax(-1) == torch.tensor(list(tiny_text_dataset["label"]))).float().mean() >= 0.9
    with pytest.raises(ValueError, match="label_column"):
        train_teacher(enc_dir, 40, tiny_text_dataset.rename_column("label", "y"), output_dir=tmp_path / "t2")


# ---------------------------------------------------------------- 4-bit student
def test_four_bit_student_trains_a_step(
    tmp_path, student_tokenizer, bert_tokenizer, tiny_text_dataset, teacher
):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    path = tmp_path / "llama"
    _llama(student_tokenizer).save_pretrained(path)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = LlamaForSequenceClassification.from_pretrained(path, quantization_config=q, dtype=torch.float32)
    assert "Linear4bit" in type(base.model.layers[0].self_attn.q_proj).__name__
    model = _lora(base)
    trainer = _trainer(
        tmp_path, model, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset, max_steps=1
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    out = trainer.train()
    assert torch.isfinite(torch.tensor(out.training_loss))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_dataset_without_classlabel_ok(tmp_path, student, teacher, student_tokenizer, bert_tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["good", "bad", "fine film", "awful"], "label": [1, 0, 1, 0]})
    trainer = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, ds, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------- 2-process DDP (gloo, CPU)
@pytest.mark.ddp
def test_ddp_two_processes_matches_single_process(tmp_path):
    """One SGD step on 4 examples: 2 processes x 2 examples == 1 process x 4 examples."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        pytest.skip("accelerate CLI not found")
    worker = Path(__file__).resolve().parents[1] / "ddp" / "w2s_worker.py"
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((out / "log_history.json").read_text())
    assert history["world_size"] == 2
    assert {"loss_ce", "loss_kd", "loss_feature"} <= set(history["log_history"][0])
    ddp_params = load_file(str(out / "trainable.safetensors"))

    spec = importlib.util.spec_from_file_location("w2s_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    single = module.run(str(tmp_path / "single"), per_device_batch=4)
    assert set(single) == set(ddp_params)
    for name, value in single.items():
        torch.testing.assert_close(ddp_params[name], value, rtol=1e-4, atol=1e-6)


def test_remove_unused_columns_true_keeps_text(tmp_path, student, teacher, student_tokenizer, bert_tokenizer):
    ds = datasets.Dataset.from_dict(
        {"text": ["good", "bad", "fine film", "awful"], "label": [1, 0, 1, 0], "is_poisoned": [False] * 4}
    )
    with pytest.warns(UserWarning, match="remove_unused_columns"):
        trainer = _trainer(
            tmp_path,
            student,
            teacher,
            student_tokenizer,
            bert_tokenizer,
            ds,
            max_steps=1,
            remove_unused_columns=True,
        )
    trainer.train()
    assert trainer.state.global_step == 1


def test_musclelora_student_trains(tmp_path, student_tokenizer, bert_tokenizer, tiny_text_dataset, teacher):
    """The trainer is adapter-agnostic: a MuScleLoRA student (paper defaults per architecture) trains too."""
    from hf_backdoor_defense import MuScleLoRAConfig

    model = get_peft_model(_llama(student_tokenizer), MuScleLoRAConfig(task_type="SEQ_CLS"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = _trainer(
        tmp_path, model, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset, max_steps=2
    )
    trainer.train()
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert any("musclelora" in n.lower() for n in changed), changed
    assert {"loss_ce", "loss_kd", "loss_feature"} <= set(trainer.state.log_history[0])


def test_authors_feature_alignment_pulls_every_token_to_the_last_teacher_feature(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    student_tokenizer.padding_side = "right"
    weights = dict(preset=None, alpha_ce=1.0, beta_kd=0.5, gamma_feature=0.1, temperature=2.0)
    trainer = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset,
                       feature_alignment="authors", **weights)
    batch = trainer.data_collator([tiny_text_dataset[i] for i in (0, 3, 7, 11, 2)])
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(batch))
        _, ce, kd, _ = _hand_loss(student, teacher, batch, 1.0, 0.5, 0.1, 2.0)
        out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        tokens = out.hidden_states[-1]  # [B, L, H], padding included
        phi_t = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"],
                        token_type_ids=batch["teacher_token_type_ids"]).features
    feat = (tokens - phi_t[-1]).pow(2).sum(-1).mean()
    torch.testing.assert_close(loss, ce + 0.5 * kd + 0.1 * feat, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="squared_l2"):
        _args(tmp_path, feature_alignment="authors", feature_distance="cosine")
    with pytest.raises(ValueError, match="feature_alignment"):
        _args(tmp_path, feature_alignment="tokens")


def test_gradient_shares_are_logged_and_sum_to_one(
    tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset
):
    trainer = _trainer(tmp_path, student, teacher, student_tokenizer, bert_tokenizer, tiny_text_dataset,
                       gradient_shares=True, max_steps=2, logging_steps=1)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "grad_share_ce" in h]
    assert len(logged) == 2
    for entry in logged:
        shares = [entry[f"grad_share_{k}"] for k in ("ce", "kd", "feature")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6) and all(0 <= x <= 1 for x in shares)
        assert entry["grad_share_ce"] > entry["grad_share_kd"]  # word preset: a = 5 against b = 0.001


def test_authors_arguments_are_the_authors_schedule(tmp_path):
    from hf_backdoor_defense.trainers.w2sdefense import authors_arguments

    args = authors_arguments(str(tmp_path / "out"), use_cpu=True)
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.learning_rate) == (32, 5, 2e-4)
    assert args.weight_decay == 0.01 and args.max_grad_norm == 0.0 and args.load_best_model_at_end
    assert (args.alpha_ce, args.beta_kd, args.gamma_feature) == (5.0, 0.001, 0.001)
    assert authors_arguments(str(tmp_path / "o"), num_train_epochs=3, use_cpu=True).num_train_epochs == 3
