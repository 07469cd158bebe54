"""The mean-pooled sequence classifiers and the encoder setups, on tiny random encoders saved to disk."""

from __future__ import annotations

import json

import pytest
import torch

from hf_backdoor_defense.models import (
    AutoModelForMeanPooledSequenceClassification,
    head_module_names,
    is_mean_pooled,
    load_sequence_classifier,
)


@pytest.fixture
def base_dir(tmp_path, bert_tokenizer):
    """A tiny random BertModel (the shape of a sentence-transformer checkpoint: no head) with its tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path / "base")
    bert_tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _batch(tokenizer):
    return tokenizer(["a fine and moving film", "dull"], padding=True, return_tensors="pt")


def test_mean_pooled_loads_encoder_weights_saves_and_reloads_identically(base_dir, tmp_path, bert_tokenizer):
    from transformers import BertModel

    model = AutoModelForMeanPooledSequenceClassification.from_pretrained(base_dir, num_labels=3).eval()
    assert type(model).__name__ == "BertForMeanPooledSequenceClassification"
    assert not any("pooler" in n for n, _ in model.named_parameters())
    encoder = BertModel.from_pretrained(base_dir)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    batch = _batch(bert_tokenizer)
    logits = model(**batch).logits
    assert logits.shape == (2, 3)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert is_mean_pooled(config) and config["model_type"] == "bert"
    for reloaded in (load_sequence_classifier(tmp_path / "saved"),
                     AutoModelForMeanPooledSequenceClassification.from_pretrained(tmp_path / "saved")):
        assert torch.equal(reloaded.eval()(**batch).logits, logits)
    assert list((tmp_path / "saved").glob("*.safetensors"))


def test_mean_pooling_ignores_padding_and_gives_a_loss(base_dir, bert_tokenizer):
    model = AutoModelForMeanPooledSequenceClassification.from_pretrained(base_dir, num_labels=2).eval()
    alone = model(**bert_tokenizer(["dull"], return_tensors="pt")).logits
    padded = model(**_batch(bert_tokenizer)).logits[1:]
    assert torch.allclose(alone, padded, atol=1e-5)
    out = model(**_batch(bert_tokenizer), labels=torch.tensor([1, 0]))
    out.loss.backward()
    assert out.loss.item() > 0 and model.classifier.weight.grad is not None


def test_peft_seq_cls_trains_and_saves_the_head_and_reloads_logits(base_dir, tmp_path, bert_tokenizer):
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForMeanPooledSequenceClassification.from_pretrained(base_dir, num_labels=2),
                           LoraConfig(task_type="SEQ_CLS", r=4))  # PEFT's default targets for BERT
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier.modules_to_save" in n for n in trainable) and any("lora_A" in n for n in trainable)
    with torch.no_grad():  # move the head and the adapter away from their initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    batch = _batch(bert_tokenizer)
    logits = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForMeanPooledSequenceClassification.from_pretrained(base_dir, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert torch.allclose(reloaded(**batch).logits, logits, atol=1e-6)


def test_pooler_as_head_is_trained_by_lora(base_dir):
    from peft import LoraConfig, get_peft_model

    assert head_module_names("pooler_head") == ["classifier", "pooler"] and head_module_names("mean") == ["classifier"]
    model = load_sequence_classifier(base_dir, pooling="pooler_head", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    extra = [n for n in head_module_names("pooler_head") if n != "classifier"]
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, modules_to_save=extra))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("pooler.modules_to_save.default.dense" in n for n in trainable)
    frozen = get_peft_model(load_sequence_classifier(base_dir, pooling="cls", num_labels=2),
                            LoraConfig(task_type="SEQ_CLS", r=4))
    assert not any("pooler" in n for n, p in frozen.named_parameters() if p.requires_grad)


def test_musclelora_multiscale_goes_to_the_last_block_without_a_pooler(base_dir):
    from peft import get_peft_model

    from hf_backdoor_defense import MuScleLoRAConfig

    mean = get_peft_model(AutoModelForMeanPooledSequenceClassification.from_pretrained(base_dir, num_labels=2),
                          MuScleLoRAConfig(task_type="SEQ_CLS"))
    assert mean.peft_config["default"].multiscale_target_modules == {"layer.1.output.dense"}
    cls = get_peft_model(load_sequence_classifier(base_dir, pooling="cls", num_labels=2),
                         MuScleLoRAConfig(task_type="SEQ_CLS"))
    assert cls.peft_config["default"].multiscale_target_modules == {"pooler.dense"}


def test_other_encoders_and_errors(tmp_path, bert_tokenizer):
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=80)
    RobertaModel(config).save_pretrained(tmp_path / "roberta")
    model = AutoModelForMeanPooledSequenceClassification.from_pretrained(tmp_path / "roberta", num_labels=2)
    assert type(model).__name__ == "RobertaForMeanPooledSequenceClassification"
    ids = torch.tensor([[0, 100, 200, 2]])
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        load_sequence_classifier(tmp_path / "roberta", pooling="max")
    with pytest.raises(OSError, match="from_pretrained"):
        AutoModelForMeanPooledSequenceClassification()
