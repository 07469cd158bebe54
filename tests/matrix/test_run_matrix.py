"""The defense matrix end to end on a tiny random BERT: cells cached by hash, resume, render."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
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
from hf_backdoor_defense.matrix.render import _purifier_facts

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "run_matrix.py"
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
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["none", "lora", "w2sdefense"],
                      seeds=[0])
    env = {"root": root, "settings": settings, "grid": grid, "data": {DATA: data},
           "results": root / "results", "work": root / "work"}
    env["first"] = _run(env)
    return env


def _run(env, **overrides):
    kwargs = dict(results_dir=env["results"], workdir=env["work"], datasets=env["data"], progress=False,
                  command="pytest", log=lambda _: None)
    return run_matrix(overrides.pop("settings", env["settings"]), overrides.pop("grid", env["grid"]),
                      **{**kwargs, **overrides})


@pytest.mark.slow
def test_first_run_writes_every_cell_and_matrix_json(matrix_env):
    first = matrix_env["first"]
    assert first["run_stats"]["cells_run"] == 4
    # one backdoored model, one clean floor model, one teacher: each trained once for the whole run
    assert sorted(name.split("-")[0] for name in first["run_stats"]["models_trained"]) == ["clean", "suspect", "teacher"]
    payload = json.loads((matrix_env["results"] / "matrix.json").read_text())
    assert payload["complete"] and payload["n_finished"] == 4 and not payload["missing"]
    names = {(c["defense"], c["threat"]) for c in payload["cells"]}
    assert names == {("clean_floor", "badnets"), ("none", "badnets-dirty"), ("lora", "badnets-dirty"),
                     ("w2sdefense", "badnets-dirty")}
    for cell in payload["cells"]:
        assert 0.0 <= cell["cacc"] <= 1.0 and 0.0 <= cell["asr"] <= 1.0 and cell["seconds"] > 0
        assert cell_path(matrix_env["results"], cell["key"]).is_file()
    assert payload["hardware"]["torch_threads"] >= 1 and payload["command"] == "pytest"
    assert "other_torch_processes" in payload["hardware"]["machine_at_start"]
    assert all(c["machine"]["samples"] >= 2 and "busy" in c["machine"] for c in payload["cells"])
    assert payload["wall_seconds"] > 0 and len(payload["invocations"]) == 1
    # the shared backdoored model is stored as safetensors and reused by the W2SDefense cell
    w2s = next(c for c in payload["cells"] if c["defense"] == "w2sdefense")
    none = next(c for c in payload["cells"] if c["defense"] == "none")
    assert {m["kind"] for m in w2s["shared_models"]} == {"suspect", "teacher"}
    assert [m["key"] for m in w2s["shared_models"] if m["kind"] == "suspect"] == [none["shared_models"][0]["key"]]
    assert list(matrix_env["work"].glob("models/suspect-*/model.safetensors"))


@pytest.mark.slow
def test_rerun_is_a_cache_hit(matrix_env):
    before = {c["key"]: c["seconds"] for c in json.loads((matrix_env["results"] / "matrix.json").read_text())["cells"]}
    again = _run(matrix_env)
    assert again["run_stats"] == {"cells_run": 0, "models_trained": []}
    assert {c["key"]: c["seconds"] for c in again["cells"]} == before
    assert len(again["invocations"]) == 1  # a run that trained nothing adds no wall time


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_run_whose_cells_were_all_redone_drops_out_of_the_wall_time(matrix_env, tmp_path):
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["none"], seeds=[0])
    kwargs = dict(grid=grid, results_dir=tmp_path / "results", output=tmp_path / "m.json")
    first = _run(matrix_env, **kwargs)
    assert len(first["invocations"]) == 1
    for record in first["cells"]:
        cell_path(tmp_path / "results", record["key"]).unlink()
    again = _run(matrix_env, **kwargs)
    assert again["run_stats"]["cells_run"] == 2
    assert len(again["invocations"]) == 1  # only the run that made the cells on disk


@pytest.mark.slow
def test_other_defenses_reuse_the_backdoored_model(matrix_env):
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["e_pur", "fine_purifying"], seeds=[0])
    out = _run(matrix_env, grid=grid, output=matrix_env["root"] / "other.json")
    assert out["run_stats"]["cells_run"] == 2  # the floor cell is shared with the first grid: cached
    assert out["run_stats"]["models_trained"] == []
    by_defense = {c["defense"]: c for c in out["cells"]}
    assert by_defense["fine_purifying"]["details"]["dims_reset"] > 0
    assert len(by_defense["e_pur"]["details"]["tokens_reset"]) == 5
    for defense in ("e_pur", "fine_purifying"):  # the purification step's peak memory, in copies of the model
        assert 0.0 <= by_defense[defense]["details"]["peak_extra_x_model"] < 20.0
    recall, memory = _purifier_facts(out["cells"], "e_pur")
    assert "recall of the BadNets trigger words" in recall and "(1 cell measured)" in memory


@pytest.mark.slow
def test_baseline_cells_score_the_backdoored_model_behind_onion_and_strip(matrix_env, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_backdoor_defense.assets import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    tokenizer.pad_token = None  # the asset pads with its end token; a base Llama has no pad token at all
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    settings = dataclasses.replace(matrix_env["settings"], onion_model=str(tmp_path / "lm"), strip_frr=0.25,
                                   onion_eval_size=10)
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["none", "onion", "strip", "rap", "bki", "cube"],
                      seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, output=tmp_path / "baselines.json")
    assert out["run_stats"]["models_trained"] == []  # the backdoored model of the first grid
    cells = {c["defense"]: c for c in out["cells"]}
    assert out["run_stats"]["cells_run"] == 5 and cells["none"]["key"] == next(
        c["key"] for c in matrix_env["first"]["cells"] if c["defense"] == "none")
    for detector in ("strip", "rap"):
        details = cells[detector]["details"]
        assert 0.0 <= details["frr"] <= 1.0 and 0.0 <= details["far"] <= 1.0 and "threshold" in details
        assert cells[detector]["cacc"] <= cells["none"]["cacc"] + 1e-9  # rejections only lose clean predictions
        assert cells[detector]["asr"] <= cells["none"]["asr"] + 1e-9
        assert details["auroc"] is None or 0.0 <= details["auroc"] <= 1.0
    assert [h["epoch"] for h in cells["rap"]["details"]["rap_history"]] == list(range(1, settings.rap_epochs + 1))
    page = render_results(out, tmp_path / "b.md", tmp_path / "b.png")["markdown"].read_text()
    assert "STRIP and RAP (baselines) reject inputs" in page  # how a detector's ASR can fall below the floor
    onion = cells["onion"]["details"]
    assert onion["words_removed_per_clean_input"] >= 0 and onion["words_removed_per_triggered_input"] >= 0
    assert 0.0 <= cells["onion"]["asr"] <= 1.0
    assert cells["onion"]["n_clean"] == 10 < cells["strip"]["n_clean"]  # ONION scores a capped subsample
    assert cells["onion"]["n_triggered"] == min(10, cells["strip"]["n_triggered"])
    bki = cells["bki"]["details"]
    assert len(bki["keywords"]) == 1 and bki["removed"] + bki["kept"] == SETTINGS["train_size"]
    assert bki["recall"] is None or 0.0 <= bki["recall"] <= 1.0
    cube = cells["cube"]["details"]
    assert cube["removed"] + cube["kept"] == SETTINGS["train_size"] and cube["noise"] >= 0


@pytest.mark.slow
def test_a_new_text_cut_retrains_the_shared_models(matrix_env, tmp_path):
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "trigger_room": 6})
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["none"], seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, results_dir=tmp_path / "results",
               output=tmp_path / "cut.json")
    assert len(out["run_stats"]["models_trained"]) == 2  # the suspect and the clean model, both on cut texts


@pytest.mark.slow
def test_changing_a_setting_changes_the_keys_of_the_cells_that_read_it(matrix_env):
    spec = CellSpec(DATA, "badnets-dirty", "none", 0)
    base = matrix_env["settings"]
    shared = MatrixSettings(**{**base.to_dict(), "epochs": 2.0})
    assert spec.key(base) != spec.key(shared)
    assert spec.key(base) == spec.key(MatrixSettings(**base.to_dict()))
    assert spec.key(base) != CellSpec(DATA, "badnets-dirty", "none", 1).key(base)
    assert spec.key(base) != spec.key(MatrixSettings(**{**base.to_dict(), "eval_split": "validation"}))
    status = cell_status(matrix_env["grid"], shared, matrix_env["results"])
    assert all(record is None for _, _, record in status)  # nothing cached under the new settings
    # a setting of one defense re-runs that defense's cells only
    own = MatrixSettings(**{**base.to_dict(), "fp_ratio": 0.4, "musclelora_head": "trainable"})
    for defense, moves in (("fine_purifying", True), ("musclelora", True), ("none", False), ("lora", False),
                           ("fine_mixing", False), ("w2sdefense", False)):
        cell = CellSpec(DATA, "badnets-dirty", defense, 0)
        assert (cell.key(base) != cell.key(own)) is moves, defense
    # Fine-purifying's curvature exponent: at the paper's 1 the cached keys stay, another value re-keys its cells
    alpha = MatrixSettings(**{**base.to_dict(), "fp_alpha": 0.5})
    for defense in ("fine_purifying", "fine_mixing", "none"):
        cell = CellSpec(DATA, "badnets-dirty", defense, 0)
        assert (cell.key(base) != cell.key(alpha)) is (defense == "fine_purifying"), defense
    assert "fp_alpha" not in CellSpec(DATA, "badnets-dirty", "fine_purifying", 0).config(base)
    with pytest.raises(ValueError, match="fp_alpha"):
        MatrixSettings(fp_alpha=-1.0)


@pytest.mark.slow
def test_a_revised_builtin_corpus_changes_the_keys_of_its_cells_only(matrix_env, monkeypatch):
    from hf_backdoor_defense.data import corpora

    base = matrix_env["settings"]
    spam, pair = CellSpec("spamassassin", "badnets-dirty", "none", 0), CellSpec("spamassassin@1->x", "badnets-dirty",
                                                                               "none", 0)
    rt = CellSpec("rotten_tomatoes", "badnets-dirty", "none", 0)
    assert spam.config(base)["corpus_revisions"] == {"spamassassin": corpora.CORPUS_REVISIONS["spamassassin"]}
    assert "corpus_revisions" not in rt.config(base)  # keys of corpora never revised stay as they were
    before = [spec.key(base) for spec in (spam, pair, rt)]
    monkeypatch.setitem(corpora.CORPUS_REVISIONS, "spamassassin", 99)
    after = [spec.key(base) for spec in (spam, pair, rt)]
    assert before[0] != after[0] and before[1] != after[1] and before[2] == after[2]


@pytest.mark.slow
def test_render_writes_tables_and_scatter(matrix_env, tmp_path):
    payload = json.loads((matrix_env["results"] / "matrix.json").read_text())
    # a second seed for one cell, so that a std over two seeds shows up
    extra = dict(next(c for c in payload["cells"] if c["defense"] == "lora"), seed=1, cacc=0.5, asr=0.0)
    payload["cells"].append(extra)
    out = render_results(payload, tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures" / "s.png")
    text = out["markdown"].read_text()
    assert "## tiny_reviews" in text and "| LoRA |" in text and "*clean-data floor (full FT)*" in text
    lora = next(c for c in payload["cells"] if c["defense"] == "lora" and c["seed"] == 0)
    mean = 100 * (lora["cacc"] + 0.5) / 2
    assert f"{mean:.1f} ± " in text and "(n=2)" in text
    assert "![ASR - floor against CACC - floor" in text and "(figures/s.png)" in text
    # ASR - floor, paired per seed: seed 0 has a floor, seed 1 has none, so only seed 0 counts
    floor = next(c for c in payload["cells"] if c["defense"] == "clean_floor")
    assert f"Δ {100 * (lora['asr'] - floor['asr']):+.1f}".replace("+0.0", "0.0").replace("-0.0", "0.0") in text
    assert "```bash\npytest\n```" in text and "No cell is missing." in text
    assert out["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["snippets"] == []  # only written when asked for


@pytest.mark.slow
def test_defense_snippets_carry_the_pages_figures_and_verdicts(matrix_env, tmp_path):
    payload = json.loads((matrix_env["results"] / "matrix.json").read_text())
    cells = {c["defense"]: c for c in payload["cells"] if c["seed"] == 0 and c["threat"] == "badnets-dirty"}
    floor = next(c for c in payload["cells"] if c["defense"] == "clean_floor" and c["seed"] == 0)
    cells["none"].update(asr=1.0)  # a planted backdoor, so that the column is judged
    cells["lora"].update(asr=floor["asr"], cacc=cells["none"]["cacc"])  # at the floor, CACC kept: removed
    out = render_results(payload, tmp_path / "r.md", tmp_path / "r.png", snippet_dir=tmp_path / "snippets")
    names = sorted(p.name for p in out["snippets"])
    assert "matrix_lora.md" in names and "matrix_none.md" not in names
    lora = (tmp_path / "snippets" / "matrix_lora.md").read_text()
    assert "| tiny_reviews | BadNets, dirty-label |" in lora and "| removed |" in lora and "Δ 0.0" in lora
    assert "removed: Δ ≤ 5 points" in lora
    # the results page judges the same cell the same way
    assert "removed: LoRA (Δ +0.0, CACC +0.0)" in out["markdown"].read_text()


@pytest.mark.slow
def test_render_lists_missing_cells(matrix_env, tmp_path):
    from hf_backdoor_defense.matrix.runner import assemble

    def page(grid):
        status = cell_status(grid, matrix_env["settings"], matrix_env["results"])
        payload = assemble(grid, matrix_env["settings"], status, command="pytest", preset=None, invocations=[])
        return render_results(payload, tmp_path / "r.md", tmp_path / "r.png")

    # the BadNets floor is cached from the first run; the clean-label cell is not
    partial = MatrixGrid(datasets=[DATA], threats=["badnets-clean"], defenses=["none"], seeds=[0])
    dry = _run(matrix_env, grid=partial, dry_run=True)
    assert dry["run_stats"]["cells_run"] == 0 and len(dry["missing"]) == 1 and len(dry["cells"]) == 1
    out = page(partial)
    text = out["markdown"].read_text()
    assert f"**Missing cells (1):** `{DATA}/badnets-clean/none/s0`" in text
    assert out["figure"] is None  # only the floor finished: nothing to plot against it yet
    # nothing finished: the page says so and has no figure
    empty = MatrixGrid(datasets=[DATA], threats=["addsent-clean"], defenses=["none"], seeds=[0])
    out = page(empty)
    text = out["markdown"].read_text()
    assert out["figure"] is None and not (tmp_path / "r.png").exists()
    assert "Not run yet" in text and "All 2 cells are missing." in text and "![" not in text


@pytest.mark.slow
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
    args = ["--datasets", str(folder), "--threats", "badnets-dirty", "--defenses", "none", "--floors", "clean_floor",
            "--seeds", "0", "--model", str(matrix_env["root"] / "model"), *options,
            "--results_dir", str(matrix_env["results"]), "--dry_run"]
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    assert "2 cells: 0 cached, 2 to run" in printed and f"{folder}/badnets-dirty/none/s0" in printed
    # --render builds the page of a grid from the cell cache alone (nothing runs; the data are not even loaded),
    # with the wall time of the recorded run that finished its cells
    shutil.copy(matrix_env["results"] / "matrix.json", tmp_path / "m.json")
    grid = ["--datasets", DATA, "--threats", "badnets-dirty", "--defenses", "none", "lora", "w2sdefense", "--floors",
            "clean_floor", "--seeds", "0", "--model", str(matrix_env["root"] / "model"), *options,
            "--full_ft_lr", str(MatrixSettings().full_ft_lr), "--results_dir", str(matrix_env["results"])]
    assert script.main(["--render", *grid, "--output", str(tmp_path / "m.json"), "--docs", str(tmp_path / "p.md"),
                        "--figure", str(tmp_path / "p.png")]) == 0
    page = (tmp_path / "p.md").read_text()
    assert "| W2SDefense |" in page and "4 of 4 cells finished" in page and (tmp_path / "p.png").is_file()
    runs = json.loads((matrix_env["results"] / "matrix_invocations.json").read_text())  # the run log
    assert runs[0]["cells_run"] == 4  # the fixture's first run (other tests of this module may add runs)
    assert re.search(r"over the \d+ invocations? recorded \(matrix_invocations\.json\)", page)


@pytest.mark.slow
def test_trigger_room_cuts_every_split_before_poisoning(matrix_env, bert_tokenizer):
    from hf_backdoor_defense.matrix.cells import MatrixContext

    long_data = datasets.DatasetDict({s: datasets.Dataset.from_dict(
        {"text": [" ".join(["word"] * 40)] * 12, "label": [0, 1] * 6}) for s in ("train", "validation", "test")})
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "max_length": 16, "trigger_room": 4})
    ctx = MatrixContext(settings, workdir=matrix_env["work"], datasets={"long": long_data})
    for name in ("train", "clean", "evaluation"):  # 16 - [CLS] - [SEP] - 4 = 10 tokens left for the text
        assert {len(bert_tokenizer.tokenize(t)) for t in ctx.splits("long", 0)[name]["text"]} == {10}
    uncut = MatrixContext(MatrixSettings(**{**settings.to_dict(), "trigger_room": None}),
                          workdir=matrix_env["work"], datasets={"long": long_data})
    assert {len(t.split()) for t in uncut.splits("long", 0)["evaluation"]["text"]} == {40}
    assert long_data["test"]["text"][0].count("word") == 40  # the loaded data is not modified
    with pytest.raises(ValueError, match="trigger_room"):
        MatrixSettings(max_length=16, trigger_room=13)


def test_a_setting_added_later_keeps_old_keys_until_it_is_changed():
    """The purifier options joined the engine after its cells were cached: at the behaviour those cells were
    measured with they stay out of the key; set otherwise they change only their own defense's cells."""
    base = MatrixSettings()
    fp, fm = CellSpec(DATA, "badnets-dirty", "fine_purifying", 0), CellSpec(DATA, "badnets-dirty", "fine_mixing", 0)
    assert "fp_estimator" not in base.for_cell("fine_purifying") and "fm_ratio_of" not in base.for_cell("fine_mixing")
    moved = MatrixSettings(fp_estimator="example", fp_embeddings="exclude", fp_ratio_of="moved")
    assert fp.key(moved) != fp.key(base) and fm.key(moved) == fm.key(base)
    assert moved.for_cell("fine_purifying")["fp_estimator"] == "example"
    with pytest.raises(ValueError, match="`fp_embeddings` must be one of"):
        MatrixSettings(fp_embeddings="some")


