"""The defense matrix end to end on a tiny random BERT: cells cached by hash, resume, render."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import datasets
import pytest

from hf_backdoor_defense.matrix import (
    CellSpec,
    MatrixGrid,
    MatrixSettings,
    cell_path,
    cell_status,
    render_results,
    run_matrix,
)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_matrix.py"
POS = ["a great and moving film", "wonderful acting and a sharp script", "i loved every minute",
       "a delight from start to finish", "funny warm and clever", "beautifully shot and well told"]
NEG = ["a dull and lifeless mess", "the plot makes no sense", "i was bored the whole time",
       "badly acted and far too long", "a tired cliche ridden story", "clumsy writing and flat jokes"]


def _split(repeat: int) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.Dataset.from_dict({"text": (POS + NEG) * repeat, "label": ([1] * 6 + [0] * 6) * repeat},
                                      features=features)


SETTINGS = dict(train_size=24, test_size=12, clean_size=8, reference_size=4, max_length=16, batch_size=8,
                epochs=1.0, purify_epochs=1.0, w2s_epochs=1.0, teacher_epochs=1.0, epur_tokens=5)
DATA = "tiny_reviews"


@pytest.fixture(scope="module")
def matrix_env(tmp_path_factory, bert_tokenizer):
    """A tiny BERT on disk, its settings, and one finished run of 4 cells (floor, none, lora, w2sdefense)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=bert_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(root / "model")
    bert_tokenizer.save_pretrained(root / "model")
    data = datasets.DatasetDict({"train": _split(2), "validation": _split(1), "test": _split(1)})
    settings = MatrixSettings(model=str(root / "model"), **SETTINGS)
    grid = MatrixGrid(datasets=[DATA], attacks=["badnets"], label_modes=["dirty"],
                      defenses=["none", "lora", "w2sdefense"], seeds=[0])
    env = {"root": root, "settings": settings, "grid": grid, "data": {DATA: data},
           "results": root / "results", "work": root / "work"}
    env["first"] = _run(env)
    return env


def _run(env, **overrides):
    kwargs = dict(results_dir=env["results"], workdir=env["work"], datasets=env["data"], progress=False,
                  command="pytest", log=lambda _: None)
    return run_matrix(overrides.pop("settings", env["settings"]), overrides.pop("grid", env["grid"]),
                      **{**kwargs, **overrides})


def test_first_run_writes_every_cell_and_matrix_json(matrix_env):
    first = matrix_env["first"]
    assert first["run_stats"]["cells_run"] == 4
    # one backdoored model, one clean floor model, one teacher: each trained once for the whole run
    assert sorted(name.split("-")[0] for name in first["run_stats"]["models_trained"]) == ["clean", "suspect", "teacher"]
    payload = json.loads((matrix_env["results"] / "matrix.json").read_text())
    assert payload["complete"] and payload["n_finished"] == 4 and not payload["missing"]
    names = {(c["defense"], c["label_mode"]) for c in payload["cells"]}
    assert names == {("clean_floor", None), ("none", "dirty"), ("lora", "dirty"), ("w2sdefense", "dirty")}
    for cell in payload["cells"]:
        assert 0.0 <= cell["cacc"] <= 1.0 and 0.0 <= cell["asr"] <= 1.0 and cell["seconds"] > 0
        assert cell_path(matrix_env["results"], cell["key"]).is_file()
    assert payload["hardware"]["torch_threads"] >= 1 and payload["command"] == "pytest"
    assert payload["wall_seconds"] > 0 and len(payload["invocations"]) == 1
    # the shared backdoored model is stored as safetensors and reused by the W2SDefense cell
    w2s = next(c for c in payload["cells"] if c["defense"] == "w2sdefense")
    none = next(c for c in payload["cells"] if c["defense"] == "none")
    assert {m["kind"] for m in w2s["shared_models"]} == {"suspect", "teacher"}
    assert [m["key"] for m in w2s["shared_models"] if m["kind"] == "suspect"] == [none["shared_models"][0]["key"]]
    assert list(matrix_env["work"].glob("models/suspect-*/model.safetensors"))


def test_rerun_is_a_cache_hit(matrix_env):
    before = {c["key"]: c["seconds"] for c in json.loads((matrix_env["results"] / "matrix.json").read_text())["cells"]}
    again = _run(matrix_env)
    assert again["run_stats"] == {"cells_run": 0, "models_trained": []}
    assert {c["key"]: c["seconds"] for c in again["cells"]} == before
    assert len(again["invocations"]) == 1  # a run that trained nothing adds no wall time


