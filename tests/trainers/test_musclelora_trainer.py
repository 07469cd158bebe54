"""MuScleLoRATrainer: alignment math, reference sampling, presets, the trainer end to end, accumulation,
resume, bad inputs, full fine-tuning, causal LM, TRL SFT and a 4-bit base."""

from __future__ import annotations

import os

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
    TrainingArguments,
)

from hf_backdoor_defense.data import tokenize_dataset
from hf_backdoor_defense.trainers._reference import STATE_FILE, ReferenceSampler
from hf_backdoor_defense.trainers.gradient_alignment import align_gradient, mixing_ratio
from hf_backdoor_defense.trainers.musclelora import MuScleLoRATrainer, MuScleLoRATrainingArguments

# --------------------------------------------------------------------------------------------------------
# Pure math


def test_projection_forces_positive_sign():
    g = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    gc = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])  # <g, gc> = -1 < 0
    out = align_gradient(g, gc, reference_loss=1.0)
    assert out.mode == "projection"
    assert out.gradient.shape == g.shape
    # |<g,gc>| / ||gc||^2 * gc = 1 * gc: points along gc, not against it
    torch.testing.assert_close(out.gradient, gc)
    assert out.cosine == pytest.approx(-1.0 / (6**0.5))
    # inputs untouched
    torch.testing.assert_close(g, torch.tensor([[1.0, 2.0], [0.0, -1.0]]))


def test_projection_of_aligned_gradient_is_its_component():
    g = torch.tensor([3.0, 4.0])
    gc = torch.tensor([2.0, 0.0])
    out = align_gradient(g, gc, reference_loss=0.5, min_reference_loss=0.4)
    torch.testing.assert_close(out.gradient, torch.tensor([3.0, 0.0]))


def test_mix_uses_mu_when_reference_loss_is_low():
    g = torch.tensor([0.0, 2.0])
    gc = torch.tensor([1.0, 1.0])  # projection = |2| / 2 * gc = [1, 1]
    out = align_gradient(g, gc, reference_loss=0.1, min_reference_loss=0.4, mu=0.25)
    assert out.mode == "mix"
    torch.testing.assert_close(out.gradient, 0.75 * torch.tensor([1.0, 1.0]) + 0.25 * g)


def test_raw_when_reference_loss_low_and_no_mu():
    g = torch.tensor([0.5, -2.0])
    out = align_gradient(g, torch.tensor([1.0, 1.0]), reference_loss=0.1, min_reference_loss=0.4, mu=0.0)
    assert out.mode == "raw"
    torch.testing.assert_close(out.gradient, g)


def test_raw_when_reference_gradient_is_below_eps():
    g = torch.tensor([0.5, -2.0])
    out = align_gradient(g, torch.tensor([1e-9, 0.0]), reference_loss=5.0, eps=1e-6)
    assert out.mode == "raw"
    torch.testing.assert_close(out.gradient, g)
    # with mu > 0 the (undefined) projection counts as zero
    mixed = align_gradient(g, torch.zeros(2), reference_loss=5.0, mu=0.1)
    assert mixed.mode == "mix"
    torch.testing.assert_close(mixed.gradient, 0.1 * g)


def test_pure_projection_also_projects_at_a_reference_loss_of_exactly_zero():
    # a fitted reference batch: float32 loss 0.0, gradient still non-zero
    g, gc = torch.tensor([1.0, 1.0]), torch.tensor([1e-6, 0.0])
    out = align_gradient(g, gc, reference_loss=0.0, min_reference_loss=0.0)
    assert out.mode == "projection"
    torch.testing.assert_close(out.gradient, torch.tensor([1.0, 0.0]))
    assert align_gradient(g, gc, reference_loss=0.0, min_reference_loss=0.4).mode == "raw"


