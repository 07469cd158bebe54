import pytest
import torch

from hf_backdoor_defense.data import tokenize_dataset
from hf_backdoor_defense.experiments import CellSettings, build_classifier, train_cell


@pytest.fixture
def tiny_bert_dir(tiny_bert, tmp_path):
    tiny_bert.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


@pytest.mark.parametrize("method, trainable_prefixes", [
    ("lora", {"lora_", "classifier"}), ("musclelora", {"musclelora_", "classifier"}),
])
def test_build_classifier_trains_only_the_adapter(tiny_bert_dir, method, trainable_prefixes):
    model, _ = build_classifier(method, tiny_bert_dir, 2, seed=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(any(prefix in n for prefix in trainable_prefixes) for n in names)


def test_train_cell_changes_weights_and_needs_a_reference(tiny_bert_dir, tiny_text_dataset, bert_tokenizer, tmp_path):
    data = tokenize_dataset(tiny_text_dataset, bert_tokenizer, max_length=16)
    settings = CellSettings(epochs=1, batch_size=8, adapter_lr=1e-2)
    with pytest.raises(ValueError, match="reference"):
        train_cell("musclelora", data, bert_tokenizer, tiny_bert_dir, settings, workdir=str(tmp_path))
    model, info = train_cell("musclelora", data, bert_tokenizer, tiny_bert_dir, settings, reference=data.select(range(8)),
                             workdir=str(tmp_path), disable_tqdm=True)
    assert not model.training and info["seconds_per_step"] > 0
    b = [p for n, p in model.named_parameters() if "musclelora_B" in n]
    assert b and any(torch.count_nonzero(p) > 0 for p in b)  # B starts at zero: training moved it


def test_trainers_package_exports_every_trainer():
    import hf_backdoor_defense.trainers as trainers

    for name in trainers.__all__:
        assert getattr(trainers, name).__name__ == name
    from hf_backdoor_defense.trainers import MuScleLoRATrainer, W2SDefenseTrainer  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        trainers.Nope  # noqa: B018


def test_lora_targets_follow_the_architecture():
    """PEFT's attention projections where it knows the architecture, query/value for the BERT-like rest."""
    from transformers import AlbertConfig, BertConfig, LlamaConfig

    from hf_backdoor_defense.experiments import lora_target_modules

    assert sorted(lora_target_modules(BertConfig())) == ["query", "value"]
    assert sorted(lora_target_modules(LlamaConfig())) == ["q_proj", "v_proj"]
    assert sorted(lora_target_modules(AlbertConfig())) == ["query", "value"]  # not in PEFT's table
