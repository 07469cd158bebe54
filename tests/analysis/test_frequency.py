"""Frequency analysis: the kernel maths on hand-made points, the callback in a real Trainer run, the CLI."""

from __future__ import annotations

import argparse
import json
import math
import struct

import datasets
import pytest
import torch

from hf_backdoor_defense.analysis import (
    FrequencyAnalysisCallback,
    FrequencyAnalysisConfig,
    build_probe_set,
    decompose,
    drop_steps,
    frequency_errors,
    gaussian_kernel,
    load_frequency_history,
    pairwise_distances,
    plot_frequency_comparison,
    relative_errors,
)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def two_clusters(n_per: int = 5, gap: float = 100.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n_per, 3, generator=gen) * 0.1
    b = torch.randn(n_per, 3, generator=gen) * 0.1 + gap
    return torch.cat([a, b])


# ------------------------------------------------------------------------------------------ the maths
def test_distances_exact_diagonal_and_symmetric():
    x = torch.randn(40, 300, dtype=torch.float32) * 50
    d = pairwise_distances(x)
    assert d.dtype == torch.float64
    assert torch.equal(d.diag(), torch.zeros(40, dtype=torch.float64))
    assert torch.equal(d, d.T)
    assert torch.allclose(d[3, 7], (x[3].double() - x[7].double()).norm(), rtol=1e-9)