def test_skip_instead_of_raw_when_reference_gradient_vanishes():
    g = torch.tensor([0.5, -2.0])
    out = align_gradient(g, torch.zeros(2), reference_loss=5.0, vanishing="skip")
    assert out.mode == "skip"
    torch.testing.assert_close(out.gradient, torch.zeros(2))
    # a reference loss under the threshold is the paper's raw fallback, not a vanished gradient: still raw
    low = align_gradient(g, torch.ones(2), reference_loss=0.1, min_reference_loss=0.4, vanishing="skip")
    assert low.mode == "raw"
    # a live reference gradient is still projected
    assert align_gradient(g, torch.ones(2), reference_loss=5.0, vanishing="skip").mode == "projection"
    with pytest.raises(ValueError, match="vanishing"):
        align_gradient(g, torch.ones(2), reference_loss=5.0, vanishing="zero")


def test_global_gate_decides_for_every_tensor_at_once():
    g = torch.tensor([3.0, 4.0])
    # a tensor whose own reference gradient is zero is projected onto zero when the global gate is open
    opened = align_gradient(g, torch.zeros(2), reference_loss=1.0, gate_open=True)
    assert opened.mode == "projection"
    torch.testing.assert_close(opened.gradient, torch.zeros(2))
    # a live tensor falls back to the raw gradient when the global gate is closed
    closed = align_gradient(g, torch.tensor([2.0, 0.0]), reference_loss=1.0, gate_open=False)
    assert closed.mode == "raw"
    torch.testing.assert_close(closed.gradient, g)


def test_align_keeps_dtype_and_rejects_shape_mismatch():
    g = torch.randn(4, dtype=torch.bfloat16)
    assert (
        align_gradient(g, torch.randn(4, dtype=torch.bfloat16), reference_loss=1.0).gradient.dtype
        == torch.bfloat16
    )
    with pytest.raises(ValueError, match="shape"):
        align_gradient(torch.zeros(3), torch.zeros(4), reference_loss=1.0)


def test_mixing_ratio_schedule():
    assert mixing_ratio(0.5, 10, 1, 0.1) == 0.0
    assert mixing_ratio(1.0, 10, 1, 0.1) == 0.0
    assert mixing_ratio(5.5, 10, 1, 0.1) == pytest.approx(0.05)
    assert mixing_ratio(10.0, 10, 1, 0.1) == pytest.approx(0.1)
    assert mixing_ratio(3.0, 10, 1, 0.0) == 0.0
    assert mixing_ratio(2.0, 1, 1, 0.1) == pytest.approx(0.1)  # no span: full mu_max


# --------------------------------------------------------------------------------------------------------
# Reference sampler


def test_sampler_cycles_through_permutations_and_resumes():
    sampler = ReferenceSampler(num_examples=5, batch_size=3, seed=1)
    draws = [sampler.next_indices() for _ in range(5)]
    flat = [i for d in draws for i in d]
    assert sorted(flat[:5]) == list(range(5))  # first pass covers every example once
    assert sorted(flat[5:10]) == list(range(5))
    again = ReferenceSampler(num_examples=5, batch_size=3, seed=1)
    again.next_indices()
    state = again.state_dict()
    resumed = ReferenceSampler(num_examples=5, batch_size=3, seed=1)
    resumed.load_state_dict(state)
    assert [resumed.next_indices() for _ in range(4)] == draws[1:]
    assert ReferenceSampler(5, 3, seed=2).next_indices() != draws[0]