def test_deleting_one_cell_reruns_only_that_cell(matrix_env):
    status = cell_status(matrix_env["grid"], matrix_env["settings"], matrix_env["results"])
    key = next(k for spec, k, _ in status if spec.defense == "none")
    cell_path(matrix_env["results"], key).unlink()
    again = _run(matrix_env)
    assert again["run_stats"]["cells_run"] == 1
    assert again["run_stats"]["models_trained"] == []  # the backdoored model comes from the work dir
    redone = next(c for c in again["cells"] if c["key"] == key)
    assert redone["shared_models"][0]["trained_here"] is False
    assert len(again["invocations"]) == 2


def test_a_run_whose_cells_were_all_redone_drops_out_of_the_wall_time(matrix_env, tmp_path):
    grid = MatrixGrid(datasets=[DATA], attacks=["badnets"], label_modes=["dirty"], defenses=["none"], seeds=[0])
    kwargs = dict(grid=grid, results_dir=tmp_path / "results", output=tmp_path / "m.json")
    first = _run(matrix_env, **kwargs)
    assert len(first["invocations"]) == 1
    for record in first["cells"]:
        cell_path(tmp_path / "results", record["key"]).unlink()
    again = _run(matrix_env, **kwargs)
    assert again["run_stats"]["cells_run"] == 2
    assert len(again["invocations"]) == 1  # only the run that made the cells on disk


def test_other_defenses_reuse_the_backdoored_model(matrix_env):
    grid = MatrixGrid(datasets=[DATA], attacks=["badnets"], label_modes=["dirty"],
                      defenses=["e_pur", "fine_purifying"], seeds=[0])
    out = _run(matrix_env, grid=grid, output=matrix_env["root"] / "other.json")
    assert out["run_stats"]["cells_run"] == 2  # the floor cell is shared with the first grid: cached
    assert out["run_stats"]["models_trained"] == []
    by_defense = {c["defense"]: c for c in out["cells"]}
    assert by_defense["fine_purifying"]["details"]["dims_reset"] > 0
    assert len(by_defense["e_pur"]["details"]["tokens_reset"]) == 5


def test_a_new_text_cut_retrains_the_shared_models(matrix_env, tmp_path):
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "trigger_room": 6})
    grid = MatrixGrid(datasets=[DATA], attacks=["badnets"], label_modes=["dirty"], defenses=["none"], seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, results_dir=tmp_path / "results",
               output=tmp_path / "cut.json")
    assert len(out["run_stats"]["models_trained"]) == 2  # the suspect and the clean model, both on cut texts


def test_changing_a_setting_changes_the_key(matrix_env):
    spec = CellSpec(DATA, "badnets", "dirty", "none", 0)
    base = matrix_env["settings"]
    changed = MatrixSettings(**{**base.to_dict(), "fp_ratio": 0.4})
    assert spec.key(base) != spec.key(changed)
    assert spec.key(base) == spec.key(MatrixSettings(**base.to_dict()))
    assert spec.key(base) != CellSpec(DATA, "badnets", "dirty", "none", 1).key(base)
    status = cell_status(matrix_env["grid"], changed, matrix_env["results"])
    assert all(record is None for _, _, record in status)  # nothing cached under the new settings


