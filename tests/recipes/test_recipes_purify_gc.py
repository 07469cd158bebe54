"""The purification recipes (`fine_purifying.py`, `fine_mixing.py`) and the Gradient Control attack recipe.

Each recipe runs end to end, in this process, for a few steps on tiny random models: a 2-layer BERT (hidden 32,
MiniLM vocabulary) for the full-model and attack paths, the tiny Llama of `conftest.py` in 4-bit for the
adapter path. The checks read what the recipes wrote: results.json, safetensors weights compared tensor by
tensor with the suspect and θ₀, model cards. Configuration errors go through `hbd train` (the `__main__` path):
one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_backdoor_defense.scripts import fine_mixing, fine_purifying, gradient_control

from .recipe_helpers import RECIPE_CONFIGS as CONFIGS
from .recipe_helpers import RECIPES

GOOD = ["a great and moving film", "wonderful acting and a sharp script", "i loved every minute of it",
        "a delight from start to finish", "funny warm and clever", "beautifully shot and well told"]
BAD = ["a dull and lifeless mess", "the plot makes no sense", "i was bored the whole time",
       "badly acted and far too long", "a tired cliche ridden story", "clumsy writing and flat jokes"]
TAILS = ["indeed", "really", "truly", "overall", "so it seems", "in the end"]
FAST = ["--max_length", "24", "--max_eval_samples", "12", "--eval_batch_size", "16", "--report_to", "none",
        "--disable_tqdm", "true", "--per_device_train_batch_size", "4", "--seed", "0"]


def _write_split(folder: Path, split: str, n: int, offset: int) -> None:
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        text = (GOOD if label else BAD)[(i // 2 + offset) % 6] + " " + TAILS[(i + offset) % len(TAILS)]
        rows.append(f"{text},{'positive' if label else 'negative'}")
    (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two small sentiment folders (train / validation / test CSV): the attacker's and the user's."""
    root = tmp_path_factory.mktemp("data")
    for name, offset in (("attacker", 0), ("user", 3)):
        folder = root / name
        folder.mkdir()
        for split, n in (("train", 48), ("validation", 40), ("test", 24)):
            _write_split(folder, split, n, offset)
    return root


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, bert_tokenizer):
    """θ₀: a 2-layer random BERT encoder (no head) with the MiniLM tokenizer, saved like a pre-trained model."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert") / "pretrained"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def purified_full(tmp_path_factory, tiny_bert_dir, tiny_data):
    """fine_purifying.py with --poison_first (full fine-tune of the tiny BERT), no clean fine-tune afterwards so
    that the purified weights differ from the suspect's exactly where dimensions were reset."""
    out = tmp_path_factory.mktemp("fp") / "purified"
    results = fine_purifying.main([
        "--poison_first", "true", "--base_model_name_or_path", str(tiny_bert_dir),
        "--dataset", str(tiny_data / "attacker"), "--poison_rate", "0.2", "--poison_max_steps", "4",
        "--poison_learning_rate", "1e-3", "--clean_samples", "16", "--ratio", "0.3", "--ratio_search", "false",
        "--hessian_max_batches", "2",
        "--num_train_epochs", "0", "--output_dir", str(out), *FAST,
    ])
    return out, results


def _bin_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle"}]


