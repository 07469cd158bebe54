"""Recipes, accelerate configs and the `hbd train` / `hbd push` plumbing.

The two end-to-end tests launch `recipes/musclelora_llama2.py` on a tiny Llama and a tiny Mistral for real
with `accelerate launch` and 2 CPU processes (gloo DDP) on tiny random 4-bit checkpoints; they run side by
side to keep the file short. The push tests patch `huggingface_hub.HfApi` at its network boundary
(`create_repo` / `upload_folder`) and check what would have been uploaded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_backdoor_defense.scripts import data as script_data
from hf_backdoor_defense.scripts import loading as script_loading
from hf_backdoor_defense.scripts import utils as script_utils

from .recipe_helpers import BIN, CONFIGS, RECIPES, ROOT, _env  # noqa: F401

TINY_RUN = ["--load_in_4bit", "--max_train_samples", "24", "--max_eval_samples", "12", "--max_length", "24",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--reference_size", "8",
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--learning_rate", "1e-3"]


# ------------------------------------------------------------------------------------------ accelerate configs
EXPECTED = {
    "single_gpu.yaml": ("NO", 1),
    "multi_gpu.yaml": ("MULTI_GPU", 2),
    "cpu_ddp.yaml": ("MULTI_GPU", 2),
    "fsdp_qlora.yaml": ("FSDP", 2),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 2),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_loads_and_is_consistent(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    kind, processes = EXPECTED[name]
    assert str(config.distributed_type).split(".")[-1] == kind
    assert config.num_processes == processes
    assert config.compute_environment.value == "LOCAL_MACHINE"
    raw = yaml.safe_load((CONFIGS / name).read_text())
    if name == "cpu_ddp.yaml":
        # MULTI_CPU would start a single process here; the multi-GPU launcher + use_cpu gives 2 CPU processes.
        assert config.use_cpu is True and config.mixed_precision == "no"
    if name == "fsdp_qlora.yaml":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
        assert fsdp["fsdp_use_orig_params"] is False
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if name.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero_stage"] == int(name[-6])
    assert set(EXPECTED) == {p.name for p in CONFIGS.glob("*.yaml")}


def test_fsdp_stores_4bit_weights_in_compute_dtype(monkeypatch):
    import torch

    args = script_utils.ModelArguments(model_name_or_path="x", load_in_4bit=True)
    assert script_loading.quantization_config(args).bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    quant = script_loading.quantization_config(args)
    assert quant.bnb_4bit_quant_storage == quant.bnb_4bit_compute_dtype == torch.float32  # CPU compute dtype
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant


# ------------------------------------------------------------------------------------------ argument parsing
def test_yaml_config_is_overridden_by_command_line(tmp_path):
    from hf_backdoor_defense.trainers.musclelora import MuScleLoRATrainingArguments

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": "smollm2", "load_in_4bit": True, "learning_rate": 3e-4, "max_steps": 7,
        "scales": [1, 2, 8], "gradient_alignment": True, "output_dir": str(tmp_path / "out"), "report_to": "none",
        "poison_rate": 0.2,
    }))
    script, model, training = script_utils.parse_args(
        [script_utils.ScriptArguments, script_utils.ModelArguments, MuScleLoRATrainingArguments],
        ["--config", str(config), "--max_steps", "3", "--gradient_alignment", "false", "--scales", "1", "4"],
    )
    assert training.max_steps == 3 and training.gradient_alignment is False  # command line wins
    assert model.scales == [1.0, 4.0]
    assert training.learning_rate == 3e-4 and model.load_in_4bit and script.poison_rate == 0.2  # from the file
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path), "no_such_argument": 1}))
    with pytest.raises(ValueError, match="no_such_argument"):
        script_utils.parse_args([script_utils.ScriptArguments, MuScleLoRATrainingArguments], ["--config", str(config)])


def test_config_value_reads_the_file_then_the_command_line_and_env_is_set(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"gradient_alignment": False}))
    assert script_utils.config_value(["--config", str(config)], "gradient_alignment", True) is False
    assert script_utils.config_value(["--config", str(config), "--gradient_alignment", "true"], "gradient_alignment",
                               False) is True
    assert script_utils.config_value(["--gradient_alignment"], "gradient_alignment", False) is True
    assert script_utils.config_value([], "gradient_alignment", True) is True
    monkeypatch.delenv("HBD_TEST_FROM_CONFIG", raising=False)
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "report_to": "none",
                                      "env": {"HBD_TEST_FROM_CONFIG": "yes"}}))
    (training,) = script_utils.parse_args([TrainingArguments], ["--config", str(config)])
    assert training.output_dir == str(tmp_path / "out")
    import os

    assert os.environ.pop("HBD_TEST_FROM_CONFIG") == "yes"  # TRL's `env:` block of a config file
    with pytest.raises(FileNotFoundError, match="no such file"):
        script_utils.parse_args([TrainingArguments], ["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="needs a YAML file path"):
        script_utils.parse_args([TrainingArguments], ["--config"])


def test_argument_validation_names_the_field():
    with pytest.raises(ValueError, match="load_in_4bit and load_in_8bit"):
        script_utils.ModelArguments(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ValueError, match="reference_split='train'"):
        script_utils.ScriptArguments(reference_split="train")
    with pytest.raises(ValueError, match="peft_type='musclelora'"):
        script_utils.ModelArguments(peft_type="lora", scales=[1, 2])
    with pytest.raises(ValueError, match="eval_split='train'"):
        script_utils.ScriptArguments(eval_split="train")
    with pytest.warns(UserWarning, match="flatters CACC"):
        script_utils.ScriptArguments(eval_split="validation")


def test_trigger_room_cuts_long_texts_before_poisoning_and_its_absence_warns():
    from transformers import AutoTokenizer

    from hf_backdoor_defense.assets import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    sizes = dict(dataset="spamassassin", max_train_samples=60, max_eval_samples=40, max_length=32)
    script = script_utils.ScriptArguments(trigger_room=8, **sizes)
    data, attack = script_data.build_classification_data(script, seed=0, tokenizer=tokenizer)

    def longest(texts):
        return max(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    # clean texts fit in 32 - 2 special - 8 tokens; a poisoned text is at most one trigger longer, so the whole
    # of it, trigger included, lies inside the 30 tokens MiniLM reads
    assert longest(data["clean_train"]["text"]) <= 22 and longest(data["test"]["text"]) <= 22
    assert longest(data["reference"]["text"]) <= 22
    assert longest(data["train"]["text"]) <= 30 and longest(attack.triggered_test_set(data["test"])["text"]) <= 30
    assert sum(data["train"]["is_poisoned"]) == 6

    with pytest.warns(UserWarning, match="Set trigger_room"):
        uncut, _ = script_data.build_classification_data(script_utils.ScriptArguments(**sizes), seed=0, tokenizer=tokenizer)
    assert longest(uncut["clean_train"]["text"]) > 100  # mails run far past the window without the cut
    with pytest.raises(ValueError, match="trigger_room"):
        script_utils.ScriptArguments(task="instruction", trigger_room=8)
    with pytest.raises(ValueError, match="trigger_room"):
        script_utils.ScriptArguments(max_length=32, trigger_room=30)
    with pytest.raises(ValueError, match="no tokenizer"):
        script_data.build_classification_data(script, seed=0)


def test_shipped_recipe_configs_parse():
    from hf_backdoor_defense.trainers.musclelora import MuScleLoRATrainingArguments

    for name in ("musclelora_llama2.yaml", "musclelora_mistral.yaml", "demo.yaml"):
        script, model, training = script_utils.parse_args(
            [script_utils.ScriptArguments, script_utils.ModelArguments, MuScleLoRATrainingArguments],
            ["--config", str(RECIPES / "configs" / name), "--use_cpu", "true"],
        )
        assert model.load_in_4bit and training.gradient_alignment and script.attack == "badnets"
    assert model.model_name_or_path == "smollm2" and script.compare_with_baseline


# ------------------------------------------------------------------------------------------ launch refusal
def test_gradient_alignment_refuses_deepspeed_and_fsdp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="cannot run under DeepSpeed"):
        script_utils.check_launch_supported(True)
    script_utils.check_launch_supported(False)  # the plain baseline may use DeepSpeed
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP"):
        script_utils.check_launch_supported(True)


def test_run_cli_ends_the_process_group_a_script_made(tmp_path):
    """A script's gloo group is destroyed when it returns, so no process aborts in interpreter teardown after
    its work is done; on an error it is left to the exit (another rank may still be in a collective)."""
    import torch.distributed as dist

    def script(fail: bool):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/{int(fail)}", rank=0, world_size=1)
        assert dist.is_initialized()
        if fail:
            raise ValueError("--learning_rate must be positive")

    script_utils.run_cli(script, False)
    assert not dist.is_initialized()
    with pytest.raises(SystemExit) as stop:
        script_utils.run_cli(script, True)
    assert stop.value.code == 2 and dist.is_initialized()
    dist.destroy_process_group()
    script_utils.run_cli(lambda: None)  # no group: nothing to end


@pytest.mark.slow
def test_recipe_exits_with_a_clear_message_under_deepspeed(tmp_path):
    # What `accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml` sets in each process.
    proc = subprocess.run(
        [sys.executable, str(RECIPES / "musclelora_llama2.py"), "--config",
         str(RECIPES / "configs" / "demo.yaml"), "--output_dir", str(tmp_path)],
        env=_env(ACCELERATE_USE_DEEPSPEED="true"), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot run under DeepSpeed" in proc.stderr and "multi_gpu.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


# ------------------------------------------------------------------------------------------ 2-process runs
def _launch(script: str, model_dir: Path, output_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "cpu_ddp.yaml"), "--main_process_port",
         "0", str(RECIPES / script), "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
         *TINY_RUN],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _check_run(output_dir: Path, model_dir: Path, log: str, model_type: str):
    from peft import PeftConfig, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    import hf_backdoor_defense  # noqa: F401

    results = json.loads((output_dir / "results.json").read_text())
    (run,) = results["runs"]
    assert run["world_size"] == 2, log[-3000:]
    assert results["quantization"] == "4bit" and results["n_train"] == 24 and results["n_poisoned"] >= 1
    assert run["global_steps"] == 2 and run["gradient_alignment"] is True and run["n_reference_used"] == 8
    assert 0.0 <= run["cacc"] <= 1.0 and 0.0 <= run["asr"] <= 1.0
    assert run["n_clean"] == 12 and run["n_triggered"] > 0
    config = PeftConfig.from_pretrained(str(output_dir))
    assert config.peft_type == "MUSCLELORA" and config.base_model_name_or_path == str(model_dir)
    weights = load_file(str(output_dir / "adapter_model.safetensors"))
    assert any("down_proj" in k for k in weights) and any("q_proj" in k for k in weights)
    assert not list(output_dir.glob("*.pt")) and "Traceback" not in log
    base = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    assert base.config.model_type == model_type
    reloaded = PeftModel.from_pretrained(base, str(output_dir))
    assert sum(p.numel() for n, p in reloaded.named_parameters() if "musclelora" in n.lower()) > 0


@pytest.mark.ddp
def test_two_process_cpu_ddp_llama_and_mistral_4bit(tiny_checkpoints, tmp_path):
    runs = {
        "llama": ("musclelora_llama2.py", tmp_path / "llama"),
        "mistral": ("musclelora_llama2.py", tmp_path / "mistral"),  # Mistral is a config, not a script
    }
    procs = {k: _launch(script, tiny_checkpoints[k], out) for k, (script, out) in runs.items()}
    logs = {k: p.communicate(timeout=600)[0] for k, p in procs.items()}
    for key, proc in procs.items():
        assert proc.returncode == 0, logs[key][-4000:]
        _check_run(runs[key][1], tiny_checkpoints[key], logs[key], key)


# ------------------------------------------------------------------------------------------ Hub publishing
@pytest.mark.slow
def test_recipe_push_to_hub_uploads_adapter_with_card(tiny_checkpoints, tmp_path, fake_hub, monkeypatch):
    from hf_backdoor_defense.scripts import musclelora as recipe
    argv = ["--model_name_or_path", str(tiny_checkpoints["llama"]), "--output_dir", str(tmp_path), *TINY_RUN,
            "--max_steps", "1", "--push_to_hub", "--hub_model_id", "me/tiny-musclelora"]
    argv.remove("--load_in_4bit")
    results = recipe.main(argv)
    assert results["hub"] == {"repo_id": "me/tiny-musclelora", "commit": "abc123"}
    (upload,) = fake_hub["upload"]
    assert upload["repo_id"] == "me/tiny-musclelora"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(upload["files"])
    card = upload["files"]["README.md"].decode()
    assert "library_name: peft" in card and "musclelora" in card and "badnets" in card
    cacc = results["runs"][0]["cacc"]
    assert f"{100 * cacc:.2f}%" in card
    assert json.loads((tmp_path / "results.json").read_text())["hub"]["repo_id"] == "me/tiny-musclelora"


@pytest.mark.slow
def test_clean_floor_run_trains_lora_on_the_unpoisoned_sample(tiny_checkpoints, tmp_path):
    from hf_backdoor_defense.scripts import musclelora as recipe
    argv = ["--model_name_or_path", str(tiny_checkpoints["llama"]), "--output_dir", str(tmp_path), *TINY_RUN,
            "--max_steps", "1", "--train_clean_floor", "--compare_with_baseline"]
    argv.remove("--load_in_4bit")
    results = recipe.main(argv)
    assert [r["run"] for r in results["runs"]] == ["lora, clean data (ASR floor)", "lora (baseline)", "musclelora+ga"]
    floor = json.loads((tmp_path / "clean_floor" / "results.json").read_text())
    assert floor["peft_type"] == "lora" and not floor["gradient_alignment"]
    assert (tmp_path / "clean_floor" / "adapter_model.safetensors").is_file()
    assert results["table"].splitlines()[2].startswith("| lora, clean data (ASR floor) |")
    # a second launch into the same folder stops before loading anything, unless told to overwrite
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        recipe.main(argv)


def test_hbd_push_uploads_folder_without_pickles(tiny_checkpoints, tmp_path, fake_hub):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from hf_backdoor_defense.commands import push

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoints["llama"]), num_labels=2)
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    (adapter / "training_args.bin").write_bytes(b"pickle")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"dataset": "rotten_tomatoes", "attack": {"attack": "BadNets"},
                                   "runs": [{"output_dir": str(adapter), "cacc": 0.8125, "asr": 0.0625}]}))
    parser = argparse.ArgumentParser()
    push.register(parser.add_subparsers())
    args = parser.parse_args(["push", "--adapter", str(adapter), "--repo-id", "me/x", "--results", str(results),
                              "--defense", "musclelora"])
    assert args.func(args) == 0
    (upload,) = fake_hub["upload"]
    assert "training_args.bin" not in upload["files"] and "adapter_model.safetensors" in upload["files"]
    card = upload["files"]["README.md"].decode()
    assert "81.25%" in card and "6.25%" in card and "library_name: peft" in card and "rotten_tomatoes" in card


def test_push_command_directly_refuses_offline_and_missing_adapter(tmp_path, monkeypatch):
    from hf_backdoor_defense.commands import push

    args = argparse.Namespace(adapter=str(tmp_path), repo_id="me/x", results=None, defense=None, private=False,
                              token=None, commit_message="m")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        push.run(args)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        push.run(args)


# ------------------------------------------------------------------------------------------ hbd train
def test_train_command_prints_accelerate_command_and_rejects_unknown_recipe(capsys):
    from hf_backdoor_defense.commands import train

    parser = argparse.ArgumentParser()
    train.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--recipe", "musclelora_mistral", "--config", str(RECIPES / "configs" / "demo.yaml"),
                              "--num-processes", "2", "--", "--max_steps", "3"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("accelerate launch --config_file ")
    assert "cpu_ddp.yaml --num_processes 2" in printed and printed.endswith("--max_steps 3")
    assert "-m hf_backdoor_defense.scripts.musclelora --config" in printed and "demo.yaml" in printed  # explicit wins
    args = parser.parse_args(["train", "--recipe", "musclelora_mistral", "--print-command"])
    assert args.func(args) == 0
    assert f"musclelora --config {RECIPES / 'configs' / 'musclelora_mistral.yaml'}" in capsys.readouterr().out
    assert train.default_config("musclelora_mistral").name == "musclelora_mistral.yaml"
    args = parser.parse_args(["train", "--recipe", "nope"])
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        args.func(args)


def test_scripts_mount_as_trl_subcommands_and_the_recipe_files_call_them():
    import argparse
    import importlib
    import importlib.util

    from trl import TrlParser

    from hf_backdoor_defense.commands import train

    top = argparse.ArgumentParser(prog="mine")
    subparsers = top.add_subparsers(dest="command", parser_class=TrlParser)
    modules = {name: importlib.import_module(train.resolve_recipe(name)) for name in train.RECIPES}
    for name, module in modules.items():
        if name != "musclelora_mistral":  # the same script as musclelora_llama2
            module.make_parser(subparsers)
    parser = subparsers.choices["fine_mixing"]
    script, model, purify, method, training = parser.parse_args_and_config(
        args=["--ratio", "0.3", "--output_dir", "out", "--use_cpu", "true"])
    assert method.ratio == 0.3 and training.output_dir == "out" and purify.clean_samples == 256
    with pytest.raises(ValueError, match="no_such_option"):  # unknown options are errors, as with the script's parser
        subparsers.choices["musclelora"].parse_args_and_config(args=["--no_such_option", "1"])
    for name, module in modules.items():  # recipes/<name>.py runs the same main as `hbd train --recipe <name>`
        path = RECIPES / f"{name}.py"
        if not path.is_file():
            continue  # musclelora_mistral is a config
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", path)
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        assert shim.main is module.main, name


def test_use_cpu_from_the_config_wins_and_addsent_refuses_a_trigger_count(tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from hf_backdoor_defense.commands import train

    config = tmp_path / "c.yaml"
    config.write_text("use_cpu: false\noutput_dir: out\n")
    (training,) = script_utils.parse_args([TrainingArguments], ["--config", str(config)])
    assert training.use_cpu is False  # the file's choice is kept; without it, CPU is implied here
    (training,) = script_utils.parse_args([TrainingArguments], ["--output_dir", "out"])
    assert training.use_cpu is True
    with pytest.raises(ValueError, match="num_triggers=2 applies to attack 'badnets' only"):
        script_utils.ScriptArguments(attack="addsent", num_triggers=2)
    # a pip install has no accelerate_configs/: the printed command leaves the choice to accelerate
    monkeypatch.setattr(train, "_CHECKOUT", tmp_path)
    command = train.launch_command("hf_backdoor_defense.scripts.musclelora", ["--config", "c.yaml"], 4, None)
    assert command == "accelerate launch --num_processes 4 -m hf_backdoor_defense.scripts.musclelora --config c.yaml"
