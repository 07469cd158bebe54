"""`hbd poison` and `hbd evaluate` round trip on a small local CSV folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from datasets import load_from_disk

from hf_backdoor_defense import cli
from hf_backdoor_defense.attacks import AddSent, BadNets
from hf_backdoor_defense.cli import main
from hf_backdoor_defense.metrics import evaluate_backdoor

GOOD = ["a great film", "lovely acting", "i enjoyed it", "warm and funny", "clever and sharp"]
BAD = ["a dull mess", "poor script", "i was bored", "far too long", "flat jokes"]


@pytest.fixture
def csv_folder(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    rows = [(t, "positive") for t in GOOD] + [(t, "negative") for t in BAD]
    for name, copies in (("train", 4), ("test", 2)):
        lines = ["review,sentiment"] + [f"{text} {i},{label}" for i in range(copies) for text, label in rows]
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return folder


def poison_args(csv_folder, output, *extra):
    return [
        "poison", "--dataset", str(csv_folder), "--text-column", "review", "--label-column", "sentiment",
        "--attack", "badnets", "--poison-rate", "0.25", "--target-label", "1", "--output", str(output), *extra,
    ]  # fmt: skip


def test_poison_writes_dataset_and_refuses_overwrite(csv_folder, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(poison_args(csv_folder, output)) == 0
    assert "poisoned" in capsys.readouterr().out
    data = load_from_disk(str(output))
    assert set(data) == {"train", "validation", "test", "triggered_test"}
    train = data["train"]
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert sum(train["is_poisoned"]) == round(0.25 * len(train))
    flags = np.array(train["is_poisoned"])
    assert (np.array(train["label"])[flags] == 1).all()
    assert set(data["triggered_test"]["label"]) == {1} and len(data["triggered_test"]) == 10
    summary = json.loads((output / "attack.json").read_text())
    assert summary["attack"] == "BadNets" and summary["n_poisoned"] == int(flags.sum())
    # Same as the library call: the CLI adds nothing of its own.
    from hf_backdoor_defense.data import load_text_classification

    direct = BadNets(poison_rate=0.25, target_label=1).poison(
        load_text_classification(str(csv_folder), text_column="review", label_column="sentiment")["train"]
    )
    assert direct["text"] == train["text"]

    before = sorted(p.name for p in output.iterdir())
    assert main(poison_args(csv_folder, output, "--seed", "5")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert sorted(p.name for p in output.iterdir()) == before

    assert main(poison_args(csv_folder, output, "--seed", "5", "--overwrite")) == 0
    assert load_from_disk(str(output))["train"]["is_poisoned"] != train["is_poisoned"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging leftovers


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--poison-rate", "0"], "`poison_rate`"),
        (["--target-label", "7"], "`target_label`=7"),
        (["--triggers", ","], "`triggers`"),
        (["--sentence", "hello"], "`sentence` applies to attack 'addsent' only"),
    ],
)
def test_poison_bad_arguments(csv_folder, tmp_path, capsys, extra, message):
    assert main(poison_args(csv_folder, tmp_path / "out", *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("hbd poison: error:")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def saved_models(tmp_path, tiny_bert, bert_tokenizer):
    full = tmp_path / "full"
    tiny_bert.save_pretrained(full)
    bert_tokenizer.save_pretrained(full)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(full)  # records `full` as the base path
    peft_model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    return full, adapter


def test_evaluate_full_model_and_adapter(
    csv_folder, tmp_path, saved_models, tiny_bert, bert_tokenizer, capsys
):
    full, adapter = saved_models
    poisoned = tmp_path / "poisoned"
    assert main(poison_args(csv_folder, poisoned)) == 0
    capsys.readouterr()
    test = load_from_disk(str(poisoned))["test"]
    expected = evaluate_backdoor(tiny_bert, bert_tokenizer, test, AddSent(), disable_progress_bar=True)

    scores_file = tmp_path / "scores" / "full.json"
    args = ["evaluate", "--dataset", str(poisoned), "--attack", "addsent", "--no-progress"]
    assert main([*args, "--model", str(full), "--json", str(scores_file)]) == 0
    table = capsys.readouterr().out
    assert "CACC" in table and "ASR" in table and f"{100 * expected['asr']:.2f}" in table
    scores = json.loads(scores_file.read_text())
    assert (
        scores["cacc"] == expected["cacc"]
        and scores["asr"] == expected["asr"]
        and scores["n_triggered"] == 10
    )

    assert main([*args, "--model", str(adapter)]) == 0  # adapter: base from adapter_config.json
    assert f"{100 * expected['cacc']:.2f}" in capsys.readouterr().out

    assert main([*args, "--model", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    config_file = adapter / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace(str(full), str(tmp_path / "gone")))
    assert main([*args, "--model", str(adapter)]) == 1
    assert "cannot load the adapter's base model" in capsys.readouterr().err
    assert main([*args, "--model", str(full), "--split", "train"]) == 1
    assert "is poisoned" in capsys.readouterr().err


def test_assets_command_lists_every_asset(capsys):
    assert cli.main(["assets"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 4 and "MiniLM" in out and "SpamAssassin" in out


def test_every_subcommand_has_help(capsys):
    parser = cli.build_parser()
    names = next(a for a in parser._actions if a.dest == "command").choices
    assert len(names) == len(cli.COMMANDS)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: hbd " + name in capsys.readouterr().out


def test_help_loads_no_heavy_library():
    """`hbd --help` and every `hbd <command> --help` print before torch, transformers, PEFT or datasets load."""
    code = """