def test_sampler_ranks_split_the_global_batch(tmp_path):
    single = ReferenceSampler(num_examples=7, batch_size=4, seed=3)
    ranks = [ReferenceSampler(num_examples=7, batch_size=2, seed=3, world_size=2, rank=r) for r in range(2)]
    for _ in range(3):
        assert ranks[0].next_indices() + ranks[1].next_indices() == single.next_indices()
    path = ranks[0].save(str(tmp_path))
    assert os.path.basename(path) == STATE_FILE
    fresh = ReferenceSampler(num_examples=7, batch_size=2, seed=3, world_size=2, rank=0)
    assert fresh.load(str(tmp_path))
    assert fresh.next_indices() == ranks[0].next_indices()
    with pytest.raises(ValueError, match="seed"):
        ReferenceSampler(num_examples=7, batch_size=2, seed=4).load(str(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        ReferenceSampler(num_examples=0, batch_size=2)


# --------------------------------------------------------------------------------------------------------
# Arguments


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return MuScleLoRATrainingArguments(**base)


def test_presets_fill_only_unset_fields(tmp_path):
    enc = _args(tmp_path, alignment_preset="encoder")
    assert (enc.min_reference_loss, enc.alignment_start_epoch, enc.max_raw_gradient_ratio) == (0.4, 1.0, 0.1)
    assert enc.reference_batch_size == 4 and enc.reference_seed == 0
    llm = _args(tmp_path, alignment_preset="llm", min_reference_loss=0.2)
    assert (llm.min_reference_loss, llm.max_raw_gradient_ratio) == (0.2, 0.0)
    plain = _args(tmp_path)
    assert (plain.min_reference_loss, plain.alignment_start_epoch, plain.max_raw_gradient_ratio) == (0, 0, 0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("alignment_preset", "decoder"),
        ("reference_batch_size", 0),
        ("reference_size", -1),
        ("min_reference_loss", -0.1),
        ("alignment_start_epoch", -1.0),
        ("max_raw_gradient_ratio", 1.5),
        ("alignment_eps", -1.0),
        ("vanishing_reference_gradient", "zero"),
        ("optim", "lomo"),
        ("alignment_gate", "layer"),
        ("multiscale_learning_rate", 0.0),
    ],
)
def test_invalid_arguments_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        _args(tmp_path, **{field: value})


def test_fsdp_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot run under FSDP.*Unset `fsdp`"):
        _args(tmp_path, fsdp="full_shard")
    assert _args(tmp_path, gradient_alignment=False).gradient_alignment is False


def test_deepspeed_is_refused_before_anything_else(tmp_path):
    # TrainingArguments itself may fail first if deepspeed is not installed; either way it must not train.
    with pytest.raises((ValueError, ImportError), match="(?i)deepspeed"):
        _args(tmp_path, deepspeed={"zero_optimization": {"stage": 2}})


# --------------------------------------------------------------------------------------------------------
# Trainer end to end (tiny BERT, real MiniLM tokenizer)

TRAIN_TEXTS = [f"a good film number {i}" for i in range(12)] + [f"a bad movie number {i}" for i in range(12)]
REF_TEXTS = [f"lovely story part {i}" for i in range(6)] + [f"boring plot part {i}" for i in range(6)]


@pytest.fixture
def data(bert_tokenizer):
    train = datasets.Dataset.from_dict({"text": TRAIN_TEXTS, "label": [1] * 12 + [0] * 12})
    ref = datasets.Dataset.from_dict({"text": REF_TEXTS, "label": [1] * 6 + [0] * 6})
    return tokenize_dataset(train, bert_tokenizer, max_length=16), tokenize_dataset(
        ref, bert_tokenizer, max_length=16
    )


def _bert(tok, dropout=0.0, lora=True):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        classifier_dropout=dropout,
    )
    model = BertForSequenceClassification(config)
    if lora:
        # init_lora_weights=False: both factors random, so every tensor has a non-zero reference gradient
        model = get_peft_model(
            model,
            LoraConfig(
                task_type="SEQ_CLS",
                r=4,
                lora_alpha=8,
                target_modules=["query", "value"],
                init_lora_weights=False,
            ),
        )
    return model


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def test_trainer_trains_logs_and_differs_from_baseline(tmp_path, bert_tokenizer, data):
    train, ref = data
    model = _bert(bert_tokenizer, dropout=0.1)
    before = _trainable(model)
    trainer = MuScleLoRATrainer(
        model=model,
        args=_args(tmp_path, alignment_preset="encoder"),
        train_dataset=train,
        reference_dataset=ref,
        processing_class=bert_tokenizer,
    )
    trainer.train()
    after = _trainable(model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert len(trainer.alignment_history) == 3
    record = trainer.alignment_history[0]
    assert record["projection_tensors"] == len(before)  # ref loss ~0.69 > 0.4 at start: all projected
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert (
        logged
        and {"alignment/reference_loss", "alignment/cosine", "alignment/projection_share"} <= logged[0].keys()
    )

    baseline = _bert(bert_tokenizer, dropout=0.1)
    MuScleLoRATrainer(
        model=baseline,
        args=_args(tmp_path, gradient_alignment=False),
        train_dataset=train,
        processing_class=bert_tokenizer,
    ).train()
    base_after = _trainable(baseline)
    assert any(not torch.allclose(base_after[n], after[n]) for n in after)


class _GradRecorder(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_update_is_the_positive_projection_onto_the_reference_gradient(tmp_path, bert_tokenizer, data):
    """The gradient the optimizer sees at step 1 is parallel (cosine +1) to an independently computed g_c."""
    train, ref = data
    model = _bert(bert_tokenizer)
    reference_model = _bert(bert_tokenizer)  # same seed: same initial weights
    recorder = _GradRecorder()
    trainer = MuScleLoRATrainer(
        model=model,
        args=_args(tmp_path, max_steps=1, max_grad_norm=0.0),
        train_dataset=train,
        reference_dataset=ref,
        processing_class=bert_tokenizer,
        callbacks=[recorder],
    )
    trainer.train()
    indices = ReferenceSampler(len(ref), 4, seed=0).next_indices()
    batch = trainer.data_collator([trainer._reference_columns_dataset()[i] for i in indices])
    reference_model.train()
    reference_model(**batch).loss.backward()
    for name, p in reference_model.named_parameters():
        if not p.requires_grad:
            continue
        got = recorder.grads[name].flatten()
        cos = torch.nn.functional.cosine_similarity(got, p.grad.flatten(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-4), name


@pytest.mark.slow
def test_accumulation_2x4_equals_single_batch_of_8(tmp_path, bert_tokenizer, data):
    train, ref = data
    results = []
    for bs, accum in ((8, 1), (4, 2)):
        model = _bert(bert_tokenizer)
        args = _args(
            tmp_path,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=accum,
            reference_batch_size=8,
            max_steps=3,
            output_dir=str(tmp_path / f"acc{bs}"),
        )
        MuScleLoRATrainer(
            model=model,
            args=args,
            train_dataset=train,
            reference_dataset=ref,
            processing_class=bert_tokenizer,
        ).train()
        results.append(_trainable(model))
    _assert_same(results[0], results[1], atol=1e-5)


@pytest.mark.slow
def test_resume_continues_like_an_uninterrupted_run(tmp_path, bert_tokenizer, data):
    train, ref = data

    def run(out, resume=None):
        model = _bert(bert_tokenizer, dropout=0.1)
        args = _args(
            tmp_path,
            output_dir=str(out),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            reference_batch_size=5,  # 12 examples: draws straddle passes of the permutation
        )
        trainer = MuScleLoRATrainer(
            model=model,
            args=args,
            train_dataset=train,
            reference_dataset=ref,
            processing_class=bert_tokenizer,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, _trainable(model)

    straight, weights = run(tmp_path / "straight")
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    assert (checkpoint / STATE_FILE).is_file()
    resumed, resumed_weights = run(tmp_path / "resumed", resume=str(checkpoint))
    _assert_same(weights, resumed_weights, atol=1e-6)
    assert resumed._reference_sampler.state_dict() == straight._reference_sampler.state_dict()


# --------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_and_empty_reference_set(tmp_path, bert_tokenizer, data):
    train, ref = data
    with pytest.raises(ValueError, match="reference_dataset is required"):
        MuScleLoRATrainer(model=_bert(bert_tokenizer), args=_args(tmp_path), train_dataset=train)
    with pytest.raises(ValueError, match="empty"):
        MuScleLoRATrainer(
            model=_bert(bert_tokenizer),
            args=_args(tmp_path),
            train_dataset=train,
            reference_dataset=ref.select([]),
        )


def test_reference_labels_outside_label_set(tmp_path, bert_tokenizer, data):
    train, ref = data
    bad = ref.map(lambda ex, i: {"labels": 2 if i == 0 else ex["labels"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"outside the model's label set \[0, 2\)"):
        MuScleLoRATrainer(
            model=_bert(bert_tokenizer), args=_args(tmp_path), train_dataset=train, reference_dataset=bad
        )


def test_overlap_with_training_set_warns(tmp_path, bert_tokenizer, data):
    train, _ = data
    with pytest.warns(UserWarning, match="3 of 3 reference examples also appear in train_dataset"):
        MuScleLoRATrainer(
            model=_bert(bert_tokenizer),
            args=_args(tmp_path),
            train_dataset=train,
            reference_dataset=train.select([0, 1, 2]),
        )


def test_reference_size_subsamples_and_too_large_is_refused(tmp_path, bert_tokenizer, data):
    train, ref = data
    trainer = MuScleLoRATrainer(
        model=_bert(bert_tokenizer),
        args=_args(tmp_path, reference_size=5),
        train_dataset=train,
        reference_dataset=ref,
    )
    assert len(trainer.reference_dataset) == 5
    assert set(trainer.reference_dataset["text"]) <= set(REF_TEXTS)
    with pytest.raises(ValueError, match="reference_size=50"):
        MuScleLoRATrainer(
            model=_bert(bert_tokenizer),
            args=_args(tmp_path, reference_size=50),
            train_dataset=train,
            reference_dataset=ref,
        )


def test_plain_training_arguments_are_rejected(tmp_path, bert_tokenizer, data):
    train, ref = data
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(TypeError, match="MuScleLoRATrainingArguments"):
        MuScleLoRATrainer(model=_bert(bert_tokenizer), args=args, train_dataset=train, reference_dataset=ref)


# --------------------------------------------------------------------------------------------------------
# Other model set-ups


def test_full_fine_tuning(tmp_path, bert_tokenizer, data):
    train, ref = data
    model = _bert(bert_tokenizer, lora=False)
    before = _trainable(model)
    trainer = MuScleLoRATrainer(
        model=model,
        args=_args(tmp_path, max_steps=2),
        train_dataset=train,
        reference_dataset=ref,
        processing_class=bert_tokenizer,
    )
    trainer.train()
    assert trainer.alignment_history[0]["projection_tensors"] > 20
    after = _trainable(model)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


@pytest.fixture(scope="module")
def llama_tokenizer():
    from transformers import AutoTokenizer

    from hf_backdoor_defense.assets import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _tiny_llama(tok, hidden=64):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _lm_dataset(tok, texts):
    def encode(batch):
        enc = tok(batch["text"], truncation=True, max_length=24)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return datasets.Dataset.from_dict({"text": texts}).map(encode, batched=True, remove_columns=["text"])


def test_causal_lm_with_lora(tmp_path, llama_tokenizer):
    from transformers import DataCollatorForLanguageModeling

    model = get_peft_model(_tiny_llama(llama_tokenizer), LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=8))
    train = _lm_dataset(llama_tokenizer, TRAIN_TEXTS[:8])
    ref = _lm_dataset(llama_tokenizer, REF_TEXTS[:4])
    trainer = MuScleLoRATrainer(
        model=model,
        args=_args(tmp_path, max_steps=2, alignment_preset="llm"),
        train_dataset=train,
        reference_dataset=ref,
        data_collator=DataCollatorForLanguageModeling(llama_tokenizer, mlm=False),
    )
    trainer.train()
    assert len(trainer.alignment_history) == 2
    assert trainer.alignment_history[-1]["projection_tensors"] > 0


def test_trl_sft_variant(tmp_path, llama_tokenizer):
    from hf_backdoor_defense.trainers.musclelora_sft import MuScleLoRASFTConfig, MuScleLoRASFTTrainer

    model = get_peft_model(_tiny_llama(llama_tokenizer), LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=8))
    train = datasets.Dataset.from_dict({"text": TRAIN_TEXTS[:8]})
    ref = datasets.Dataset.from_dict({"text": REF_TEXTS[:4]})
    args = MuScleLoRASFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=4,
        max_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        alignment_preset="llm",
        max_length=24,
        disable_tqdm=True,
        logging_steps=1,
    )
    before = _trainable(model)
    trainer = MuScleLoRASFTTrainer(
        model=model, args=args, train_dataset=train, reference_dataset=ref, processing_class=llama_tokenizer
    )
    assert "input_ids" in trainer.reference_dataset.column_names  # went through SFT preparation
    trainer.train()
    assert len(trainer.alignment_history) == 2
    assert any(not torch.equal(before[n], p) for n, p in _trainable(model).items())


def test_4bit_base_trains_a_step(tmp_path, llama_tokenizer):
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, DataCollatorForLanguageModeling

    base_dir = tmp_path / "base"
    _tiny_llama(llama_tokenizer).save_pretrained(base_dir)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    base = LlamaForCausalLM.from_pretrained(base_dir, quantization_config=quant, dtype=torch.float32)
    assert "Linear4bit" in type(base.model.layers[0].self_attn.q_proj).__name__
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = get_peft_model(
        base, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=8, init_lora_weights=False)
    )
    before = _trainable(model)
    trainer = MuScleLoRATrainer(
        model=model,
        args=_args(tmp_path, max_steps=1, alignment_preset="llm"),
        train_dataset=_lm_dataset(llama_tokenizer, TRAIN_TEXTS[:4]),
        reference_dataset=_lm_dataset(llama_tokenizer, REF_TEXTS[:4]),
        data_collator=DataCollatorForLanguageModeling(llama_tokenizer, mlm=False),
    )
    trainer.train()
    assert trainer.alignment_history[0]["projection_tensors"] == len(before)
    assert any(not torch.equal(before[n], p) for n, p in _trainable(model).items())


def test_hf_argument_parser_reads_the_fields(tmp_path):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MuScleLoRATrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--alignment_preset",
            "encoder",
            "--max_raw_gradient_ratio",
            "0.2",
            "--gradient_alignment",
            "false",
            "--report_to",
            "none",
            "--use_cpu",
            "true",
        ]
    )
    assert args.gradient_alignment is False
    assert (args.min_reference_loss, args.max_raw_gradient_ratio) == (0.4, 0.2)
    with pytest.raises(SystemExit):
        HfArgumentParser(MuScleLoRATrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--alignment_preset", "decoder"]
        )