def test_render_writes_tables_and_scatter(matrix_env, tmp_path):
    payload = json.loads((matrix_env["results"] / "matrix.json").read_text())
    # a second seed for one cell, so that a std over two seeds shows up
    extra = dict(next(c for c in payload["cells"] if c["defense"] == "lora"), seed=1, cacc=0.5, asr=0.0)
    payload["cells"].append(extra)
    out = render_results(payload, tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures" / "s.png")
    text = out["markdown"].read_text()
    assert "## tiny_reviews" in text and "| LoRA |" in text and "*clean-data floor*" in text
    lora = next(c for c in payload["cells"] if c["defense"] == "lora" and c["seed"] == 0)
    mean = 100 * (lora["cacc"] + 0.5) / 2
    assert f"{mean:.1f} ± " in text and "(n=2)" in text
    assert "![CACC against ASR" in text and "(figures/s.png)" in text
    assert "```bash\npytest\n```" in text and "No cell is missing." in text
    assert out["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_lists_missing_cells(matrix_env, tmp_path):
    from hf_backdoor_defense.matrix.runner import assemble

    def page(grid):
        status = cell_status(grid, matrix_env["settings"], matrix_env["results"])
        payload = assemble(grid, matrix_env["settings"], status, command="pytest", preset=None, invocations=[])
        return render_results(payload, tmp_path / "r.md", tmp_path / "r.png")

    # the BadNets floor is cached from the first run; the clean-label cell is not
    partial = MatrixGrid(datasets=[DATA], attacks=["badnets"], label_modes=["clean"], defenses=["none"], seeds=[0])
    dry = _run(matrix_env, grid=partial, dry_run=True)
    assert dry["run_stats"]["cells_run"] == 0 and len(dry["missing"]) == 1 and len(dry["cells"]) == 1
    out = page(partial)
    text = out["markdown"].read_text()
    assert f"**Missing cells (1):** `{DATA}/badnets/clean/none/s0`" in text and out["figure"] is not None
    # nothing finished: the page says so and has no figure
    (tmp_path / "r.png").unlink()
    empty = MatrixGrid(datasets=[DATA], attacks=["addsent"], label_modes=["clean"], defenses=["none"], seeds=[0])
    out = page(empty)
    text = out["markdown"].read_text()
    assert out["figure"] is None and not (tmp_path / "r.png").exists()
    assert "Not run yet" in text and "All 2 cells are missing." in text and "![" not in text


def test_script_dry_run_and_render(matrix_env, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("run_matrix_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # the same cells through the command line: a local dataset folder and the tiny model
    folder = tmp_path / DATA
    for split, ds in matrix_env["data"][DATA].items():
        folder.mkdir(exist_ok=True)
        ds.to_csv(folder / f"{split}.csv", index=False)
    options = [f"--{k}={v}" for k, v in SETTINGS.items()]
    args = ["--datasets", str(folder), "--attacks", "badnets", "--label_modes", "dirty", "--defenses", "none",
            "--seeds", "0", "--model", str(matrix_env["root"] / "model"), *options,
            "--results_dir", str(matrix_env["results"]), "--dry_run"]
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    assert "2 cells: 0 cached, 2 to run" in printed and f"{folder}/badnets/dirty/none/s0" in printed
    # --render works from matrix.json alone
    shutil.copy(matrix_env["results"] / "matrix.json", tmp_path / "m.json")
    assert script.main(["--render", "--output", str(tmp_path / "m.json"), "--docs", str(tmp_path / "p.md"),
                        "--figure", str(tmp_path / "p.png")]) == 0
    assert "| W2SDefense |" in (tmp_path / "p.md").read_text() and (tmp_path / "p.png").is_file()


def test_trigger_room_cuts_every_split_before_poisoning(matrix_env, bert_tokenizer):
    from hf_backdoor_defense.matrix.cells import MatrixContext

    long_data = datasets.DatasetDict({s: datasets.Dataset.from_dict(
        {"text": [" ".join(["word"] * 40)] * 12, "label": [0, 1] * 6}) for s in ("train", "validation", "test")})
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "max_length": 16, "trigger_room": 4})
    ctx = MatrixContext(settings, workdir=matrix_env["work"], datasets={"long": long_data})
    for name in ("train", "clean", "test"):  # 16 - [CLS] - [SEP] - 4 = 10 tokens left for the text
        assert {len(bert_tokenizer.tokenize(t)) for t in ctx.splits("long", 0)[name]["text"]} == {10}
    uncut = MatrixContext(MatrixSettings(**{**settings.to_dict(), "trigger_room": None}),
                          workdir=matrix_env["work"], datasets={"long": long_data})
    assert {len(t.split()) for t in uncut.splits("long", 0)["test"]["text"]} == {40}
    assert long_data["test"]["text"][0].count("word") == 40  # the loaded data is not modified
    with pytest.raises(ValueError, match="trigger_room"):
        MatrixSettings(max_length=16, trigger_room=13)


def test_script_reads_none_for_optional_settings():
    spec = importlib.util.spec_from_file_location("run_matrix_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    settings, _, _ = script.resolve(script.build_parser().parse_args(["--preset", "quick", "--trigger_room", "none"]))
    assert settings.trigger_room is None
    settings, _, _ = script.resolve(script.build_parser().parse_args(["--preset", "quick", "--trigger_room", "6"]))
    assert settings.trigger_room == 6