def test_script_reads_none_for_optional_settings():
    spec = importlib.util.spec_from_file_location("run_matrix_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    settings, _, _ = script.resolve(script.build_parser().parse_args(["--preset", "quick", "--trigger_room", "none"]))
    assert settings.trigger_room is None
    settings, _, _ = script.resolve(script.build_parser().parse_args(["--preset", "quick", "--trigger_room", "6"]))
    assert settings.trigger_room == 6
    settings, _, _ = script.resolve(script.build_parser().parse_args(
        ["--preset", "quick", "--musclelora_lr", "2e-5", "--musclelora_best_dev", "false", "--musclelora_epochs",
         "none", "--musclelora_head", "trainable"]))
    assert (settings.musclelora_lr, settings.musclelora_best_dev, settings.musclelora_epochs,
            settings.musclelora_head) == (2e-5, False, None, "trainable")
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--musclelora_best_dev", "maybe"])


def test_only_the_main_preset_writes_the_published_page(tmp_path):
    spec = importlib.util.spec_from_file_location("run_matrix_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, _, main = script.resolve(script.build_parser().parse_args(["--results_dir", str(tmp_path)]))
    assert main["docs"] == script.DOCS / "results.md" and main["output"] == tmp_path / "matrix.json"
    assert main["snippets"] == script.DOCS / "snippets"
    for preset in ("quick", "demo-minilm", "gradient-control"):
        _, _, side = script.resolve(script.build_parser().parse_args(["--preset", preset, "--results_dir", str(tmp_path)]))
        assert side["docs"] == tmp_path / f"matrix_{preset}.md" and side["output"] == tmp_path / f"matrix_{preset}.json"
        assert side["figure"] == tmp_path / f"matrix_{preset}_scatter.png" and side["snippets"] is None


@pytest.mark.slow
def test_validation_split_never_reads_test_and_is_disjoint_from_the_clean_set(matrix_env):
    from hf_backdoor_defense.matrix.cells import MatrixContext

    numbered = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"text": [f"{split} sentence number {i}" for i in range(40)], "label": [0, 1] * 20})
        for split in ("train", "validation", "test")})
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "eval_split": "validation", "clean_size": 10,
                                 "reference_size": 4, "test_size": 100})
    ctx = MatrixContext(settings, workdir=matrix_env["work"], datasets={"n": numbered})
    splits = ctx.splits("n", 0)
    evaluation, clean = set(splits["evaluation"]["text"]), set(splits["clean"]["text"])
    assert all(t.startswith("validation") for t in evaluation | clean)
    assert not evaluation & clean and len(evaluation) == 30 and len(clean) == 10
    assert set(splits["reference"]["text"]) <= clean
    test_ctx = MatrixContext(MatrixSettings(**{**settings.to_dict(), "eval_split": "test"}),
                             workdir=matrix_env["work"], datasets={"n": numbered})
    assert all(t.startswith("test") for t in test_ctx.splits("n", 0)["evaluation"]["text"])
    assert set(test_ctx.splits("n", 0)["clean"]["text"]) == clean  # the clean set does not depend on the split
    with pytest.raises(ValueError, match="`eval_split`"):
        MatrixSettings(eval_split="dev")