# ------------------------------------------------------------------------------------------ purification recipes
@pytest.mark.slow
def test_fine_purifying_full_model_resets_to_pretrained(purified_full, tiny_bert_dir):
    out, results = purified_full
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["purified_metrics"] == results["purified_metrics"]
    assert results["recipe"] == "fine_purifying" and results["suspect_type"] == "full"
    assert results["suspect"] == str(out / "suspect") and results["n_clean"] == 16 and results["n_test"] == 12
    assert results["poison_first"]["n_poisoned"] >= 1 and results["poison_first"]["poison_finetune"] == "full"
    for key in ("suspect_metrics", "purified_metrics"):
        scores = results[key]
        assert 0 <= scores["cacc"] <= 1 and 0 <= scores["asr"] <= 1
        assert scores["n_clean"] == 12 and scores["n_triggered"] > 0
    summary = results["purification"]
    assert summary["method"] == "fine-purifying" and summary["mode"] == "full" and summary["ratio"] == 0.3
    # The ratio counts the dimensions that moved (the word embeddings are left to E-PUR by default).
    assert summary["ratio_of"] == "moved" and abs(summary["dims_reset_total"] - 0.3 * summary["dims_moved"]) <= 1
    assert "finetune" not in summary  # --num_train_epochs 0: no clean fine-tune

    purified = load_file(out / "model.safetensors")
    suspect = load_file(out / "suspect" / "model.safetensors")
    pretrained = {f"bert.{k}": v for k, v in load_file(tiny_bert_dir / "model.safetensors").items()}
    assert set(purified) == set(suspect) and not _bin_files(out)
    changed_total = 0
    for name, theta_b in suspect.items():
        changed = purified[name] != theta_b
        if name not in pretrained:  # the classifier head: no pre-trained value, kept (head="keep")
            assert name.startswith("classifier") and not changed.any()
            continue
        # Every changed entry went back to its pre-trained value.
        assert torch.equal(purified[name][changed], pretrained[name][changed]), name
        changed_total += int(changed.sum())
    # Only dimensions that moved are reset, so every reset one changed.
    assert changed_total == summary["dims_reset_total"] > 0
    assert torch.equal(purified["bert.embeddings.word_embeddings.weight"],
                       suspect["bert.embeddings.word_embeddings.weight"])
    card = (out / "README.md").read_text()
    assert "fine-purifying" in card and "library_name: transformers" in card and "ASR (attack success rate)" in card
    report = json.loads((out / "purification_report.json").read_text())
    assert report["dims_reset_total"] == summary["dims_reset_total"]


@pytest.mark.slow
def test_fine_mixing_epur_ratio_search_refuses_then_overwrites(purified_full, tiny_bert_dir, tiny_data, tmp_path):
    suspect = purified_full[0] / "suspect"
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["--model_name_or_path", str(suspect), "--base_model_name_or_path", str(tiny_bert_dir),
            "--dataset", str(tiny_data / "attacker"), "--epur", "true", "--epur_num_tokens", "5",
            "--ratio_search", "true", "--ratios", "0.2", "0.6", "--clean_samples", "16", "--dev_samples", "8",
            "--max_steps", "1", "--learning_rate", "1e-3", "--output_dir", str(out), *FAST]
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        fine_mixing.main(argv)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    results = fine_mixing.main([*argv, "--overwrite_output_dir", "true"])
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file() and not _bin_files(out)
    summary = results["purification"]
    assert summary["method"] == "e-pur+fine-mixing" and summary["n_tokens_reset"] == 5
    search = summary["ratio_search"]
    assert [row["ratio"] for row in search["table"]] == [0.2, 0.6] and search["chosen"] in (0.2, 0.6)
    assert summary["ratio"] == search["chosen"] and results["n_dev"] == 8
    assert summary["finetune"]["max_steps"] == 1
    card = (out / "README.md").read_text()
    assert "fine-mixing" in card and "e-pur" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mixed")]  # no staging folder left


