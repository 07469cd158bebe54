"""The ``--resume`` / ``--overwrite`` rule every long benchmark shares (``benchmarks/_common.py``)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
GRID = ("output", "resume", "overwrite", "seeds")


def _load_benchmark(name):
    """``benchmarks/<name>.py`` as a module (the scripts import ``_common`` from their own folder)."""
    import sys

    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="module")
def common():
    return _load_benchmark("_common")


def _args(tmp_path, **kw):
    base = dict(output=tmp_path / "results.json", resume=False, overwrite=False, seeds=[0], lr=1e-3, size=64)
    return argparse.Namespace(**{**base, **kw})


def _write(common, args):
    common.write_json(args.output, {"args": common.settings_of(args), "rows": [{"seed": 0}]})


def test_a_new_output_starts_afresh(common, tmp_path):
    assert common.previous_results(_args(tmp_path), GRID) is None


def test_an_existing_output_needs_resume_or_overwrite(common, tmp_path):
    args = _args(tmp_path)
    _write(common, args)
    before = args.output.read_text()
    with pytest.raises(SystemExit, match="--resume.*--overwrite"):
        common.previous_results(args, GRID)
    assert common.previous_results(_args(tmp_path, overwrite=True), GRID) is None
    assert args.output.read_text() == before  # refusing or starting afresh never touches the file


def test_resume_keeps_the_results_and_may_add_grid_values(common, tmp_path):
    _write(common, _args(tmp_path))
    previous = common.previous_results(_args(tmp_path, resume=True, seeds=[0, 1, 2]), GRID)
    assert previous["rows"] == [{"seed": 0}]


def test_resume_with_other_settings_names_them(common, tmp_path):
    _write(common, _args(tmp_path))
    with pytest.raises(SystemExit, match=r"other settings \(lr, size\)"):
        common.previous_results(_args(tmp_path, resume=True, lr=5e-4, size=128), GRID)


def test_settings_are_json_ready(common, tmp_path):
    settings = common.settings_of(_args(tmp_path), GRID)
    assert settings == {"lr": 1e-3, "size": 64}
    assert json.loads(json.dumps(common.settings_of(_args(tmp_path))))["output"].endswith("results.json")


def test_apply_preset_fills_only_unset_arguments_and_names_the_output(common, tmp_path):
    presets = {"full": {"size": 64, "lr": 1e-3}, "quick": {"size": 8, "lr": 1e-3}}
    results = tmp_path / "bench.json"
    args = common.apply_preset(argparse.Namespace(preset="full", quick=True, size=None, lr=5e-4, output=None),
                               presets, results)
    assert (args.preset, args.size, args.lr, args.output) == ("quick", 8, 5e-4, tmp_path / "bench_quick.json")
    full = common.apply_preset(argparse.Namespace(preset="full", quick=False, size=None, lr=None, output=None),
                               presets, results)
    assert (full.size, full.output) == (64, results)


@pytest.fixture(scope="module")
def w2s_bench():
    """``benchmarks/w2sdefense_efficacy.py`` as a module."""
    return _load_benchmark("w2sdefense_efficacy")


def test_w2s_full_finetunes_are_reused_only_with_the_same_settings(w2s_bench, tmp_path, tiny_text_dataset):
    """The slow full fine-tunes kept in ``--workdir`` are reused by a later run with the same settings, and a
    run with another learning rate trains (and keeps) its own model instead of taking the stale one."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from hf_backdoor_defense.assets import smollm2_path

    tok = AutoTokenizer.from_pretrained(smollm2_path())
    tok.pad_token = tok.pad_token or tok.eos_token
    torch.manual_seed(0)
    base = tmp_path / "tiny-llama"
    LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=tok.pad_token_id, num_labels=2,
    )).save_pretrained(base)
    args = argparse.Namespace(train_size=24, max_length=16, backdoor_epochs=1.0, backdoor_lr=1e-3, batch_size=8)
    work = tmp_path / "work"

    first = w2s_bench.full_finetune(base, tok, tiny_text_dataset, args, 0, work, "badnets")
    weights = (first / "model.safetensors").read_bytes()
    assert json.loads((first / "stage.json").read_text())["settings"]["lr"] == 1e-3

    mtime = (first / "model.safetensors").stat().st_mtime_ns  # a retrain would rewrite the file
    again = w2s_bench.full_finetune(base, tok, tiny_text_dataset, args, 0, work, "badnets")
    assert again == first and (first / "model.safetensors").stat().st_mtime_ns == mtime

    other = w2s_bench.full_finetune(base, tok, tiny_text_dataset, argparse.Namespace(**{**vars(args), "backdoor_lr": 5e-4}),
                                    0, work, "badnets")
    assert other != first and (other / "stage.json").is_file()
    assert (first / "model.safetensors").read_bytes() == weights  # the first model is kept, not overwritten
    clean = w2s_bench.full_finetune(base, tok, tiny_text_dataset, args, 0, work, "clean")
    assert clean not in (first, other)