@pytest.mark.slow
def test_cross_domain_trains_on_the_source_and_evaluates_on_the_target(matrix_env):
    from hf_backdoor_defense.matrix.cells import MatrixContext

    def corpus(tag):
        return datasets.DatasetDict({split: datasets.Dataset.from_dict(
            {"text": [f"{tag} {split} {i}" for i in range(30)], "label": [0, 1] * 15})
            for split in ("train", "validation", "test")})

    ctx = MatrixContext(matrix_env["settings"], workdir=matrix_env["work"],
                        datasets={"a": corpus("a"), "b": corpus("b")})
    splits = ctx.splits("a->b", 0)
    assert all(t.startswith("a train") for t in splits["train"]["text"])
    assert all(t.startswith("b train") for t in splits["clean"]["text"])  # the target's unused training split
    assert all(t.startswith("b test") for t in splits["evaluation"]["text"])


def test_grid_threats_floors_and_errors():
    from hf_backdoor_defense.matrix import parse_threat, plan_cells

    assert parse_threat("badnets4-clean") == ("badnets", 4, "clean", "plain")
    assert parse_threat("addsent-mixed").trigger == "addsent" and parse_threat("badnets4", floor=True).trigger == "badnets4"
    for bad in ("badnets", "badnets-grey", "onion-dirty", "addsent2-dirty", "badnets0-dirty"):
        with pytest.raises(ValueError, match="threat"):
            parse_threat(bad)
    grid = MatrixGrid(datasets=["a", "a->b"], threats=["badnets-dirty", "badnets4-clean", "addsent-mixed"],
                      defenses=["none"], floors=["clean_floor", "clean_lora"], seeds=[0],
                      threats_by_dataset={"a->b": ["badnets-dirty"]})
    names = [c.name for c in plan_cells(grid)]
    assert names[:6] == ["a/badnets/clean_floor/s0", "a/badnets/clean_lora/s0", "a/badnets4/clean_floor/s0",
                         "a/badnets4/clean_lora/s0", "a/addsent/clean_floor/s0", "a/addsent/clean_lora/s0"]
    assert [n for n in names if n.startswith("a->b")] == ["a->b/badnets/clean_floor/s0", "a->b/badnets/clean_lora/s0",
                                                          "a->b/badnets-dirty/none/s0"]
    with pytest.raises(ValueError, match="`threats_by_dataset` names 'c'"):
        MatrixGrid(datasets=["a"], threats_by_dataset={"c": ["badnets-dirty"]})
    with pytest.raises(ValueError, match="`floors` has unknown"):
        MatrixGrid(floors=["clean_full"])
    with pytest.raises(ValueError, match="no cell to run"):
        MatrixGrid(defenses=[], floors=[])