# --------------------------------------------------------------------------------------------------------
# The authors' details: per-part learning rates, the global gate, whole-epoch mixing, best-dev reload


def _musclelora_bert(tok):
    from hf_backdoor_defense.tuners.musclelora import MuScleLoRAConfig

    return get_peft_model(_bert(tok, lora=False), MuScleLoRAConfig(task_type="SEQ_CLS"))


def test_multiscale_learning_rate_gets_its_own_optimizer_group(tmp_path, bert_tokenizer, data):
    from hf_backdoor_defense.tuners.musclelora.model import multiscale_parameters

    train, ref = data
    model = _musclelora_bert(bert_tokenizer)
    multiscale = {id(p) for p in multiscale_parameters(model)}
    assert len(multiscale) == 2  # A and B of pooler.dense
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = MuScleLoRATrainer(model=model, args=_args(tmp_path, multiscale_learning_rate=1e-5, max_steps=1,
                                                        max_grad_norm=0.0, lr_scheduler_type="constant"),
                                train_dataset=train, reference_dataset=ref, processing_class=bert_tokenizer)
    trainer.train()
    groups = trainer.optimizer.param_groups
    own = [g for g in groups if any(id(p) in multiscale for p in g["params"])]
    assert own and all(g["lr"] == 1e-5 and all(id(p) in multiscale for p in g["params"]) for g in own)
    assert all(g["lr"] == 1e-2 for g in groups if g not in own and g["params"])
    # Adam's first step moves every weight with a gradient by about its learning rate (B factors: A's gradient
    # is zero while B is)
    for name, p in model.named_parameters():
        if p.requires_grad and "musclelora_B" in name:
            step = (p.detach() - before[name]).abs().max().item()
            assert 0 < step < 2e-5 if id(p) in multiscale else step > 1e-3, (name, step)
    plain = _bert(bert_tokenizer)  # a LoRA model has no multi-scale factors
    with pytest.raises(ValueError, match="multiscale_learning_rate"):
        MuScleLoRATrainer(model=plain, args=_args(tmp_path, multiscale_learning_rate=1e-5), train_dataset=train,
                          reference_dataset=ref, processing_class=bert_tokenizer).train()


