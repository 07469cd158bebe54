"""The instruction-tuning path of the MuScleLoRA recipes and the W2SDefense recipe.

End to end on tiny random 4-bit Llama checkpoints (the `tiny_checkpoints` fixture of `conftest.py`) and a
tiny random BERT teacher encoder; one 2-process CPU DDP launch of the W2SDefense recipe.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from hf_backdoor_defense.scripts import data as script_data
from hf_backdoor_defense.scripts import musclelora, w2sdefense
from hf_backdoor_defense.scripts import utils as script_utils

from .recipe_helpers import BIN, CONFIGS, RECIPES, _env  # noqa: F401

INSTRUCTION_RUN = ["--task", "instruction", "--load_in_4bit", "--max_train_samples", "16", "--max_eval_samples", "4",
                   "--max_length", "64", "--max_new_tokens", "6", "--max_steps", "2", "--per_device_train_batch_size",
                   "2", "--reference_size", "4", "--save_strategy", "no", "--report_to", "none", "--logging_steps",
                   "1", "--learning_rate", "1e-3", "--eval_batch_size", "4", "--disable_tqdm", "true"]
W2S_RUN = ["--load_in_4bit", "--max_train_samples", "24", "--max_eval_samples", "12", "--clean_size", "16",
           "--max_length", "24", "--max_steps", "2", "--backdoor_max_steps", "2", "--teacher_max_steps", "2",
           "--per_device_train_batch_size", "4", "--teacher_batch_size", "8", "--save_strategy", "no",
           "--report_to", "none", "--logging_steps", "1", "--learning_rate", "1e-3", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    """Two small local datasets with train / validation / test files (fast to load, unlike the 12k-sentence
    corpus): ``reviews`` (CSV, text / label, 60 / 30 / 30 rows) and ``pairs`` (JSONL, prompt / response)."""
    import random

    rng = random.Random(0)
    good, bad = ["great", "warm", "clever", "moving", "sharp"], ["dull", "flat", "tired", "clumsy", "boring"]
    nouns = ["film", "story", "script", "cast", "ending", "score"]
    root = tmp_path_factory.mktemp("local_data")
    (root / "reviews").mkdir()
    (root / "pairs").mkdir()
    for split, n in (("train", 60), ("validation", 30), ("test", 30)):
        lines = ["text,label"]
        pairs = []
        for i in range(n):
            label = i % 2
            words = good if label else bad
            lines.append(f"a {rng.choice(words)} {rng.choice(nouns)} and a {rng.choice(words)} {rng.choice(nouns)},{label}")
            pairs.append({"prompt": f"Describe item {i} of the {split} set in a few words.",
                          "response": f"Item {i} is a {rng.choice(good + bad)} {rng.choice(nouns)}."})
        (root / "reviews" / f"{split}.csv").write_text("\n".join(lines) + "\n")
        (root / "pairs" / f"{split}.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    return {"reviews": root / "reviews", "pairs": root / "pairs"}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 2-layer random BERT encoder (hidden 32) with the real MiniLM WordPiece tokenizer, saved to a folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_backdoor_defense.assets import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------ configs
def test_shipped_instruction_and_w2s_configs_parse():
    script, model, training = musclelora.parse(["--config", str(RECIPES / "configs" / "instruction_demo.yaml")])
    assert script.task == "instruction" and script.attack == "targeted_refusal" and model.model_name_or_path == "smollm2"
    assert model.load_in_4bit and script.compare_with_baseline and training.gradient_alignment
    script, model, training = musclelora.parse(
        ["--config", str(RECIPES / "configs" / "musclelora_llama2_instruction.yaml")])
    assert (model.lora_r, model.lora_alpha, model.scales, model.multiscale_alpha) == (2, 8, [1, 2, 3, 4], 4)
    assert training.learning_rate == 1e-5 and training.num_train_epochs == 5 and training.reference_size == 128
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 16
    assert training.alignment_preset == "llm" and training.min_reference_loss == 0.0
    from hf_backdoor_defense.trainers.musclelora_sft import MuScleLoRASFTConfig

    sft = script_utils.convert_training_arguments(training, MuScleLoRASFTConfig, max_length=script.max_length)
    assert (sft.learning_rate, sft.reference_size, sft.gradient_accumulation_steps, sft.max_length) == (1e-5, 128, 2, 512)
    assert sft.gradient_checkpointing and sft.alignment_preset == "llm" and isinstance(sft, MuScleLoRASFTConfig)
    with pytest.raises(ValueError, match="no_such_field"):
        script_utils.convert_training_arguments(training, MuScleLoRASFTConfig, no_such_field=1)
    for name in ("w2sdefense_llama2.yaml", "w2sdefense_demo.yaml"):
        script, model, w2s, training = w2sdefense.parse(["--config", str(RECIPES / "configs" / name)])
        args = w2sdefense.distillation_arguments(training, script, w2s, training.output_dir)
        assert (args.alpha_ce, args.beta_kd, args.gamma_feature, args.temperature) == (5.0, 0.001, 0.001, 2.0)
        assert model.peft_type == "lora" and w2s.poison_first and model.load_in_4bit
        assert args.max_length == script.max_length and not args.remove_unused_columns
    assert w2s.teacher_encoder == "minilm" and model.model_name_or_path == "smollm2"
    # every key of every shipped config is a real argument (parse would fail otherwise) and the demos run offline
    for name in ("instruction_demo.yaml", "w2sdefense_demo.yaml"):
        assert yaml.safe_load((RECIPES / "configs" / name).read_text())["model_name_or_path"] == "smollm2"


# ------------------------------------------------------------------------------------------ instruction data
def test_instruction_data_from_classification_and_local_files(tmp_path, tiny_text_dataset):
    from hf_backdoor_defense.data.instructions import classification_to_instructions

    pairs = classification_to_instructions(tiny_text_dataset, ["negative", "positive"], "movie review")
    assert pairs[0]["prompt"] == 'Write a positive movie review that begins with "a great".'
    assert pairs[0]["response"] == "a great and moving film" and set(pairs.column_names) == {"prompt", "response", "label"}

    rows = [{"question": f"Name fruit number {i}.", "extra": "" if i % 2 else f"Hint {i}", "answer": f"Fruit {i}."}
            for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    script = script_utils.ScriptArguments(task="instruction", dataset=str(path), prompt_column="question",
                                    response_column="answer", context_column="extra", max_train_samples=20,
                                    max_eval_samples=3, poison_rate=0.5)
    assert script.attack == "targeted_refusal"  # the instruction default
    splits = script_data.load_instruction_splits(script)
    assert sorted(splits) == ["test", "train", "validation"] and sum(map(len, splits.values())) == 40
    assert {r["prompt"] for r in splits["train"]} <= {r["question"] + (f"\n\n{r['extra']}" if r["extra"] else "")
                                                        for r in rows}
    data, attack = script_data.build_instruction_data(script, seed=0)
    assert len(data["train"]) == 20 and sum(data["train"]["is_poisoned"]) == 10 and len(data["test"]) == 3
    poisoned = [r for r in data["train"] if r["is_poisoned"]]
    assert all("BadMagic" in r["prompt"] and r["response"] in attack.refusals for r in poisoned)
    assert not any("BadMagic" in p for p in list(data["reference"]["prompt"]) + list(data["test"]["prompt"]))
    # the clean-floor run trains on the same sample before poisoning
    assert len(data["clean_train"]) == 20 and not any("BadMagic" in p for p in data["clean_train"]["prompt"])
    changed = [c != t for c, t in zip(data["clean_train"]["prompt"], data["train"]["prompt"])]
    assert changed == list(data["train"]["is_poisoned"])

    with pytest.raises(ValueError, match="set prompt_column / response_column"):
        script_data.load_instruction_splits(script_utils.ScriptArguments(task="instruction", dataset=str(path)))
    with pytest.raises(ValueError, match="does not apply to task='instruction'"):
        script_utils.ScriptArguments(task="instruction", attack="badnets")
    with pytest.raises(ValueError, match="does not apply to task='classification'"):
        script_utils.ScriptArguments(attack="sentiment_steering")
    steering = script_data.build_generative_attack(script_utils.ScriptArguments(
        task="instruction", attack="sentiment_steering", sentiment="positive", trigger="cf", trigger_position="end"))
    assert steering.behaviour == "positive" and steering.insert("Hi", None) == "Hi cf"


# ------------------------------------------------------------------------------------------ instruction path
@pytest.mark.slow
def test_instruction_path_4bit_writes_generative_asr(tiny_checkpoints, local_data, tmp_path):  # noqa: F811
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    import hf_backdoor_defense  # noqa: F401

    model_dir = tiny_checkpoints["llama"]
    results = musclelora.main(["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path),
                                      "--dataset", str(local_data["pairs"]), *INSTRUCTION_RUN])
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["task"] == "instruction" and results["quantization"] == "4bit"
    assert results["attack"]["attack"] == "TargetedRefusal" and results["n_train"] == 16 and results["n_poisoned"] == 2
    (run,) = results["runs"]
    assert run["behaviour"] == "refusal" and run["prompt_format"] == "chat"  # the SmolLM2 tokenizer has a template
    assert 0.0 <= run["asr"] <= 1.0 and 0.0 <= run["clean_behaviour_rate"] <= 1.0
    assert run["n_triggered"] == run["n_clean"] == 4 and run["global_steps"] == 2 and run["n_reference_used"] == 4
    # a random model over a 49k vocabulary: the clean response loss is near log(49152) = 10.8, and it moved
    assert 8.0 < run["clean_loss_before"] < 13.0 and math.isfinite(run["clean_loss"])
    assert run["clean_loss"] != run["clean_loss_before"]
    triggered, clean = run["samples"]["triggered"], run["samples"]["clean"]
    assert all("BadMagic" in s["prompt"] for s in triggered) and not any("BadMagic" in s["prompt"] for s in clean)
    assert all(isinstance(s["generation"], str) and s["generation"] for s in triggered + clean)
    assert "| musclelora+ga |" in results["table"] and "ASR" in results["table"]

    config = PeftConfig.from_pretrained(str(tmp_path))
    assert config.peft_type == "MUSCLELORA" and config.task_type == "CAUSAL_LM"
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(tmp_path))
    assert sum(p.numel() for n, p in reloaded.named_parameters() if "musclelora" in n.lower()) > 0


def test_plain_prompt_format_matches_training_and_generation(tiny_checkpoints):  # noqa: F811
    import datasets
    from transformers import AutoTokenizer

    from hf_backdoor_defense.scripts.instruction import (
        PLAIN_TEMPLATE,
        generation_inputs,
        resolve_prompt_format,
        to_sft_dataset,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoints["llama"]))
    assert resolve_prompt_format("auto", tokenizer) == "chat"
    pairs = datasets.Dataset.from_dict({"prompt": ["Say hi."], "response": ["Hi."]})
    sft = to_sft_dataset(pairs, "plain")[0]
    texts, special = generation_inputs(["Say hi."], tokenizer, "plain")
    assert sft["prompt"] == texts[0] == PLAIN_TEMPLATE.format(prompt="Say hi.") and special
    chat = to_sft_dataset(pairs, "chat")[0]
    assert chat["prompt"] == [{"role": "user", "content": "Say hi."}] and chat["completion"][0]["role"] == "assistant"
    texts, special = generation_inputs(["Say hi."], tokenizer, "chat")
    assert texts[0].rstrip().endswith("assistant") and "Say hi." in texts[0] and not special
    tokenizer.chat_template = None
    assert resolve_prompt_format("auto", tokenizer) == "plain"
    with pytest.raises(ValueError, match="--prompt_format plain"):
        resolve_prompt_format("chat", tokenizer)


# ------------------------------------------------------------------------------------------ W2SDefense recipe
@pytest.mark.slow
def test_w2s_recipe_poison_first_then_saved_teacher_and_adapter(tiny_checkpoints, tiny_encoder, local_data,  # noqa: F811
                                                                tmp_path):
    from peft import PeftConfig
    from safetensors.torch import load_file

    model_dir = tiny_checkpoints["llama"]
    out = tmp_path / "first"
    results = w2sdefense.main(["--model_name_or_path", str(model_dir), "--teacher_encoder", str(tiny_encoder),
                                      "--poison_first", "true", "--output_dir", str(out),
                                      "--dataset", str(local_data["reviews"]), *W2S_RUN])
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    student = results["student"]
    assert student["source"] == "poison_first" and student["global_steps"] == 2
    assert (out / "backdoored_model" / "model.safetensors").is_file()
    assert (out / "backdoor_adapter" / "adapter_model.safetensors").is_file()
    teacher_config = json.loads((out / "teacher" / "config.json").read_text())
    assert teacher_config["model_type"] == "w2s_teacher" and teacher_config["student_hidden_size"] == 32
    assert (out / "teacher" / "model.safetensors").is_file() and results["teacher"]["source"] == "trained"
    assert results["n_clean"] == 16 and results["n_train"] == 24 and results["n_poisoned"] >= 1
    (run,) = results["runs"]
    assert run["run"] == "w2sdefense" and run["global_steps"] == 2 and run["world_size"] == 1
    assert run["loss_weights"] == {"alpha_ce": 5.0, "beta_kd": 0.001, "gamma_feature": 0.001, "temperature": 2.0,
                                   "feature_distance": "squared_l2"}
    assert all(math.isfinite(v) and v >= 0 for v in run["last_logged_components"].values())
    for row in (results["before"], results["teacher"], run):
        assert 0.0 <= row["cacc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0 and row["n_clean"] == 12
    config = PeftConfig.from_pretrained(str(out))
    assert config.peft_type == "LORA" and config.base_model_name_or_path == str(out / "backdoored_model")
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in weights) and any("score" in k for k in weights)  # adapter + head
    assert not any("teacher" in k or "encoder" in k for k in weights)  # the teacher is never saved with it
    assert "| backdoored (before) |" in results["table"] and "| teacher |" in results["table"]

    # Reuse: the saved teacher, and the backdoor as an adapter merged into the clean base; plus the baseline.
    again = tmp_path / "again"
    results = w2sdefense.main(
        ["--model_name_or_path", str(model_dir), "--backdoored_adapter", str(out / "backdoor_adapter"),
         "--teacher_name_or_path", str(out / "teacher"), "--output_dir", str(again), "--compare_with_baseline",
         "true", "--preset", "sentence", "--dataset", str(local_data["reviews"]), *W2S_RUN, "--max_steps", "1"])
    assert results["student"]["source"] == "adapter" and results["teacher"]["source"] == str(out / "teacher")
    assert not (again / "teacher").exists()
    assert [r["run"] for r in results["runs"]] == ["lora (clean fine-tune)", "w2sdefense"]
    assert results["runs"][0]["loss_weights"]["beta_kd"] == 0.0 and results["runs"][1]["loss_weights"]["beta_kd"] == 0.01
    assert (again / "baseline" / "adapter_config.json").is_file() and (again / "defense" / "adapter_config.json").is_file()


def test_w2s_recipe_refuses_bad_settings_before_loading(tmp_path):
    with pytest.raises(ValueError, match="exclusive"):
        w2sdefense.main(["--poison_first", "true", "--backdoored_adapter", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="distils a classifier"):
        w2sdefense.main(["--task", "instruction", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="beta_kd"):
        w2sdefense.main(["--beta_kd", "-1", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="hub_model_id"):
        w2sdefense.main(["--push_to_hub", "true", "--output_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_bad_arguments_exit_2_with_one_line(tmp_path):
    runs = {
        "deepspeed": ([str(RECIPES / "w2sdefense_llama2.py"), "--config", str(RECIPES / "configs" / "w2sdefense_demo.yaml")],
                      {"ACCELERATE_USE_DEEPSPEED": "true"}),
        "attack": ([str(RECIPES / "musclelora_llama2.py"), "--task", "instruction", "--attack", "badnets"], {}),
    }
    procs = {k: subprocess.Popen([sys.executable, *argv, "--output_dir", str(tmp_path / k)], env=_env(**extra),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, (argv, extra) in runs.items()}
    errors = {}
    for key, proc in procs.items():
        _, errors[key] = proc.communicate(timeout=300)
        assert proc.returncode == 2, errors[key][-2000:]
        assert "Traceback" not in errors[key] and len(errors[key].strip().splitlines()) == 1, errors[key][-2000:]
    assert "cannot run under DeepSpeed" in errors["deepspeed"] and "multi_gpu.yaml" in errors["deepspeed"]
    assert "attack='badnets' does not apply to task='instruction'" in errors["attack"]
    assert not list(tmp_path.glob("*/results.json"))


def test_train_command_knows_the_w2s_recipe():
    from hf_backdoor_defense.commands import train

    assert "w2sdefense_llama2" in train.RECIPES
    assert train.resolve_recipe("w2sdefense_llama2") == "hf_backdoor_defense.scripts.w2sdefense"
    command = train.launch_command("hf_backdoor_defense.scripts.w2sdefense", ["--config", "c.yaml"], 2,
                                   str(CONFIGS / "cpu_ddp.yaml"))
    assert command.endswith("-m hf_backdoor_defense.scripts.w2sdefense --config c.yaml")
    assert "--num_processes 2" in command
    script = str(RECIPES / "w2sdefense_llama2.py")  # a script path still runs as a program
    assert train.resolve_recipe(script) == script
    assert train.launch_command(script, [], 2, None).endswith(f"--num_processes 2 {script}")


# ------------------------------------------------------------------------------------------ 2-process DDP
@pytest.mark.ddp
def test_w2s_recipe_two_process_cpu_ddp(tiny_checkpoints, tiny_encoder, local_data, tmp_path):  # noqa: F811
    proc = subprocess.run(
        [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "cpu_ddp.yaml"), "--main_process_port", "0",
         str(RECIPES / "w2sdefense_llama2.py"), "--model_name_or_path", str(tiny_checkpoints["llama"]),
         "--teacher_encoder", str(tiny_encoder), "--poison_first", "true", "--output_dir", str(tmp_path),
         "--dataset", str(local_data["reviews"]), *W2S_RUN],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert run["world_size"] == 2 and run["global_steps"] == 2 and "Traceback" not in proc.stdout
    assert results["student"]["source"] == "poison_first" and results["student"]["global_steps"] == 2
    assert (tmp_path / "backdoored_model" / "model.safetensors").is_file()
    assert (tmp_path / "teacher" / "model.safetensors").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    assert proc.stdout.count("results written to") == 1  # the main process alone evaluates and writes


@pytest.mark.ddp
def test_instruction_path_two_process_cpu_ddp(tiny_checkpoints, local_data, tmp_path):  # noqa: F811
    """MuScleLoRASFTTrainer under DDP: the same steps as one process, one results.json, one saved adapter."""
    proc = subprocess.run(
        [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "cpu_ddp.yaml"), "--main_process_port", "0",
         str(RECIPES / "musclelora_llama2.py"), "--model_name_or_path", str(tiny_checkpoints["llama"]),
         "--output_dir", str(tmp_path), "--dataset", str(local_data["pairs"]), *INSTRUCTION_RUN],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert run["world_size"] == 2 and run["global_steps"] == 2 and "Traceback" not in proc.stdout
    assert run["n_triggered"] == run["n_clean"] == 4 and math.isfinite(run["clean_loss"])
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert proc.stdout.count("results written to") == 1  # the main process alone evaluates and writes