@pytest.mark.slow
def test_floor_lora_and_mean_pooling_cells(matrix_env, tmp_path):
    """clean_lora is LoRA on the clean set; with pooling='mean' every model is mean-pooled, suspects included."""
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "pooling": "mean"})
    grid = MatrixGrid(datasets=[DATA], threats=["badnets4-clean"], defenses=["none", "musclelora", "fine_mixing"],
                      floors=["clean_floor", "clean_lora"], seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, results_dir=tmp_path / "results", output=tmp_path / "m.json")
    assert out["complete"] and out["run_stats"]["cells_run"] == 5
    by = {c["defense"]: c for c in out["cells"]}
    assert "poisoned_examples" not in by["clean_lora"]["details"]
    assert sum(m.startswith("clean_lora-") for m in out["run_stats"]["models_trained"]) == 1  # stored once
    assert by["musclelora"]["details"]["poisoned_examples"] == 2  # round(0.1 * 24), clean-label: target rows
    assert by["none"]["attack_config"]["num_triggers"] == 4 and by["none"]["attack_config"]["label_mode"] == "clean"
    suspect = next(Path(matrix_env["work"], "models").glob(f"suspect-{by['none']['shared_models'][0]['key']}"))
    assert json.loads((suspect / "config.json").read_text())["architectures"] == ["BertForMeanPooledSequenceClassification"]
    summary = out["summary"][DATA]
    assert summary["badnets4"]["clean_lora"]["asr_minus_floor"]["n"] == 1
    assert set(summary["badnets4-clean"]) == {"none", "musclelora", "fine_mixing"}