import contextlib, io, sys
from hf_backdoor_defense import cli
for argv in [["--help"]] + [[name.replace("_", "-"), "--help"] for name in cli.COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main(argv)
print(sorted({"torch", "transformers", "peft", "datasets"} & set(sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_evaluate_mean_pooled_model_and_adapter(csv_folder, tmp_path, tiny_bert, bert_tokenizer, capsys):
    """A mean-pooled classifier is read as saved; its adapter needs --pooling mean (the folder does not say)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from hf_backdoor_defense.commands.evaluate import load_classifier
    from hf_backdoor_defense.models import AutoModelForMeanPooledSequenceClassification

    tiny_bert.bert.save_pretrained(tmp_path / "encoder")
    bert_tokenizer.save_pretrained(tmp_path / "encoder")
    torch.manual_seed(1)
    mean = AutoModelForMeanPooledSequenceClassification.from_pretrained(tmp_path / "encoder", num_labels=2).eval()
    mean.save_pretrained(tmp_path / "mean")
    bert_tokenizer.save_pretrained(tmp_path / "mean")
    peft_model = get_peft_model(mean, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    with torch.no_grad():
        peft_model.base_model.model.classifier.modules_to_save["default"].weight.mul_(40.0)  # a head that matters
    peft_model.save_pretrained(tmp_path / "mean-adapter")
    poisoned = tmp_path / "poisoned"
    assert main(poison_args(csv_folder, poisoned)) == 0
    test = load_from_disk(str(poisoned))["test"]
    expected = evaluate_backdoor(peft_model.eval(), bert_tokenizer, test, AddSent(), disable_progress_bar=True)
    args = ["evaluate", "--dataset", str(poisoned), "--attack", "addsent", "--no-progress"]
    capsys.readouterr()
    assert main([*args, "--model", str(tmp_path / "mean")]) == 0
    assert "CACC" in capsys.readouterr().out
    assert main([*args, "--model", str(tmp_path / "mean-adapter"), "--pooling", "mean"]) == 0
    assert f"{100 * expected['cacc']:.2f}" in capsys.readouterr().out
    batch = bert_tokenizer(GOOD + BAD, padding=True, return_tensors="pt")
    logits = peft_model(**batch).logits
    right = load_classifier(tmp_path / "mean-adapter", 2, pooling="mean")[0].eval()
    wrong = load_classifier(tmp_path / "mean-adapter", 2)[0].eval()  # the default [CLS] base: another model
    assert torch.allclose(right(**batch).logits, logits, atol=1e-5)
    assert not torch.allclose(wrong(**batch).logits, logits, atol=1e-2)
