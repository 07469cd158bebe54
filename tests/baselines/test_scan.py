"""``scan_model`` and ``hbd scan`` on a tiny BERT with a planted "cf" backdoor, and on its clean twin."""

from __future__ import annotations

import json

import pytest

from hf_backdoor_defense import cli
from hf_backdoor_defense.scan import ScanConfig, scan_model


def _fingerprint(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.slow
def test_scan_finds_the_planted_trigger_and_leaves_the_model_alone(tiny_backdoor, bert_tokenizer):
    model, reference = tiny_backdoor["model"], tiny_backdoor["reference"]
    before = _fingerprint(model)
    flags = [p.requires_grad for p in model.parameters()]
    report = scan_model(model, bert_tokenizer, tiny_backdoor["texts"], reference=reference,
                        config=ScanConfig(candidates=10, show_progress=False))
    assert all(p.equal(before[n]) for n, p in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert report.suspicious and report.target_label == 1 and report.mode == "full"
    top = report.candidates[0]
    assert top["token"] == "cf" and top["flip_rate"] >= 0.9 and "drift" in top["sources"], report.candidates
    assert "SUSPICIOUS" in report.summary() and "'cf'" in report.summary()
    json.dumps(report.to_dict())


def test_the_clean_twin_scores_lower(tiny_backdoor, bert_tokenizer):
    config = ScanConfig(candidates=10, show_progress=False)
    backdoored, clean = (scan_model(tiny_backdoor[name], bert_tokenizer, tiny_backdoor["texts"],
                                    reference=tiny_backdoor["reference"], config=config)
                         for name in ("model", "clean_model"))
    assert clean.score < backdoored.score
    assert all(c["token"] != "cf" or c["flip_rate"] < 0.9 for c in clean.candidates)


def test_the_tasks_own_words_can_be_left_out_of_the_score(tiny_backdoor, bert_tokenizer):
    """Every candidate carries the share of clean texts holding it; with `max_clean_frequency` the frequent ones
    (the task's vocabulary) sort last and do not count, while "cf", absent from clean text, still does."""
    texts = tiny_backdoor["texts"]
    config = ScanConfig(candidates=10, show_progress=False, max_clean_frequency=0.05)
    backdoored = scan_model(tiny_backdoor["model"], bert_tokenizer, texts, reference=tiny_backdoor["reference"],
                            config=config)
    assert backdoored.candidates[0]["token"] == "cf" and backdoored.candidates[0]["clean_frequency"] == 0.0
    assert backdoored.score >= 0.9 and len(backdoored.tested) >= len(backdoored.candidates)
    clean_all, clean_rare = (scan_model(tiny_backdoor["clean_model"], bert_tokenizer, texts,
                                        reference=tiny_backdoor["reference"],
                                        config=ScanConfig(candidates=10, show_progress=False, max_clean_frequency=m))
                             for m in (None, 0.05))
    counted = [r["clean_frequency"] <= 0.05 for r in clean_rare.tested]
    assert counted == sorted(counted, reverse=True)  # every counted candidate before every frequent one
    assert clean_rare.score == max((r["flip_rate"] for r in clean_rare.tested if r["clean_frequency"] <= 0.05),
                                   default=0.0) <= clean_all.score
    frequent = [r for r in clean_all.tested if r["clean_frequency"] > 0.05]
    assert all(0.0 < r["clean_frequency"] <= 1.0 for r in frequent)


def test_scan_config_and_input_errors(tiny_backdoor, bert_tokenizer):
    with pytest.raises(ValueError, match="threshold"):
        ScanConfig(threshold=0.0)
    with pytest.raises(ValueError, match="max_clean_frequency"):
        ScanConfig(max_clean_frequency=1.5)
    with pytest.raises(ValueError, match="empty"):
        scan_model(tiny_backdoor["model"], bert_tokenizer, [], config=ScanConfig(show_progress=False))


def test_hbd_scan_exit_codes_and_report(tiny_backdoor, bert_tokenizer, tmp_path, capsys):
    tiny_backdoor["model"].save_pretrained(tmp_path / "suspect")
    bert_tokenizer.save_pretrained(tmp_path / "suspect")
    tiny_backdoor["reference"].save_pretrained(tmp_path / "base")
    tiny_backdoor["clean_model"].save_pretrained(tmp_path / "clean")
    bert_tokenizer.save_pretrained(tmp_path / "clean")
    rows = ["text,label"] + [f"{t},{i % 2}" for i, t in enumerate(tiny_backdoor["texts"])]
    (tmp_path / "clean.csv").write_text("\n".join(rows) + "\n")
    common = ["--clean-data", str(tmp_path / "clean.csv"), "--clean-split", "train", "--candidates", "10",
              "--no-progress"]
    before = sorted(p.name for p in (tmp_path / "suspect").iterdir())
    code = cli.main(["scan", "--suspect", str(tmp_path / "suspect"), "--base", str(tmp_path / "base"),
                     "--json", str(tmp_path / "scan.json"), *common])
    assert code == 1 and "SUSPICIOUS" in capsys.readouterr().out
    report = json.loads((tmp_path / "scan.json").read_text())
    assert report["suspicious"] and report["candidates"][0]["token"] == "cf"
    assert sorted(p.name for p in (tmp_path / "suspect").iterdir()) == before  # inputs never written to
    assert cli.main(["scan", "--suspect", str(tmp_path / "missing"), *common]) == 2
    assert "error" in capsys.readouterr().err
    assert cli.main(["scan", "--suspect", str(tmp_path / "suspect"), "--threshold", "2", *common]) == 2