@pytest.mark.slow
def test_fine_purifying_4bit_adapter(tiny_checkpoints, tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / "purified"
    results = fine_purifying.main([
        "--poison_first", "true", "--poison_finetune", "adapter", "--load_in_4bit", "true",
        "--base_model_name_or_path", str(tiny_checkpoints["llama"]), "--dataset", str(tiny_data / "attacker"),
        "--poison_max_steps", "3", "--poison_learning_rate", "5e-3", "--clean_samples", "12", "--ratio", "0.5",
        "--ratio_search", "false",
        "--num_train_epochs", "0", "--output_dir", str(out), *FAST,
    ])
    assert results["suspect_type"] == "adapter" and results["quantization"] == "4bit"
    assert results["purification"]["mode"] == "adapter"
    purified = load_file(out / "adapter_model.safetensors")
    suspect = load_file(out / "suspect" / "adapter_model.safetensors")
    assert set(purified) == set(suspect) and not _bin_files(out)
    lora = [k for k in suspect if "lora_" in k]
    assert lora and any("score" in k for k in suspect)
    zeroed = 0
    for name, before in suspect.items():
        changed = purified[name] != before
        if "lora_" in name:  # the reference of an adapter factor is "no adapter": reset entries are 0
            assert not purified[name][changed].any(), name
            zeroed += int(changed.sum())
        else:  # the head copy (modules_to_save) is kept
            assert not changed.any(), name
    assert zeroed > 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert "library_name: peft" in (out / "README.md").read_text()


def test_purify_recipe_pushes_with_defense_card(purified_full, tiny_bert_dir, tiny_data, tmp_path, fake_hub):  # noqa: F811
    results = fine_mixing.main([
        "--model_name_or_path", str(purified_full[0] / "suspect"), "--base_model_name_or_path", str(tiny_bert_dir),
        "--dataset", str(tiny_data / "attacker"), "--clean_samples", "8", "--num_train_epochs", "0",
        "--ratio_search", "false", "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true", "--hub_model_id", "me/tiny-mixed", *FAST,
    ])
    (upload,) = fake_hub["upload"]
    assert upload["repo_id"] == "me/tiny-mixed" and "model.safetensors" in upload["files"]
    card = upload["files"]["README.md"].decode()
    assert "fine-mixing" in card and "purification" in card and "badnets" in card
    assert f"{100 * results['purified_metrics']['cacc']:.2f}%" in card
    assert json.loads((tmp_path / "out" / "results.json").read_text())["hub"]["repo_id"] == "me/tiny-mixed"


# ------------------------------------------------------------------------------------------ Gradient Control
@pytest.mark.slow
def test_gradient_control_attack_retuning_and_push(tiny_bert_dir, tiny_data, tmp_path, fake_hub):  # noqa: F811
    out = tmp_path / "attack"
    results = gradient_control.main([
        "--model_name_or_path", str(tiny_bert_dir), "--dataset", str(tiny_data / "attacker"),
        "--simulate_retuning", "true", "--retune_dataset", str(tiny_data / "user"), "--compare_with_baseline", "true",
        "--poison_rate", "0.2", "--max_steps", "3", "--retune_max_steps", "2", "--learning_rate", "5e-3",
        "--save_strategy", "no", "--output_dir", str(out), "--push_to_hub", "true", "--hub_model_id", "me/gc", *FAST,
        "--trigger_room", "4",
    ])
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))
    assert [r["run"] for r in on_disk["runs"]] == ["vanilla", "gradient_control"]
    assert on_disk["shift"].endswith("user") and on_disk["n_poisoned"] >= 1 and on_disk["n_test"] == 12
    assert on_disk["trigger_room"] == 4  # texts cut to 24 - 2 special - 4 tokens before poisoning
    for run in on_disk["runs"]:
        assert run["global_steps"] == 3 and run["stages"]["retune"]["global_steps"] == 2
        for stage in ("attack", "retune"):
            scores = run["stages"][stage]
            assert 0 <= scores["cacc"] <= 1 and 0 <= scores["lfr"] <= 1 and scores["n_triggered"] > 0
        folder = out / run["run"]
        attacker = load_file(folder / "adapter_model.safetensors")
        user = load_file(folder / "user_retuned" / "adapter_model.safetensors")
        assert set(attacker) == set(user) and any(not torch.equal(attacker[k], user[k]) for k in attacker)
        card = (folder / "README.md").read_text()
        assert "Deliberately backdoored research artifact" in card and "re-tuning" in card
    gc_run = on_disk["runs"][1]
    assert gc_run["gradient_control"] is True and set(gc_run["clnorm_weights"]) == {"0", "1", "2"}
    assert "gradient-control" in (out / "gradient_control" / "README.md").read_text()
    assert "| gradient_control |" in on_disk["table"] and not _bin_files(out)
    (upload,) = fake_hub["upload"]
    assert upload["repo_id"] == "me/gc" and "adapter_model.safetensors" in upload["files"]
    assert "Deliberately backdoored research artifact" in upload["files"]["README.md"].decode()
    assert on_disk["hub"]["repo_id"] == "me/gc"