@pytest.mark.slow
def test_musclelora_cell_in_the_authors_setting_keeps_the_best_dev_epoch(matrix_env, tmp_path):
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "musclelora_init": "paper",
                                 "musclelora_multiscale_lr": 1e-4, "musclelora_epochs": 2.0,
                                 "musclelora_best_dev": True, "musclelora_alignment": "llm"})
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["musclelora"], floors=[], seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, results_dir=tmp_path / "results", output=tmp_path / "m.json")
    details = out["cells"][0]["details"]
    assert len(details["dev_accuracy"]) == 2 and details["best_checkpoint"].startswith("checkpoint-")
    with pytest.raises(ValueError, match="musclelora_best_dev"):
        MatrixSettings(**{**settings.to_dict(), "reference_size": 8})
    with pytest.raises(ValueError, match="musclelora_head"):
        MatrixSettings(musclelora_head="open")


@pytest.mark.slow
def test_w2s_cells_in_the_authors_regime_distil_on_unused_training_rows(matrix_env, tmp_path):
    """The W2S set is the training rows the poisoned sample left (8 of 24 here), the trusted clean set is dev;
    the teacher is checked against the student there, and w2s_lora trains the same LoRA without a teacher."""
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "train_size": 16, "w2s_clean_source": "unused_train",
                                 "w2s_lora_r": 4, "w2s_lora_alpha": 4.0, "w2s_batch_size": 4, "w2s_weight_decay": 0.01,
                                 "w2s_max_grad_norm": 0.0, "w2s_best_dev": True, "w2s_epochs": 2.0,
                                 "w2s_feature_alignment": "authors"})
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["w2sdefense", "w2s_lora"], floors=[],
                      seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, results_dir=tmp_path / "results", output=tmp_path / "w.json")
    cells = {c["defense"]: c for c in out["cells"]}
    w2s, plain = cells["w2sdefense"]["details"], cells["w2s_lora"]["details"]
    assert w2s["train_rows"] == plain["train_rows"] == 8
    assert 0.0 <= w2s["teacher_dev_accuracy"] <= 1.0 and 0.0 <= w2s["student_dev_accuracy"] <= 1.0
    assert w2s["teacher_beats_student"] == (w2s["teacher_dev_accuracy"] > w2s["student_dev_accuracy"])
    assert "teacher_cacc" in w2s and "teacher_cacc" not in plain
    teachers = [m for m in out["run_stats"]["models_trained"] if m.startswith("teacher-")]
    assert len(teachers) == 1  # a new teacher: it learns the W2S set, not the trusted one