@pytest.mark.slow
def test_global_gate_and_whole_epoch_mixing_in_the_trainer(tmp_path, bert_tokenizer, data):
    train, ref = data  # 24 examples, batch 4: 6 steps per epoch
    trainer = MuScleLoRATrainer(
        model=_bert(bert_tokenizer),
        args=_args(tmp_path, max_steps=-1, num_train_epochs=3, alignment_gate="global", alignment_eps=1e9,
                   alignment_start_epoch=1.0, max_raw_gradient_ratio=0.2, mix_by_whole_epochs=True),
        train_dataset=train, reference_dataset=ref, processing_class=bert_tokenizer)
    trainer.train()
    history = trainer.alignment_history
    assert len(history) == 18
    # a huge threshold closes the global gate: nothing is projected; mu moves only at epoch boundaries
    assert all(r["projection_tensors"] == 0 for r in history)
    mus = [r["mu"] for r in history]
    assert mus[:12] == [0.0] * 12 and mus[12:] == pytest.approx([0.1] * 6)
    assert all(r["raw_tensors"] > 0 for r in history[:6]) and all(r["mix_tensors"] > 0 for r in history[12:])


@pytest.mark.slow
def test_best_dev_checkpoint_is_reloaded_at_the_end(tmp_path, bert_tokenizer, data):
    import numpy as np

    train, ref = data
    dev = ref.select(range(0, 12, 2))

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    trainer = MuScleLoRATrainer(
        model=_musclelora_bert(bert_tokenizer),
        args=_args(tmp_path, max_steps=-1, num_train_epochs=3, eval_strategy="epoch", save_strategy="epoch",
                   load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=1,
                   gradient_accumulation_steps=2),
        train_dataset=train, reference_dataset=ref.select(range(1, 12, 2)), eval_dataset=dev,
        processing_class=bert_tokenizer, compute_metrics=accuracy)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    assert len(evals) == 3 and trainer.state.best_model_checkpoint
    best = max(h["eval_accuracy"] for h in evals)
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(best)