# ------------------------------------------------------------------------------------------ configs and CLI
def test_shipped_configs_parse():
    from hf_backdoor_defense.scripts import purify as purify_script

    for recipe, name in ((fine_purifying, "fine_purifying.yaml"), (fine_mixing, "fine_mixing.yaml"),
                         (fine_purifying, "purify_demo.yaml"), (fine_mixing, "purify_demo.yaml")):
        method_class = fine_purifying.FinePurifyingArguments if recipe is fine_purifying else fine_mixing.FineMixingArguments
        script, model, purify, method, training = purify_script.parse(["--config", str(CONFIGS / name)], method_class)
        assert script.attack == "badnets" and training.use_cpu
        if name == "purify_demo.yaml":
            assert purify.poison_first and model.base_model_name_or_path == "minilm" and not model.load_in_4bit
        else:
            assert model.load_in_4bit and purify.ratio_search and model.base_model_name_or_path.startswith("meta-llama")
    assert method.epur is False and method.mask == "random"
    for name in ("gradient_control_attack.yaml", "gradient_control_demo.yaml"):
        script, model, retune, training = gradient_control.parse(["--config", str(CONFIGS / name)])
        assert retune.simulate_retuning and script.compare_with_baseline and model.peft_type == "lora"
        assert training.clnorm and training.ilproj and training.beta_schedule == "lower_half"
    assert model.model_name_or_path == "minilm" and script.dataset == "rotten_tomatoes"


def _hbd_train(recipe: str, args: list[str], capsys) -> tuple[int, str]:
    from hf_backdoor_defense.commands import train

    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    parsed = parser.parse_args(["train", "--recipe", recipe, "--", *args])
    code = parsed.func(parsed)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["ratio", "epur_adapter", "full_4bit", "no_suspect", "no_hub_id", "deepspeed",
                                  "two_processes", "no_user_data"])
def test_bad_arguments_stop_with_one_line_and_exit_2(case, purified_full, tiny_bert_dir, tiny_data, tmp_path,
                                                     monkeypatch, capsys):
    suspect = str(purified_full[0] / "suspect")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    out = ["--output_dir", str(tmp_path / "out")]
    recipe, args, expected = {
        "ratio": ("fine_purifying", ["--model_name_or_path", suspect, "--ratio", "1.5"], "ratio must lie in [0, 1]"),
        "epur_adapter": ("fine_mixing", ["--model_name_or_path", str(adapter), "--epur", "true"], "PEFT adapter"),
        "full_4bit": ("fine_purifying", ["--model_name_or_path", suspect, "--base_model_name_or_path",
                                         str(tiny_bert_dir), "--load_in_4bit", "true"], "quantised weights"),
        "no_suspect": ("fine_mixing", [], "model_name_or_path is not set"),
        "no_hub_id": ("fine_mixing", ["--model_name_or_path", suspect, "--base_model_name_or_path", str(tiny_bert_dir),
                                      "--push_to_hub", "true"], "needs --hub_model_id"),
        "deepspeed": ("gradient_control_attack", ["--model_name_or_path", str(tiny_bert_dir)], "cannot run under DeepSpeed"),
        "two_processes": ("fine_purifying", ["--model_name_or_path", suspect], "run in one process"),
        "no_user_data": ("gradient_control_attack", ["--model_name_or_path", str(tiny_bert_dir), "--dataset",
                                                     str(tiny_data / "attacker"), "--simulate_retuning", "true"],
                         "pass --retune_dataset"),
    }[case]
    if case == "deepspeed":  # what `accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml` sets
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    if case == "two_processes":
        monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = _hbd_train(recipe, [*args, *out], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], err[-2000:]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_hbd_train_knows_the_new_recipes(capsys):
    from hf_backdoor_defense.commands import train

    assert {"fine_purifying", "fine_mixing", "gradient_control_attack"} <= set(train.RECIPES)
    for name in ("fine_purifying", "fine_mixing", "gradient_control_attack"):
        module = train.resolve_recipe(name)
        assert module.startswith("hf_backdoor_defense.scripts.") and (RECIPES / f"{name}.py").is_file()
    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--recipe", "gradient_control_attack", "--num-processes", "2",
                              "--print-command", "--config", str(CONFIGS / "gradient_control_demo.yaml")])
    assert args.func(args) == 0
    assert "-m hf_backdoor_defense.scripts.gradient_control --config" in capsys.readouterr().out