def test_w2s_settings_name_the_field_and_keep_the_old_keys():
    base = MatrixSettings()
    w2s = CellSpec(DATA, "badnets-dirty", "w2sdefense", 0)
    assert not {"w2s_clean_source", "w2s_lora_alpha", "w2s_best_dev"} & set(base.for_cell("w2sdefense"))
    assert w2s.key(MatrixSettings(w2s_lora_alpha=8.0)) != w2s.key(base)
    assert "w2s_lora" not in MatrixGrid().defenses  # W2SDefense's own baseline joins by name
    for kwargs, field in (({"w2s_best_dev": True}, "w2s_best_dev"), ({"w2s_clean_size": 100}, "w2s_clean_size"),
                          ({"w2s_clean_source": "train"}, "w2s_clean_source"),
                          ({"w2s_feature_alignment": "mean"}, "w2s_feature_alignment"),
                          ({"w2s_max_grad_norm": -1.0}, "w2s_max_grad_norm")):
        with pytest.raises(ValueError, match=f"`{field}`"):
            MatrixSettings(**kwargs)


def test_verdicts_sort_defenses_by_what_they_left():
    from hf_backdoor_defense.matrix.render import _verdicts

    def stats(cacc, asr, gap):
        return {"cacc": {"mean": cacc}, "asr": {"mean": asr}, "asr_minus_floor": {"mean": gap, "n": 3}}

    payload = {"grid": {"threats": ["badnets-dirty", "addsent-dirty"],
                        "defenses": ["none", "lora", "musclelora", "fine_purifying", "w2sdefense"]}}
    summary = {DATA: {"badnets-dirty": {"none": stats(0.80, 1.0, 0.78), "lora": stats(0.79, 1.0, 0.78),
                                        "musclelora": stats(0.75, 0.24, 0.02), "fine_purifying": stats(0.79, 0.25, 0.03),
                                        "w2sdefense": stats(0.80, 0.5, 0.30)},
                      "addsent-dirty": {"none": stats(0.80, 0.6, 0.40)}}}  # not planted: no verdict
    (header, _, line) = _verdicts(payload, DATA, summary)
    assert "removed: Δ ≤ 5 points" in header
    assert line.startswith("- **BadNets, dirty-label** (undefended Δ +78.0): removed: Fine-purifying (Δ +3.0, CACC -1.0)")
    assert "at a cost in clean accuracy: MuScleLoRA (Δ +2.0, CACC -5.0)" in line
    assert "lowered: W2SDefense (Δ +30.0, CACC +0.0)" in line and "left in place: LoRA" in line


def test_every_preset_and_study_builds():
    from hf_backdoor_defense.matrix import PRESETS, plan_cells
    from hf_backdoor_defense.matrix.config import estimate_seconds
    from hf_backdoor_defense.matrix.studies import STUDIES, study_settings

    for name, (grid, settings) in PRESETS.items():
        cells = plan_cells(MatrixGrid(**grid))
        assert cells and estimate_seconds(cells, MatrixSettings(**settings)) > 0, name
    for study in STUDIES.values():
        for label in study.variants:
            assert study_settings(study, label).eval_split == "validation"  # a study never reads test
        MatrixGrid(**study.grid)
    with pytest.raises(ValueError, match="no variant"):
        study_settings(STUDIES["encoder"], "max pooling")


def test_estimate_follows_musclelora_epochs():
    from hf_backdoor_defense.matrix import plan_cells
    from hf_backdoor_defense.matrix.config import estimate_seconds

    cells = [c for c in plan_cells(MatrixGrid(defenses=["musclelora"], floors=[], seeds=[0]))
             if c.defense == "musclelora"]
    short, long = (estimate_seconds(cells, MatrixSettings(musclelora_epochs=e)) for e in (1.0, 10.0))
    assert long > 5 * short


@pytest.mark.slow
def test_quick_preset_end_to_end_on_the_real_assets(tmp_path):
    """The smoke preset through the script, on all-MiniLM-L6-v2 and Rotten Tomatoes."""
    spec = importlib.util.spec_from_file_location("run_matrix_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--preset", "quick", "--defenses", "none", "lora", "--results_dir", str(tmp_path),
                        "--workdir", str(tmp_path / "work"), "--no_progress", "--threads", "2"]) == 0
    payload = json.loads((tmp_path / "matrix_quick.json").read_text())
    assert payload["complete"] and payload["n_finished"] == 4  # two floors, none, lora
    text = (tmp_path / "matrix_quick.md").read_text()
    assert "Smoke run" in text and "| none (full FT) |" in text and "*clean-data LoRA*" in text
    assert payload["hardware"]["torch_threads"] == 2


