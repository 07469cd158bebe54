"""``hbd purify`` end to end on tiny random BERTs saved to disk."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from hf_backdoor_defense.commands import purify as purify_cmd


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hbd")
    purify_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["purify", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, bert_tokenizer):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    pretrained = BertForSequenceClassification(cfg)
    pretrained.bert.save_pretrained(root / "pretrained")  # a plain pre-trained encoder, no head
    bert_tokenizer.save_pretrained(root / "pretrained")
    suspect = copy.deepcopy(pretrained)
    with torch.no_grad():
        for p in suspect.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    suspect.save_pretrained(root / "suspect")
    bert_tokenizer.save_pretrained(root / "suspect")
    rows = ["text,label"] + [f"{t},{y}" for t, y in [("a great film", 1), ("a dull film", 0), ("i loved it", 1),
                                                    ("boring and long", 0), ("warm and funny", 1), ("flat jokes", 0)] * 4]
    (root / "clean.csv").write_text("\n".join(rows) + "\n")
    return root


def _train_size(root) -> int:
    from hf_backdoor_defense.data import load_text_classification

    return len(load_text_classification(str(root / "clean.csv"))["train"])  # a single file: splits are carved


def _base_args(root, method, out):
    return ["--method", method, "--suspect", str(root / "suspect"), "--pretrained", str(root / "pretrained"),
            "--clean-data", str(root / "clean.csv"), "--output", str(out)]


@pytest.mark.slow
def test_purify_writes_model_report_and_card(folders, tmp_path):
    out = tmp_path / "purified"
    assert _run(_base_args(folders, "fine-purifying", out) + ["--ratio", "0.3", "--finetune-epochs", "1"]) == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert (out / "tokenizer_config.json").is_file()
    report = json.loads((out / "purification_report.json").read_text())
    assert report["method"] == "fine-purifying" and report["ratio"] == 0.3 and report["finetune"]["epochs"] == 1
    assert "ratio_search" not in report and report["inputs"]["num_clean"] == _train_size(folders)  # no dev set
    # The pooler and classifier are missing from the pre-trained checkpoint: head, kept.
    assert any(n.startswith("classifier") for n in report["head"]["parameters"])
    card = (out / "README.md").read_text()
    assert "fine-purifying" in card and "library_name: transformers" in card
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2
    assert set(load_file(out / "model.safetensors")) >= {"classifier.weight", "bert.embeddings.word_embeddings.weight"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".purified")]  # no temp folder left


def test_purify_epur_composition_and_overwrite(folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = _base_args(folders, "e-pur+fine-mixing", out) + ["--num-tokens", "4", "--ratio", "0.2"]
    with pytest.raises(FileExistsError, match="overwrite"):
        _run(args)
    assert (out / "keep.txt").is_file()
    assert _run(args + ["--overwrite"]) == 0
    report = json.loads((out / "purification_report.json").read_text())
    assert [s["method"] for s in report["steps"]] == ["e-pur", "fine-mixing"]
    assert len(report["tokens_reset"]) == 4 and not (out / "keep.txt").exists()


@pytest.mark.parametrize("where", ["suspect", "nested", "parent"])
def test_purify_never_writes_into_inputs(folders, where):
    out = {"suspect": folders / "suspect", "nested": folders / "suspect" / "sub",
           "parent": folders}[where]
    before = sorted(p.name for p in (folders / "suspect").iterdir())
    with pytest.raises(ValueError, match="overlaps"):
        _run(_base_args(folders, "fine-mixing", out) + ["--overwrite"])
    assert sorted(p.name for p in (folders / "suspect").iterdir()) == before


def test_purify_searches_the_ratio_on_held_out_dev_examples(folders, tmp_path, capsys):
    out = tmp_path / "searched"
    assert _run(_base_args(folders, "fine-mixing", out) + ["--ratios", "0.5", "0.1", "--budget", "1.0"]) == 0
    report = json.loads((out / "purification_report.json").read_text())
    search = report["ratio_search"]
    assert [row["ratio"] for row in search["table"]] == [0.1, 0.5] and search["chosen"] == 0.5 == report["ratio"]
    n = _train_size(folders)  # the dev set is the last half of the clean split, held out of the clean set
    assert search["within_budget"] and report["inputs"]["num_dev"] == n // 2
    assert report["inputs"]["num_clean"] == n - n // 2
    printed = capsys.readouterr().out
    assert "| ratio | dev accuracy |" in printed and "Chosen ratio: 0.5" in printed
    # A negative budget is refused before anything loads.
    with pytest.raises(ValueError, match="--budget"):
        _run(_base_args(folders, "fine-mixing", tmp_path / "b") + ["--budget", "-0.01"])


def test_purify_search_never_reads_test(folders, tmp_path):
    with pytest.raises(ValueError, match="never read the test"):
        _run(_base_args(folders, "fine-purifying", tmp_path / "t") + ["--dev-split", "test"])
    with pytest.raises(ValueError, match="--dev-split 'dev2' is not a split"):
        _run(_base_args(folders, "fine-purifying", tmp_path / "t") + ["--dev-split", "dev2"])
    with pytest.raises(ValueError, match="equals --clean-split"):
        _run(_base_args(folders, "fine-purifying", tmp_path / "t") + ["--dev-split", "train"])
    assert not (tmp_path / "t").exists()


def test_purify_bad_ratio_and_missing_pretrained(folders, tmp_path):
    with pytest.raises(ValueError, match="ratio"):
        _run(_base_args(folders, "fine-mixing", tmp_path / "o") + ["--ratio", "1.5"])
    args = ["--method", "fine-mixing", "--suspect", str(folders / "suspect"), "--clean-data",
            str(folders / "clean.csv"), "--output", str(tmp_path / "o2")]
    with pytest.raises(ValueError, match="pretrained"):
        _run(args)


def test_output_may_sit_next_to_a_clean_data_file_but_not_above_it(folders, tmp_path):
    data = tmp_path / "clean.csv"
    data.write_text((folders / "clean.csv").read_text())
    assert purify_cmd.check_output(str(tmp_path / "purified"), [str(data)], overwrite=False) == tmp_path / "purified"
    with pytest.raises(ValueError, match="overlaps"):
        purify_cmd.check_output(str(tmp_path), [str(data)], overwrite=True)
