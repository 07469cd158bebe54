"""The re-tuning scenario runner and the `hbd scenario` command, end to end on tiny data."""

from __future__ import annotations

import json
import os

import datasets
import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from hf_backdoor_defense.attacks import BadNets
from hf_backdoor_defense.scenario import (
    RESULTS_FILE,
    RetuningScenarioConfig,
    alignment_retune_defense,
    load_shift,
    purifier_defense,
    run_retuning_scenario,
)

FEATURES = datasets.Features({"text": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=["negative", "positive"])})


@pytest.fixture
def tiny_model_dir(tmp_path, bert_tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def domains(tiny_text_dataset):
    """Attacker domain = the conftest reviews; user domain = reworded reviews; a shared-style test set."""
    pos = ["really enjoyed this one", "great fun and smart", "a lovely heartfelt story", "superb and moving"]
    neg = ["boring and far too slow", "a waste of an evening", "awful dialogue throughout", "dreary and dull"]
    user = datasets.Dataset.from_dict({"text": (pos + neg) * 2, "label": ([1] * 4 + [0] * 4) * 2}, features=FEATURES)
    test = datasets.Dataset.from_dict({"text": pos + neg, "label": [1] * 4 + [0] * 4}, features=FEATURES)
    return tiny_text_dataset, user, test


def _config(tmp_path, method, **kw):
    base = dict(output_dir=str(tmp_path / f"run-{method}"), shift="custom", attacker_method=method, seed=0,
                max_length=16, attacker_epochs=8, attacker_learning_rate=5e-3, user_epochs=1,
                user_learning_rate=1e-3, batch_size=8, eval_batch_size=16, disable_progress_bar=True,
                gradient_control={"clnorm_alpha": 0.1})
    base.update(kw)
    return RetuningScenarioConfig(**base)


@pytest.mark.parametrize("method", ["vanilla", "gradient_control"])
@pytest.mark.slow
def test_scenario_end_to_end(tmp_path, tiny_model_dir, domains, method):
    attacker, user, test = domains
    attack = BadNets(triggers=("cf",), poison_rate=0.25, target_label=1, seed=0)
    seen = {}

    def probe_defense(model, context):
        # A defense sees the published adapter, trainable, and the user's clean data.
        seen["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seen["user_train"] = len(context.user_train)
        seen["adapter_dir"] = context.adapter_dir
        return model

    config = _config(tmp_path, method)
    results = run_retuning_scenario(
        tiny_model_dir, config, attack=attack,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]),
        attacker_dataset=attacker, user_dataset=user, test_dataset=test,
        defenses={"identity": probe_defense},
    )
    assert set(results["stages"]) == {"attack", "defense/identity", "retune"}
    for stage in results["stages"].values():
        assert 0.0 <= stage["cacc"] <= 1.0 and 0.0 <= stage["lfr"] <= 1.0
        assert stage["n_clean"] == 8 and stage["n_triggered"] == 4  # the non-target half of the test set
    # The identity defense evaluates the very adapter that was published.
    assert results["stages"]["defense/identity"]["lfr"] == results["stages"]["attack"]["lfr"]
    assert results["stages"]["defense/identity"]["cacc"] == results["stages"]["attack"]["cacc"]
    assert seen["trainable"] > 0 and seen["user_train"] == 16
    # 8 epochs at a high learning rate on 24 examples plant the trigger.
    assert results["stages"]["attack"]["lfr"] >= 0.75
    assert results["attack"]["n_poisoned"] == 6
    # Both adapters are loadable safetensors adapters, and re-tuning changed the weights.
    attacked = load_file(os.path.join(results["adapters"]["attacker"], "adapter_model.safetensors"))
    retuned = load_file(os.path.join(results["adapters"]["user"], "adapter_model.safetensors"))
    assert attacked.keys() == retuned.keys()
    assert any(not torch.equal(attacked[k], retuned[k]) for k in attacked)
    base = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, results["adapters"]["user"])
    with open(os.path.join(config.output_dir, RESULTS_FILE)) as fh:
        assert json.load(fh)["stages"] == results["stages"]
    with pytest.raises(FileExistsError):
        run_retuning_scenario(tiny_model_dir, config, attack=attack, attacker_dataset=attacker,
                              user_dataset=user, test_dataset=test)


def test_scenario_with_a_purifier_defense(tmp_path, tiny_model_dir, domains):
    from hf_backdoor_defense.purification import FineMixing

    attacker, user, test = domains
    attack = BadNets(triggers=("cf",), poison_rate=0.25, target_label=1, seed=0)
    inner = purifier_defense(FineMixing(ratio=0.5, seed=0), num_clean=8)
    report = {}

    def checked(model, context):
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        purified = inner(model, context)
        after = dict(purified.named_parameters())
        report["changed"] = sum(int(not torch.equal(before[n], after[n])) for n in before)
        report["same_object"] = purified is model
        return purified

    results = run_retuning_scenario(
        tiny_model_dir, _config(tmp_path, "gradient_control", attacker_epochs=2, user_epochs=0),
        attack=attack, peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
        attacker_dataset=attacker, user_dataset=user, test_dataset=test,
        defenses={"fine-mixing": checked},
    )
    assert "defense/fine-mixing" in results["stages"]
    assert report["changed"] > 0 and not report["same_object"]
    # user_epochs=0: the user adapter is the published one.
    assert results["stages"]["retune"] == results["stages"]["attack"]