def test_gradient_control_resume_keeps_finished_runs_and_refuses_silent_overwrite(tmp_path):
    """The GC benchmark follows the shared rule: an existing output is refused without --resume / --overwrite,
    and --resume with every requested run already there trains nothing and keeps the measured runs."""
    gc = _load_benchmark("gradient_control")
    settings = {**gc.PRESETS["quick"], "eval_split": "test", "clnorm_alpha": 1e-4, "defense_ratio": 0.5,
                "purify_finetune_epochs": 3.0, "retune_reference": 24}
    stages = {"attack": {"cacc": 0.8, "lfr": 0.9}, "retune": {"cacc": 0.85, "lfr": 0.4}}
    runs = [{"shift": "spamassassin", "seed": 0, "method": m, "stages": stages, "timings_s": {"attack": 1.0},
             "wall_s": 1.0, "cached": False} for m in ("vanilla", "gradient_control")]
    output = tmp_path / "gc.json"
    output.write_text(json.dumps({"settings": settings, "runs": runs}))
    argv = ["--preset", "quick", "--shifts", "spamassassin", "--output", str(output)]

    with pytest.raises(SystemExit, match="--resume"):
        gc.main(argv)
    with pytest.raises(SystemExit, match=r"other settings \(clnorm_alpha\)"):
        gc.main([*argv, "--resume", "--clnorm-alpha", "1e-3"])
    assert gc.main([*argv, "--resume"]) == 0
    payload = json.loads(output.read_text())
    assert payload["runs"] == runs and payload["complete"]
    assert payload["summary"]["spamassassin"]["lfr_gain_points"] == pytest.approx(0.0)


def test_render_of_a_missing_or_broken_results_file_stops_clearly(common, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        common.read_results(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not a results JSON"):
        common.read_results(tmp_path / "broken.json")
    (tmp_path / "ok.json").write_text('{"rows": []}')
    assert common.read_results(tmp_path / "ok.json") == {"rows": []}


def test_w2s_weight_sweep_settings_are_checked_and_normalised():
    import argparse

    sweep = _load_benchmark("w2sdefense_weight_sweep")
    assert sweep.loss_setting("lora") == "lora"
    assert sweep.loss_setting("5:0.001:0.001") == "5:0.001:0.001:squared_l2"
    assert sweep.loss_setting("5.0:1e-3:400:cosine") == "5:0.001:400:cosine"
    for bad in ("5:1", "a:b:c", "-1:0:0", "5:0:0:l1", "5:0:0:cosine:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="A:B:C"):
            sweep.loss_setting(bad)


def _w2s_run(seed, plain_lora_asr, w2s_asr):
    cell = lambda asr: {"cacc": 0.8, "asr": asr}  # noqa: E731
    attack = {name: cell(0.2) for name in ("clean_floor", "teacher", "backdoored")}
    attack.update(plain_lora=cell(plain_lora_asr), w2sdefense=cell(w2s_asr), step_time_ratio=1.0)
    return {"seed": seed, "attacks": {"badnets": attack}}


def test_w2s_summary_needs_a_clear_paired_asr_gain_over_plain_lora(w2s_bench):
    """A one-sentence edge over plain LoRA is not "clearly below"; the gain is paired per seed."""
    marginal = w2s_bench.summarise([_w2s_run(0, 0.650, 0.645), _w2s_run(1, 0.600, 0.595)], ["badnets"])["badnets"]
    assert marginal["w2s_asr_gain_over_plain_lora"]["mean"] == pytest.approx(0.005)
    assert not marginal["targets"]["asr_clearly_below_plain_lora"]
    # plain LoRA's ASR spreads 30 points across seeds, the paired gain is a steady 8 points
    clear = w2s_bench.summarise([_w2s_run(0, 0.90, 0.82), _w2s_run(1, 0.60, 0.52)], ["badnets"])["badnets"]
    assert clear["w2s_asr_gain_over_plain_lora"]["mean"] == pytest.approx(0.08)
    assert clear["w2s_asr_gain_over_plain_lora"]["std"] == pytest.approx(0.0, abs=1e-9)
    assert clear["targets"]["asr_clearly_below_plain_lora"]
    assert "removes beyond plain LoRA" in w2s_bench.render_markdown(
        {"summary": {"badnets": clear}, "config": {"train_size": 1, "clean_size": 1, "test_size": 1, "max_length": 8},
         "runs": [{"seed": 0}], "total_seconds": 60})