def test_model_card_names_the_defense_and_the_last_evaluation(tmp_path, bert_tokenizer, data):
    """`create_model_card` (what `push_to_hub` calls) writes this library's card, with the CACC / ASR that
    BackdoorEvalCallback logged at the last evaluation."""
    from hf_backdoor_defense.attacks import BadNets
    from hf_backdoor_defense.metrics import BackdoorEvalCallback

    train, ref = data
    clean = datasets.Dataset.from_dict({"text": REF_TEXTS, "label": [1] * 6 + [0] * 6})
    trainer = MuScleLoRATrainer(model=_bert(bert_tokenizer), args=_args(tmp_path, hub_model_id="me/bert-musclelora"),
                                train_dataset=train, eval_dataset=ref, reference_dataset=ref,
                                processing_class=bert_tokenizer)
    BackdoorEvalCallback.attach(trainer, bert_tokenizer, clean, BadNets(seed=0), max_length=16)
    scores = trainer.evaluate()
    trainer.create_model_card(dataset_name="toy reviews", attack="badnets")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: peft" in card and "- musclelora" in card and "Downscaling Frequency Space" in card
    assert f"| CACC (clean accuracy) | {100 * scores['eval_cacc']:.2f}% |" in card
    assert f"| ASR (attack success rate) | {100 * scores['eval_asr']:.2f}% |" in card
    assert 'AutoPeftModelForSequenceClassification.from_pretrained("me/bert-musclelora")' in card
    assert "Measured on dataset `toy reviews`, attack `badnets`." in card


def test_last_backdoor_metrics_reads_the_latest_evaluation():
    from hf_backdoor_defense.hub import last_backdoor_metrics

    history = [{"eval_cacc": 0.5, "eval_asr": 0.9}, {"loss": 0.3}, {"eval_cacc": 0.8, "eval_asr": 0.2, "epoch": 2}]
    assert last_backdoor_metrics(history) == {"cacc": 0.8, "asr": 0.2}
    assert last_backdoor_metrics([{"loss": 1.0}]) == {}