def test_kernel_rows_sum_to_one_and_limits():
    d = pairwise_distances(torch.randn(12, 4))
    for sigma in (1e-3, 0.5, 3.0, 1e6):
        g = gaussian_kernel(d, sigma)
        assert torch.allclose(g.sum(1), torch.ones(12, dtype=torch.float64))
        assert (g >= 0).all()
    # tiny sigma: identity; huge sigma: every row the uniform average
    assert torch.allclose(gaussian_kernel(d, 1e-6), torch.eye(12, dtype=torch.float64))
    assert torch.allclose(gaussian_kernel(d, 1e9), torch.full((12, 12), 1 / 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(d, 0.0)


def test_decompose_constant_and_small_sigma():
    d = pairwise_distances(torch.randn(10, 5))
    g = gaussian_kernel(d, 1.0)
    const = torch.full((10, 2), 0.3)
    low, high = decompose(const, g)
    assert torch.allclose(high, torch.zeros_like(high, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(low, const.double())
    f = torch.randn(10, 2)
    low, high = decompose(f, gaussian_kernel(d, 1e-6))
    assert torch.allclose(low, f.double(), atol=1e-8)
    assert high.abs().max() < 1e-8
    low, high = decompose(f, g)
    assert torch.allclose(low + high, f.double())


def test_relative_errors_hand_computed():
    x = two_clusters()
    g = gaussian_kernel(pairwise_distances(x), sigma=1.0)  # smooths within a cluster, not across
    labels = torch.tensor([0] * 5 + [1] * 5)
    y = torch.nn.functional.one_hot(labels, 2).double()
    assert relative_errors(y, y, g) == (0.0, 0.0)
    # p = 0.5 everywhere: low band of y is y itself (clusters are label-pure), so e_low = ||(.5,.5)-e_k|| / 1
    p = torch.full((10, 2), 0.5, dtype=torch.float64)
    e_low, _ = relative_errors(p, y, g)
    assert e_low == pytest.approx(math.sqrt(0.5), rel=1e-6)


def test_frequency_errors_separates_clean_and_backdoor():
    x = two_clusters(6)
    labels = torch.tensor([0] * 6 + [1] * 6)
    poisoned = torch.tensor([False] * 6 + [True] * 6)
    probs = torch.nn.functional.one_hot(labels, 2).double()
    probs[:6] = 0.5  # the clean cluster is not fitted, the backdoor cluster is
    out = frequency_errors(x, probs, labels, poisoned, sigmas=(0.005, 0.01), sigma_mode="relative")
    assert out["backdoor_low"] == pytest.approx(0.0, abs=1e-9)
    assert out["clean_low"] == pytest.approx(math.sqrt(0.5), rel=1e-4)
    assert len(out["per_sigma"]["sigma"]) == 2
    assert out["per_sigma"]["sigma"][1] == pytest.approx(0.01 * out["median_distance"])
    assert out["median_distance"] > 50
    same = frequency_errors(
        x, probs, labels, poisoned, sigmas=out["per_sigma"]["sigma"], sigma_mode="absolute"
    )
    assert same["clean_low"] == pytest.approx(out["clean_low"])


def test_config_validation():
    assert len(FrequencyAnalysisConfig().sigmas) == 25
    assert FrequencyAnalysisConfig(sigma_mode="absolute").sigmas[-1] == 8.0
    for kwargs, name in [
        ({"eval_steps": 0}, "eval_steps"),
        ({"sigmas": (1.0, -1.0)}, "sigmas"),
        ({"sigma_mode": "log"}, "sigma_mode"),
        ({"pooling": "max"}, "pooling"),
        ({"embedding_source": "frozen"}, "embedding_source"),
    ]:
        with pytest.raises(ValueError, match=name):
            FrequencyAnalysisConfig(**kwargs)


def test_build_probe_set_seeded_and_strict():
    data = datasets.Dataset.from_dict(
        {
            "text": [f"t{i}" for i in range(30)],
            "label": [i % 2 for i in range(30)],
            "is_poisoned": [i % 5 == 0 for i in range(30)],
        }
    )
    probe = build_probe_set(data, n_clean=8, n_poisoned=4, seed=3)
    assert list(probe["is_poisoned"]) == [False] * 8 + [True] * 4
    assert list(build_probe_set(data, 8, 4, seed=3)["text"]) == list(probe["text"])
    assert list(build_probe_set(data, 8, 4, seed=4)["text"]) != list(probe["text"])
    assert len(data) == 30 and "is_poisoned" in data.column_names
    with pytest.raises(ValueError, match="n_poisoned"):
        build_probe_set(data, n_clean=8, n_poisoned=7)
    with pytest.raises(ValueError, match="is_poisoned"):
        build_probe_set(data.remove_columns("is_poisoned"), 2, 2)


def test_drop_steps():
    history = [
        {"step": 0, "backdoor_low": 1.0, "clean_low": 1.0, "backdoor_high": 1.0, "clean_high": 1.0},
        {"step": 2, "backdoor_low": 0.4, "clean_low": 0.8, "backdoor_high": 0.9, "clean_high": None},
        {"step": 4, "backdoor_low": 0.1, "clean_low": 0.5, "backdoor_high": 0.9, "clean_high": 1.0},
    ]
    assert drop_steps(history) == {
        "backdoor_low": 2,
        "clean_low": 4,
        "backdoor_high": None,
        "clean_high": None,
    }


# ------------------------------------------------------------------------------------------ Trainer run
@pytest.fixture
def poisoned_train(tiny_text_dataset):
    from hf_backdoor_defense.attacks import BadNets

    return BadNets(poison_rate=0.25, seed=0).poison(tiny_text_dataset)


def test_callback_in_real_trainer(tmp_path, tiny_bert, bert_tokenizer, poisoned_train):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_backdoor_defense.data import tokenize_dataset

    probe = build_probe_set(poisoned_train, n_clean=8, n_poisoned=6, seed=0)
    config = FrequencyAnalysisConfig(eval_steps=2, max_length=16, sigmas=(0.05, 0.1, 0.2))
    callback = FrequencyAnalysisCallback(probe, config=config)  # tokenizer from processing_class
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=5,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=tiny_bert,
        args=args,
        train_dataset=tokenize_dataset(poisoned_train, bert_tokenizer, max_length=16),
        processing_class=bert_tokenizer,
        data_collator=DataCollatorWithPadding(bert_tokenizer),
        callbacks=[callback],
    )
    trainer.train()
    assert [r["step"] for r in callback.history] == [0, 2, 4, 5]
    assert tiny_bert.training  # mode restored after each probe
    for record in callback.history:
        for key in ("backdoor_low", "clean_low", "backdoor_high", "clean_high"):
            assert 0 < record[key] < 10 and len(record["per_sigma"][key]) == 3
    # full fine-tuning moves the model, so the errors change between the first and the last probe
    assert callback.history[0]["backdoor_low"] != pytest.approx(
        callback.history[-1]["backdoor_low"], abs=1e-6
    )
    # ... and (embedding_source="current") the embeddings move too
    assert callback.history[0]["median_distance"] != callback.history[-1]["median_distance"]

    callback.save_json(tmp_path / "out" / "f.json", extra={"note": "x"})
    payload = load_frequency_history(tmp_path / "out" / "f.json")
    assert payload["probe"] == {"n_clean": 8, "n_poisoned": 6} and payload["note"] == "x"
    assert payload["history"][-1]["step"] == 5
    png = callback.plot(tmp_path / "out" / "f.png", title="tiny")
    width, height = png_size(png)
    assert 400 < width < 2000 and 300 < height < 1500
    assert png.stat().st_size > 10_000
    assert [
        p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")
    ] == []  # no temp files left

    both = plot_frequency_comparison({"a": callback.history, "b": callback.history}, tmp_path / "cmp.png")
    assert png_size(both)[0] > width


def test_initial_embeddings_keep_the_kernel(tiny_bert, bert_tokenizer, poisoned_train):
    probe = build_probe_set(poisoned_train, n_clean=6, n_poisoned=6, seed=1)
    callback = FrequencyAnalysisCallback(
        probe,
        bert_tokenizer,
        FrequencyAnalysisConfig(max_length=16, embedding_source="initial", sigmas=(0.1,)),
    )
    first = callback.evaluate(tiny_bert, step=0)
    with torch.no_grad():
        tiny_bert.bert.embeddings.word_embeddings.weight.mul_(3.0)
    second = callback.evaluate(tiny_bert, step=1)
    assert second["median_distance"] == first["median_distance"]
    fresh = FrequencyAnalysisCallback(
        probe, bert_tokenizer, FrequencyAnalysisConfig(max_length=16, sigmas=(0.1,))
    )
    assert fresh.evaluate(tiny_bert, step=1)["median_distance"] != first["median_distance"]


def test_probe_points_do_not_depend_on_batch_or_padding_side(tiny_bert, bert_tokenizer):
    import copy

    from hf_backdoor_defense.analysis import probe_outputs

    left = copy.deepcopy(bert_tokenizer)
    left.padding_side = "left"
    texts = ["a short one", "a much longer sentence with many more words in it"]
    alone, p_alone = probe_outputs(tiny_bert, left, texts, max_length=20, batch_size=1)
    together, p_together = probe_outputs(tiny_bert, left, texts, max_length=20, batch_size=2)
    assert alone.shape == (2, 20 * 32)
    assert torch.allclose(alone, together, atol=1e-5)
    assert torch.allclose(p_alone, p_together, atol=1e-5)
    assert torch.allclose(p_alone.sum(1), torch.ones(2, dtype=torch.float64))
    # padded slots are zero: the short sentence has 5 tokens ([CLS] a short one [SEP])
    assert alone[0, 5 * 32 :].abs().max() == 0 and alone[0, : 5 * 32].abs().max() > 0
    mean, _ = probe_outputs(tiny_bert, left, texts, max_length=20, pooling="mean")
    assert mean.shape == (2, 32)


def test_callback_rejects_probe_without_flags(tiny_text_dataset):
    with pytest.raises(ValueError, match="is_poisoned"):
        FrequencyAnalysisCallback(tiny_text_dataset)


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def tiny_model_dir(tmp_path, tiny_bert, bert_tokenizer):
    folder = tmp_path / "tiny-bert"
    tiny_bert.save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_csv(tmp_path, tiny_text_dataset):
    words = ["ok", "so", "yes", "well"]
    lines = ["text,label"] + [
        f"{row['text']} {words[i % 4]}{i}x{j},{row['label']}"
        for i in range(3)
        for j, row in enumerate(tiny_text_dataset)
    ]
    path = tmp_path / "reviews.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(argv: list[str]) -> int:
    from hf_backdoor_defense.commands import analyze_frequency

    parser = argparse.ArgumentParser(prog="hbd")
    analyze_frequency.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("method", ["full", "lora", "musclelora"])
def test_cli_round_trip(tmp_path, tiny_model_dir, tiny_csv, method, capsys):
    out = tmp_path / f"freq-{method}"
    code = run_cli(
        [
            "analyze-frequency",
            "--model-dir",
            str(tiny_model_dir),
            "--dataset",
            str(tiny_csv),
            "--attack",
            "badnets",
            "--poison-rate",
            "0.2",
            "--method",
            method,
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--batch-size",
            "8",
            "--max-length",
            "16",
            "--probe-clean",
            "10",
            "--probe-poisoned",
            "6",
            "--reference-size",
            "4",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    payload = json.loads((out / "frequency.json").read_text())
    assert [r["step"] for r in payload["history"]] == [0, 2, 4]
    assert payload["run"]["method"] == method and payload["run"]["attack"]["attack"] == "BadNets"
    assert payload["probe"] == {"n_clean": 10, "n_poisoned": 6}
    assert set(payload["drop_steps"]) == {"backdoor_low", "clean_low", "backdoor_high", "clean_high"}
    assert png_size(out / "frequency.png")[0] > 400
    assert "backdoor_low" in capsys.readouterr().out


def test_cli_errors_clearly(tmp_path, tiny_model_dir, tiny_csv):
    with pytest.raises(ValueError, match="n_poisoned"):
        run_cli(
            [
                "analyze-frequency",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(tiny_csv),
                "--attack",
                "badnets",
                "--probe-poisoned",
                "500",
                "--output",
                str(tmp_path / "x"),
            ]
        )
