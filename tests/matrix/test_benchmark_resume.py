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


def test_render_of_a_missing_or_broken_results_file_stops_clearly(common, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        common.read_results(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not a results JSON"):
        common.read_results(tmp_path / "broken.json")
    (tmp_path / "ok.json").write_text('{"rows": []}')
    assert common.read_results(tmp_path / "ok.json") == {"rows": []}