@pytest.mark.slow
def test_alignment_retune_defense_re_tunes_the_published_adapter_with_gradient_alignment(tmp_path, tiny_model_dir,
                                                                                          domains):
    attacker, user, test = domains
    config = _config(tmp_path, "gradient_control", attacker_epochs=1, user_epochs=1)
    results = run_retuning_scenario(
        tiny_model_dir, config, attack=BadNets(triggers=("cf",), poison_rate=0.25, target_label=1, seed=0),
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
        attacker_dataset=attacker, user_dataset=user, test_dataset=test,
        defenses={"musclelora-retune": alignment_retune_defense(num_reference=4)},
    )
    assert set(results["stages"]["defense/musclelora-retune"]) >= {"cacc", "lfr"}
    log = json.loads((tmp_path / "run-gradient_control" / "defense-musclelora-retune" / "alignment_log.json")
                     .read_text())["log"]
    assert log and all("alignment/reference_loss" in row and "alignment/cosine" in row for row in log)
    with pytest.raises(ValueError, match="num_reference"):
        alignment_retune_defense(num_reference=0)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="shift"):
        RetuningScenarioConfig(output_dir=str(tmp_path), shift="imdb")
    with pytest.raises(ValueError, match="attacker_method"):
        RetuningScenarioConfig(output_dir=str(tmp_path), attacker_method="badnets")
    with pytest.raises(ValueError, match="custom"):
        run_retuning_scenario("unused", RetuningScenarioConfig(output_dir=str(tmp_path), shift="custom"))
    with pytest.raises(ValueError, match="trigger_room"):
        RetuningScenarioConfig(output_dir=str(tmp_path), max_length=16, trigger_room=13)
    with pytest.raises(ValueError, match="eval_split"):
        RetuningScenarioConfig(output_dir=str(tmp_path), eval_split="train")
    with pytest.raises(ValueError, match="test_dataset"):
        RetuningScenarioConfig(output_dir=str(tmp_path), shift="custom", eval_split="validation")


@pytest.mark.slow
def test_eval_split_validation_scores_the_validation_rows(tmp_path, tiny_model_dir, monkeypatch):
    """Choosing settings on validation: every stage is scored on the shift's validation split, never on test."""
    from hf_backdoor_defense import scenario
    from hf_backdoor_defense.data import load_text_classification

    scored = []
    real = scenario.stage_metrics

    def spy(model, tokenizer, test, attack, **kw):
        scored.append(set(test["text"]))
        return real(model, tokenizer, test, attack, **kw)

    monkeypatch.setattr(scenario, "stage_metrics", spy)
    config = RetuningScenarioConfig(output_dir=str(tmp_path / "val"), shift="rotten_tomatoes", eval_split="validation",
                                    attacker_method="vanilla", max_length=16, trigger_room=None, attacker_epochs=0,
                                    user_epochs=0, max_attacker_samples=8, max_user_samples=8, max_test_samples=40,
                                    disable_progress_bar=True)
    results = run_retuning_scenario(tiny_model_dir, config, attack=BadNets(triggers=("cf",), seed=0))
    rt = load_text_classification("rotten_tomatoes")
    assert len(scored) == 2 and scored[0] == scored[1] and len(scored[0]) == 40
    assert scored[0] <= set(rt["validation"]["text"])
    assert not scored[0] & set(rt["test"]["text"])
    assert results["config"]["eval_split"] == "validation"


def test_trigger_room_cuts_every_set_before_poisoning(tmp_path, tiny_model_dir, bert_tokenizer):
    long = datasets.Dataset.from_dict({"text": [" ".join(["fine"] * 30)] * 8, "label": [0, 1] * 4},
                                      features=FEATURES)
    seen = {}

    def probe(model, context):
        seen["user_train"] = list(context.user_train["text"])
        return model

    run_retuning_scenario(
        tiny_model_dir, _config(tmp_path, "vanilla", attacker_epochs=0, user_epochs=0, trigger_room=4),
        attack=BadNets(triggers=("cf",), poison_rate=0.25, target_label=1, seed=0),
        attacker_dataset=long, user_dataset=long, test_dataset=long, defenses={"probe": probe})
    # 16 - [CLS] - [SEP] - 4 = 10 tokens of text: a trigger inserted anywhere still fits in 16
    assert {len(bert_tokenizer.tokenize(t)) for t in seen["user_train"]} == {10}
    assert long["text"][0].count("fine") == 30  # the caller's data is untouched


@pytest.mark.slow
def test_rotten_tomatoes_shift_halves_are_disjoint():
    attacker, user, test = load_shift("rotten_tomatoes", seed=0)
    assert abs(len(attacker) - len(user)) <= 1
    assert not set(attacker["text"]) & set(user["text"])
    assert len(test) > 0


@pytest.mark.slow
def test_cli_scenario(tmp_path, tiny_model_dir, domains):
    from hf_backdoor_defense.commands import scenario as command

    attacker, user, test = domains
    files = {}
    for name, ds in (("attacker", attacker), ("user", user), ("test", test)):
        files[name] = str(tmp_path / f"{name}.csv")
        ds.to_csv(files[name])
    import argparse

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-run"
    args = parser.parse_args([
        "scenario", "--model", tiny_model_dir, "--shift", "custom", "--attacker-data", files["attacker"],
        "--user-data", files["user"], "--test-data", files["test"], "--attacker", "vanilla",
        "--output", str(out), "--attacker-epochs", "1", "--user-epochs", "1", "--batch-size", "8",
        "--max-length", "16", "--attack", "badnets", "--triggers", "cf", "--poison-rate", "0.25", "--lora-r", "2", "--quiet",
        "--defense", "musclelora-retune", "--defense-clean-samples", "4",
    ])
    assert args.func(args) == 0
    with open(out / RESULTS_FILE) as fh:
        results = json.load(fh)
    assert set(results["stages"]) == {"attack", "defense/musclelora-retune", "retune"}
    assert results["config"]["attacker_method"] == "vanilla"