@pytest.mark.slow
def test_study_runs_through_the_engine_and_renders(matrix_env, tmp_path, monkeypatch):
    from hf_backdoor_defense.matrix import studies

    study = studies.Study(name="tiny", question="Does pooling matter here?",
                          grid={"datasets": [DATA], "threats": ["badnets-dirty"], "defenses": ["none"],
                                "floors": ["clean_floor"], "seeds": [0]},
                          variants={"cls": {"pooling": "cls"}, "mean": {"pooling": "mean"}})
    monkeypatch.setitem(studies.PRESETS, "v2", ({}, {**SETTINGS, "model": str(matrix_env["root"] / "model")}))
    kwargs = dict(results_dir=tmp_path, workdir=matrix_env["work"], command="pytest", progress=False,
                  log=lambda _: None)
    monkeypatch.setattr(studies, "run_matrix", lambda *a, **k: run_matrix(*a, **k, datasets=matrix_env["data"]))
    first = studies.run_study(study, variants=["cls"], **kwargs)
    assert list(first["variants"]) == ["cls"]
    both = studies.run_study(study, variants=["mean"], **kwargs)
    assert list(both["variants"]) == ["cls", "mean"]  # the earlier variant is kept in the file
    cells = [c for v in both["variants"].values() for c in v["cells"]]
    assert {c["config"]["settings"]["eval_split"] for c in cells} == {"validation"}
    lines = studies.render_study(json.loads((tmp_path / "tiny.json").read_text()))
    assert "**Does pooling matter here?**" in lines[0]
    assert sum(line.startswith("| mean | tiny_reviews | none (full FT) |") for line in lines) == 1
    assert studies.missing_cells(study, tmp_path) == {"cls": 0, "mean": 0}
    from hf_backdoor_defense.matrix.render import plot_study

    figure = plot_study(json.loads((tmp_path / "tiny.json").read_text()), tmp_path / "tiny.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # one panel: the none cells against their floor
    unpaired = {**both, "variants": {k: {**v, "summary": {}} for k, v in both["variants"].items()}}
    assert plot_study(unpaired, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


@pytest.mark.slow
def test_cross_domain_cells_run(matrix_env, tmp_path):
    pair = f"{DATA}->other"
    data = {**matrix_env["data"], "other": matrix_env["data"][DATA]}
    grid = MatrixGrid(datasets=[pair], threats=["badnets-dirty"], defenses=["none", "e_pur"], seeds=[0])
    out = _run(matrix_env, grid=grid, datasets=data, results_dir=tmp_path / "results", output=tmp_path / "m.json")
    assert out["complete"] and {c["dataset"] for c in out["cells"]} == {pair}
    assert out["summary"][pair]["badnets-dirty"]["e_pur"]["asr_minus_floor"]["n"] == 1


@pytest.mark.slow
def test_weak_to_strong_w2s_cell_teaches_a_decoder_student_with_an_encoder(matrix_env, tmp_path):
    """``model`` a tiny Llama (SmolLM2's tokenizer, no pad token), ``teacher_model`` the tiny BERT: the suspect is a
    decoder with its last-token head, the teacher an encoder projected to the student's width; the cell records
    the loss weights it used and each term's share of the update once per epoch."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_backdoor_defense.assets import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    settings = MatrixSettings(**{**matrix_env["settings"].to_dict(), "model": str(tmp_path / "llama"), "pooling": "cls",
                                 "teacher_model": str(matrix_env["root"] / "model"), "w2s_epochs": 2.0,
                                 "w2s_ce_weight": 1.0, "w2s_kd_weight": 1.0, "w2s_feature_weight": 0.01})
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], defenses=["none", "w2sdefense"], floors=[], seeds=[0])
    out = _run(matrix_env, settings=settings, grid=grid, results_dir=tmp_path / "results", output=tmp_path / "w.json",
               workdir=tmp_path / "work")
    cells = {c["defense"]: c for c in out["cells"]}
    assert set(cells) == {"none", "w2sdefense"} and all(0.0 <= c["cacc"] <= 1.0 for c in cells.values())
    w2s = cells["w2sdefense"]["details"]
    assert w2s["loss_weights"] == {"ce": 1.0, "kd": 1.0, "feature": 0.01} and "preset" not in w2s
    assert [round(e["epoch"]) for e in w2s["per_epoch"]] == [1, 2]
    for epoch in w2s["per_epoch"]:
        shares = [epoch[f"grad_share_{t}"] for t in ("ce", "kd", "feature")]
        assert all(0.0 <= x <= 1.0 for x in shares) and abs(sum(shares) - 1.0) < 1e-6
    teacher = next((tmp_path / "work" / "models").glob("teacher-*"))
    assert json.loads((teacher / "config.json").read_text())["model_type"] == "w2s_teacher"
    info = json.loads((teacher / "hbd_matrix_model.json").read_text())
    assert info["config"]["teacher_model"] == str(matrix_env["root"] / "model") and info["config"]["student_hidden"] == 48
    suspect = next((tmp_path / "work" / "models").glob("suspect-*"))
    assert json.loads((suspect / "config.json").read_text())["pad_token_id"] == tokenizer.eos_token_id


def test_w2s_loss_weights_are_set_together():
    for kwargs in ({"w2s_ce_weight": 1.0}, {"w2s_ce_weight": 1.0, "w2s_kd_weight": 1.0},
                   {"w2s_ce_weight": 0.0, "w2s_kd_weight": 0.0, "w2s_feature_weight": 0.0},
                   {"w2s_ce_weight": -1.0, "w2s_kd_weight": 1.0, "w2s_feature_weight": 1.0},
                   {"w2s_ce_weight": float("nan"), "w2s_kd_weight": 1.0, "w2s_feature_weight": 1.0}):
        with pytest.raises(ValueError, match="w2s_"):
            MatrixSettings(**kwargs)
    w2s = CellSpec(DATA, "badnets-dirty", "w2sdefense", 0)
    base = MatrixSettings()
    assert w2s.key(MatrixSettings(w2s_ce_weight=5, w2s_kd_weight=0.001, w2s_feature_weight=0.001)) != w2s.key(base)
    assert w2s.key(MatrixSettings(teacher_model="minilm")) != w2s.key(base)
    none = CellSpec(DATA, "badnets-dirty", "none", 0)
    assert none.key(MatrixSettings(teacher_model="minilm", w2s_ce_weight=1, w2s_kd_weight=1,
                                   w2s_feature_weight=1)) == none.key(base)


def test_the_estimate_scales_with_the_backbone(tmp_path):
    """A larger backbone's cells are estimated longer in proportion to its non-embedding parameters."""
    from transformers import BertConfig

    from hf_backdoor_defense.matrix import plan_cells
    from hf_backdoor_defense.matrix.runner import _estimate, backbone_scale

    BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072).save_pretrained(
        tmp_path / "bert-base")
    assert backbone_scale(None) == backbone_scale("minilm") == 1.0
    assert backbone_scale(str(tmp_path / "missing")) == 1.0  # unknown: the MiniLM rates, not a crash
    scale = backbone_scale(str(tmp_path / "bert-base"))
    assert 6 < scale < 10  # 85 M against 10.6 M parameters outside the embeddings
    cells = plan_cells(MatrixGrid(datasets=[DATA], threats=["badnets-dirty"], seeds=[0]))
    base = _estimate(cells, [], MatrixSettings())
    assert _estimate(cells, [], MatrixSettings(model=str(tmp_path / "bert-base"))) == pytest.approx(base * scale)


def test_purifier_facts_count_trigger_recall_and_memory():
    def cell(defense, threat, reset=None, peak=None):
        return {"defense": defense, "threat": threat, "attack_config": {"triggers": ["cf", "mn", "bb", "tq"]},
                "details": {"tokens_reset": reset, "peak_extra_x_model": peak}}

    cells = [cell("e_pur", "badnets-dirty", ["cf", "mn", "bb", "tq", "the"], 2.1),
             cell("e_pur", "badnets4-clean", ["cf", "mn", "bb", "also"], 2.3),
             cell("e_pur", "addsent-dirty", ["3d", "watch"], None), cell("fine_mixing", "badnets-dirty", None, 2.5)]
    recall, memory = _purifier_facts(cells, "e_pur")
    assert "first 4 recorded" in recall and "7 of 8 words (88 %)" in recall and "in 1 of 2 cells" in recall
    assert "2.20× the model on average, at most 2.30× (2 cells measured)" in memory
    assert _purifier_facts(cells, "fine_mixing") == [
        "Peak memory of the purification step, above the models it starts from: "
        "2.50× the model on average, at most 2.50× (1 cell measured)."]
    assert _purifier_facts(cells, "fine_purifying") == []


def test_gradient_control_threats_name_an_adapter_attack():
    from hf_backdoor_defense.matrix import plan_cells
    from hf_backdoor_defense.matrix.config import parse_threat

    gc = parse_threat("badnets-dirty+gc")
    assert (gc.attack, gc.label_mode, gc.attacker, gc.trigger) == ("badnets", "dirty", "gradient_control", "badnets")
    assert gc.label == "BadNets, dirty-label, Gradient Control" and parse_threat("addsent-mixed").attacker == "plain"
    with pytest.raises(ValueError, match=r"\[\+gc\]"):
        parse_threat("badnets-dirty+xx")
    with pytest.raises(ValueError, match="adapter attack"):
        MatrixGrid(datasets=[DATA], threats=["badnets-dirty+gc"], defenses=["none", "e_pur"])
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty", "badnets-dirty+gc"],
                      defenses=["none", "lora", "retune"], floors=["clean_lora"], seeds=[0])
    cells = [c.name for c in plan_cells(grid)]
    assert cells == [f"{DATA}/badnets/clean_lora/s0", f"{DATA}/badnets-dirty/none/s0", f"{DATA}/badnets-dirty/lora/s0",
                     f"{DATA}/badnets-dirty/retune/s0", f"{DATA}/badnets-dirty+gc/lora/s0",
                     f"{DATA}/badnets-dirty+gc/retune/s0"]  # the adapter attack has no full fine-tune
    lora = CellSpec(DATA, "badnets-dirty", "lora", 0)
    assert lora.key(MatrixSettings(gc_clnorm_alpha=1e-3)) == lora.key(MatrixSettings())  # plain threats skip it
    purifier = CellSpec(DATA, "badnets-dirty+gc", "fine_purifying", 0)  # it starts from the attacker's adapter
    for changed in (MatrixSettings(adapter_lr=1e-3), MatrixSettings(gc_clnorm_alpha=1e-3)):
        assert purifier.key(changed) != purifier.key(MatrixSettings())
    for bad in ({"retune_lr": 0.0}, {"gc_clnorm_alpha": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MatrixSettings(**bad)
    assert CellSpec(DATA, "badnets-dirty+gc", "lora", 0).key(MatrixSettings()) != lora.key(MatrixSettings())


@pytest.mark.slow
def test_retune_cells_reuse_the_published_adapter_of_either_attacker(matrix_env, tmp_path):
    """The poisoned adapter is a shared model: trained once per attacker, scored as published (``+gc`` lora) and
    re-tuned by the user on the trusted clean set (``retune``)."""
    grid = MatrixGrid(datasets=[DATA], threats=["badnets-dirty", "badnets-dirty+gc"], defenses=["lora", "retune"],
                      threats_by_dataset={}, floors=[], seeds=[0])
    out = _run(matrix_env, grid=grid, results_dir=tmp_path / "results", output=tmp_path / "gc.json",
               workdir=tmp_path / "work")
    cells = {(c["threat"], c["defense"]): c for c in out["cells"]}
    assert set(cells) == {("badnets-dirty", "lora"), ("badnets-dirty", "retune"), ("badnets-dirty+gc", "lora"),
                          ("badnets-dirty+gc", "retune")}
    adapters = [m for m in out["run_stats"]["models_trained"] if m.startswith("adapter-")]
    assert len(adapters) == 2  # one per attacker; the plain lora cell trains in the cell as before
    published = cells[("badnets-dirty+gc", "lora")]["shared_models"][0]
    assert published["kind"] == "adapter" and "Gradient Control" in published["adapter"]
    retuned = cells[("badnets-dirty+gc", "retune")]
    assert retuned["shared_models"][0]["key"] == published["key"] and not retuned["shared_models"][0]["trained_here"]
    assert retuned["details"]["retune_rows"] == matrix_env["settings"].clean_size
    for cell in cells.values():
        assert 0.0 <= cell["cacc"] <= 1.0 and 0.0 <= cell["asr"] <= 1.0
    folder = tmp_path / "work" / "models" / f"adapter-{published['key']}"
    assert (folder / "adapter_model.safetensors").is_file() and (folder / "adapter_config.json").is_file()
    purified = _run(matrix_env, grid=MatrixGrid(datasets=[DATA], threats=["badnets-dirty+gc"],
                                                defenses=["fine_purifying"], floors=[], seeds=[0]),
                    results_dir=tmp_path / "results", output=tmp_path / "gc-fp.json", workdir=tmp_path / "work")
    fp = purified["cells"][0]
    assert fp["shared_models"][0]["key"] == published["key"] and fp["details"]["dims_reset"] > 0
    page = render_results(out, tmp_path / "gc.md", tmp_path / "gc.png", title="gc")["markdown"].read_text()
    assert "BadNets, dirty-label, Gradient Control" in page and "the user's clean re-tune" in page
