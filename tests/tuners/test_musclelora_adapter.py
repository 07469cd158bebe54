"""MuScleLoRA as a PEFT adapter type: tiny random models of every supported architecture."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import torch
from peft import (
    AutoPeftModelForCausalLM,
    AutoPeftModelForSequenceClassification,
    LoraConfig,
    PeftModel,
    PeftType,
    get_peft_model,
)
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
)

import hf_backdoor_defense  # noqa: F401  (registers MUSCLELORA)
from hf_backdoor_defense.tuners.musclelora import MuScleLoRAConfig, MuScleLoRALayer, MuScleLoRAModel
from hf_backdoor_defense.tuners.musclelora.config import MUSCLELORA_ARCHITECTURE_DEFAULTS
from hf_backdoor_defense.tuners.musclelora.layer import Linear

VOCAB = 128


def _config(arch: str, num_labels: int = 2):
    common = {"vocab_size": VOCAB, "num_labels": num_labels, "pad_token_id": 0}
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64, **common)
    if arch == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=66, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=64, **common)
    decoder = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 64, "max_position_embeddings": 64, **common}
    return {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch](**decoder)


def _model(arch: str, task: str = "SEQ_CLS", seed: int = 0):
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
    return auto.from_config(_config(arch)).eval()


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _random_factors(model, seed: int = 2):
    """Make the adapter non-trivial (B is zero at creation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "musclelora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


ENCODERS = ["bert", "roberta"]
DECODERS = ["gpt2", "llama", "mistral", "qwen2"]
ALL = ENCODERS + DECODERS
CASES = [(a, "SEQ_CLS") for a in ALL] + [(a, "CAUSAL_LM") for a in DECODERS]


# ----------------------------------------------------------------------------- registration
@pytest.mark.slow
def test_import_is_light_and_registers_when_peft_first_loads(tmp_path):
    """`import hf_backdoor_defense` loads neither torch nor PEFT, yet a later `import peft` knows MUSCLELORA:
    a saved adapter loads through PeftModel with nothing but the package import (fresh interpreter)."""
    save = tmp_path / "adapter"
    code = f"""
import sys
import hf_backdoor_defense
assert not {{"torch", "peft", "transformers", "datasets"}} & set(sys.modules), sorted(sys.modules)
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from transformers import BertConfig, BertForSequenceClassification
assert PEFT_TYPE_TO_CONFIG_MAPPING["MUSCLELORA"].__name__ == "MuScleLoRAConfig"
base = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32))
peft_model = get_peft_model(base, hf_backdoor_defense.MuScleLoRAConfig(task_type="SEQ_CLS"))
peft_model.save_pretrained({str(save)!r})
assert PeftConfig.from_pretrained({str(save)!r}).peft_type == "MUSCLELORA"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_peft_type_is_a_real_enum_member_and_idempotent():
    import json

    from hf_backdoor_defense.tuners.musclelora.config import _register_peft_type

    assert PeftType("MUSCLELORA") is PeftType.MUSCLELORA is PeftType["MUSCLELORA"]
    assert PeftType.MUSCLELORA.value == PeftType.MUSCLELORA.name == "MUSCLELORA"
    assert sum(m is PeftType.MUSCLELORA for m in PeftType) == 1
    assert _register_peft_type() is PeftType.MUSCLELORA  # a second registration is a no-op
    assert sum(m.value == "MUSCLELORA" for m in PeftType) == 1
    config = MuScleLoRAConfig(task_type="SEQ_CLS", scales=[1, 2])
    assert pickle.loads(pickle.dumps(PeftType.MUSCLELORA)) is PeftType.MUSCLELORA
    assert pickle.loads(pickle.dumps(config)).peft_type is PeftType.MUSCLELORA
    assert json.loads(json.dumps(config.to_dict()))["peft_type"] == "MUSCLELORA"


def test_every_config_field_has_help_and_docstring_entry():
    import dataclasses

    from peft import PeftConfig

    base_fields = {f.name for f in dataclasses.fields(PeftConfig)}
    for f in dataclasses.fields(MuScleLoRAConfig):
        if f.name in base_fields:
            continue
        assert f.metadata.get("help"), f.name
        if f.name != "target_parameters":
            assert f"{f.name} (" in MuScleLoRAConfig.__doc__, f.name


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"scales": []}, "scales"),
        ({"scales": [1, 0]}, "scales"),
        ({"scales": [1, -2]}, "scales"),
        ({"r": 0}, "r"),
        ({"r": -1}, "r"),
        ({"rank_per_scale": 0}, "rank_per_scale"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"multiscale_alpha": -1}, "multiscale_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"multiscale_dropout": -0.1}, "multiscale_dropout"),
        ({"init_weights": "gaussian"}, "init_weights"),
        ({"bias": "some"}, "bias"),
        ({"target_parameters": ["x.weight"]}, "target_parameters"),
        ({"target_modules": ["q_proj", "down_proj"], "multiscale_target_modules": ["down_proj"]}, "overlap"),
        ({"layers_pattern": "layers"}, "layers_pattern"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MuScleLoRAConfig(**kwargs)


def test_unknown_architecture_without_targets_raises():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                     num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="target_modules"):
        get_peft_model(model, MuScleLoRAConfig(task_type="CAUSAL_LM"))


def test_unsupported_target_layer_raises():
    model = _model("llama", "CAUSAL_LM")
    with pytest.raises(ValueError, match="not supported"):
        get_peft_model(model, MuScleLoRAConfig(target_modules=["embed_tokens"], multiscale_target_modules=[]))


# ----------------------------------------------------------------------------- placement & defaults
EXPECTED_MS = {
    "bert": "bert.pooler.dense",
    "roberta": "classifier.dense",
    "gpt2": "transformer.h.1.mlp.c_proj",
    "llama": "model.layers.1.mlp.down_proj",
    "mistral": "model.layers.1.mlp.down_proj",
    "qwen2": "model.layers.1.mlp.down_proj",
}


@pytest.mark.parametrize("arch, task", CASES)
def test_defaults_place_both_parts_and_leave_outputs_unchanged(arch, task):
    base = _model(arch, task)
    inputs = _inputs()
    with torch.no_grad():
        expected = base(**inputs).logits
    model = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(task_type=task))
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, MuScleLoRALayer)}
    defaults = MUSCLELORA_ARCHITECTURE_DEFAULTS[arch]
    ms_name = EXPECTED_MS[arch]
    if task == "SEQ_CLS" or arch not in ("bert", "roberta"):
        assert ms_name in layers, sorted(layers)
        ms = layers[ms_name]
        assert ms.branch_scales["default"] == [float(k) for k in defaults["scales"]]
        assert ms.musclelora_A["default"].weight.shape[0] == len(defaults["scales"])
        assert ms.scaling["default"] == pytest.approx(defaults["multiscale_alpha"] / 1)
    attn = [m for n, m in layers.items() if n != ms_name]
    assert len(attn) == 2 * len(defaults["target_modules"])  # 2 layers
    assert all(m.branch_scales["default"] == [1.0] and m.r["default"] == defaults["r"] for m in attn)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, expected)


@pytest.mark.parametrize("arch, task", [("bert", "SEQ_CLS"), ("llama", "CAUSAL_LM"), ("gpt2", "CAUSAL_LM")])
def test_gradients_reach_exactly_the_adapter_parameters(arch, task):
    model = get_peft_model(_model(arch, task), MuScleLoRAConfig(task_type=task, init_weights=False))
    model.train()
    inputs = _inputs()
    out = model(**inputs, labels=torch.tensor([0, 1]) if task == "SEQ_CLS" else inputs["input_ids"])
    out.loss.backward()
    for name, p in model.named_parameters():
        is_adapter = "musclelora_" in name  # the task head stays frozen (trainable_head=False)
        assert p.requires_grad == is_adapter, name
        if is_adapter:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_paper_init_changes_outputs_and_default_does_not():
    base = _model("bert")
    inputs = _inputs()
    with torch.no_grad():
        ref = base(**inputs).logits
        paper = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(task_type="SEQ_CLS", init_weights="paper"))
        assert not torch.allclose(paper(**inputs).logits, ref)
    layers = {n: m for n, m in paper.named_modules() if isinstance(m, MuScleLoRALayer)}
    multiscale = [m for n, m in layers.items() if n.endswith("pooler.dense")]
    single = [m for n, m in layers.items() if not n.endswith("pooler.dense")]
    assert len(multiscale) == 1 and len(single) == 4
    assert multiscale[0].musclelora_B["default"].weight.abs().sum() > 0  # the authors' Kaiming on both factors
    assert all(m.musclelora_B["default"].weight.abs().sum() == 0 for m in single)  # q/v start at zero, as LoRA


@pytest.mark.parametrize("arch", ENCODERS)
def test_frozen_head_stays_put_in_training_and_is_saved_with_the_adapter(tmp_path, arch):
    from hf_backdoor_defense.tuners.musclelora.model import FrozenHeadWrapper

    base = _model(arch)
    getattr(base, "roberta" if arch == "roberta" else "bert").save_pretrained(tmp_path / "base")  # no head
    model = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(task_type="SEQ_CLS", init_weights=False))
    wrappers = [m for m in model.modules() if type(m).__name__.endswith("ModulesToSaveWrapper")
                or isinstance(m, FrozenHeadWrapper)]
    assert wrappers and all(isinstance(m, FrozenHeadWrapper) for m in wrappers)
    head = {n: p.detach().clone() for n, p in model.named_parameters() if ".classifier." in n and "musclelora_" not in n}
    assert head and not any(p.requires_grad for n, p in model.named_parameters() if n in head)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**_inputs(), labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    model.eval()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name], value) for name, value in head.items())
    inputs = _inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(321)  # a different random head: only the adapter can restore the frozen one
    fresh = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2).eval()
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter", is_trainable=True)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if ".classifier." in n
                   and "musclelora_" not in n)  # reloaded for training, the head is still frozen
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=0, rtol=0)
        merged = loaded.merge_and_unload()
        assert not any(isinstance(m, FrozenHeadWrapper) for m in merged.modules())
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_adapters_sharing_a_base_agree_on_the_head_and_a_trainable_head_is_peft_s():
    model = get_peft_model(_model("bert"), MuScleLoRAConfig(task_type="SEQ_CLS"))
    model.add_adapter("other", MuScleLoRAConfig(task_type="SEQ_CLS"))  # its own frozen copy
    assert not any(p.requires_grad for n, p in model.named_parameters() if "modules_to_save" in n)
    with pytest.raises(ValueError, match="trainable_head=True cannot share"):
        model.add_adapter("third", MuScleLoRAConfig(task_type="SEQ_CLS", trainable_head=True))
    trained = get_peft_model(_model("bert"), MuScleLoRAConfig(task_type="SEQ_CLS", trainable_head=True))
    assert "classifier" in trained.peft_config["default"].modules_to_save
    assert all(p.requires_grad for n, p in trained.named_parameters() if "modules_to_save.default" in n)
    with pytest.raises(ValueError, match="trainable_head=False cannot"):
        trained.add_adapter("frozen", MuScleLoRAConfig(task_type="SEQ_CLS"))


def test_multiscale_maths_matches_the_formula():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = Linear(copy.deepcopy(base), "default", scales=[1, 3, 5], rank=2, alpha=4, init_weights="paper")
    x = torch.randn(4, 6)
    a = layer.musclelora_A["default"].weight  # (3*2, 6)
    b = layer.musclelora_B["default"].weight  # (5, 3*2)
    expected = base(x)
    for j, k in enumerate([1, 3, 5]):
        a_j, b_j = a[2 * j: 2 * j + 2], b[:, 2 * j: 2 * j + 2]
        expected = expected + (4 / 2) * (k * (x @ a_j.T)) @ b_j.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.get_delta_weight("default") @ x.T + base(x).T, expected.T)


# ----------------------------------------------------------------------------- merge / unmerge
@pytest.mark.parametrize("arch, task", [("bert", "SEQ_CLS"), ("gpt2", "CAUSAL_LM"), ("qwen2", "CAUSAL_LM"),
                                        ("roberta", "SEQ_CLS")])
def test_merge_equals_unmerged_and_unmerge_restores(arch, task):
    base = _model(arch, task)
    inputs = _inputs()
    with torch.no_grad():
        ref = base(**inputs).logits
    model = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(task_type=task))
    _random_factors(model)
    with torch.no_grad():
        adapted = model(**inputs).logits
        assert not torch.allclose(adapted, ref, atol=1e-4)
        model.merge_adapter(safe_merge=True)
        torch.testing.assert_close(model(**inputs).logits, adapted, atol=1e-5, rtol=0)
        model.unmerge_adapter()
        torch.testing.assert_close(model(**inputs).logits, adapted, atol=1e-5, rtol=0)
        with model.disable_adapter():
            torch.testing.assert_close(model(**inputs).logits, ref, atol=1e-5, rtol=0)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, MuScleLoRALayer) for m in merged.modules())
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=0)


def test_safe_merge_detects_nan():
    model = get_peft_model(_model("llama", "CAUSAL_LM"), MuScleLoRAConfig())
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "musclelora_B" in n).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        model.merge_adapter(safe_merge=True)


# ----------------------------------------------------------------------------- multiple adapters
def test_multiple_adapters_switch_and_delete():
    base = _model("llama", "CAUSAL_LM")
    inputs = _inputs()
    model = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(scales=[1, 2]))
    model.add_adapter("other", MuScleLoRAConfig(r=4, scales=[1, 2, 3]))
    _random_factors(model)
    with torch.no_grad():
        first = model(**inputs).logits
        model.set_adapter("other")
        second = model(**inputs).logits
        assert not torch.allclose(first, second, atol=1e-4)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".other." in n for n in trainable)
        model.delete_adapter("default")
        assert not any("default" in n for n, _ in model.named_parameters() if "musclelora_" in n)
        torch.testing.assert_close(model(**inputs).logits, second)
        layer = next(m for m in model.modules() if isinstance(m, MuScleLoRALayer))
        assert "default" not in layer.r and "default" not in layer.branch_scales


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("arch, task", [("bert", "SEQ_CLS"), ("roberta", "SEQ_CLS"), ("gpt2", "CAUSAL_LM"),
                                        ("mistral", "SEQ_CLS")])
def test_save_then_load_gives_identical_logits(tmp_path, arch, task):
    base = _model(arch, task)
    if arch == "roberta":  # save the backbone only: reloading then creates a new random head
        base.roberta.save_pretrained(tmp_path / "base")
    else:
        base.save_pretrained(tmp_path / "base")
    inputs = _inputs()
    model = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(task_type=task))
    _random_factors(model)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    keys = list(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("musclelora_A.weight") for k in keys), keys
    assert not any("branch" in k or "base_layer" in k for k in keys), keys
    # a fresh base with a *different* random head: the adapter must carry everything it needs
    auto = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
    torch.manual_seed(123)
    fresh = auto.from_pretrained(tmp_path / "base").eval()
    if arch == "roberta":  # the new head really differs, so a pass proves the adapter restores it
        assert not torch.equal(fresh.classifier.dense.weight, base.classifier.dense.weight)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected, atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_trainable_and_under_another_name(tmp_path):
    base = _model("llama", "CAUSAL_LM")
    inputs = _inputs()
    model = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig())
    _random_factors(model)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert any(p.requires_grad for n, p in loaded.named_parameters() if "musclelora_" in n)
    loaded.load_adapter(tmp_path, adapter_name="copy")
    loaded.set_adapter("copy")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, expected)


def test_roberta_head_interplay_narrows_modules_to_save():
    model = get_peft_model(_model("roberta"), MuScleLoRAConfig(task_type="SEQ_CLS", trainable_head=True))
    config = model.peft_config["default"]
    assert "classifier" not in config.modules_to_save
    assert "classifier.out_proj" in config.modules_to_save
    head = model.base_model.model.classifier
    assert isinstance(head.dense, MuScleLoRALayer)
    assert type(head.out_proj).__name__ == "ModulesToSaveWrapper"
    assert not head.dense.base_layer.weight.requires_grad
    assert head.dense.musclelora_base_weight["default"].data_ptr() == head.dense.base_layer.weight.data_ptr()


@pytest.mark.parametrize("arch, task", [("bert", "SEQ_CLS"), ("llama", "CAUSAL_LM")])
def test_auto_peft_model_from_saved_folder(tmp_path, arch, task):
    base = _model(arch, task)
    base.save_pretrained(tmp_path / "base")
    config = MuScleLoRAConfig(task_type=task, base_model_name_or_path=str(tmp_path / "base"))
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
                           if task == "SEQ_CLS" else AutoModelForCausalLM.from_pretrained(tmp_path / "base"), config)
    _random_factors(model)
    inputs = _inputs()
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
    model.save_pretrained(tmp_path / "adapter")
    auto = AutoPeftModelForSequenceClassification if task == "SEQ_CLS" else AutoPeftModelForCausalLM
    loaded = auto.from_pretrained(tmp_path / "adapter")
    assert loaded.peft_config["default"].peft_type is PeftType.MUSCLELORA
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, expected)


@pytest.mark.slow
def test_registration_hook_survives_a_reload_and_a_broken_tuner_only_warns():
    """One finder however often the package is reloaded (two would call each other forever), and a tuner that
    cannot import leaves `import peft` working, with a warning that names the problem (fresh interpreter)."""
    code = """
import importlib, sys, warnings
import hf_backdoor_defense._registration as registration
registration = importlib.reload(registration)
registration.register_with_peft()
assert sum(getattr(f, "_hbd_after_peft_import", False) for f in sys.meta_path) == 1
registration._TUNER = "hf_backdoor_defense.no_such_tuner"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import peft
assert any("could not register MuScleLoRA" in str(w.message) for w in caught), [str(w.message) for w in caught]
assert not any(getattr(f, "_hbd_after_peft_import", False) for f in sys.meta_path)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@pytest.mark.slow
def test_loading_without_import_fails_naming_the_type(tmp_path):
    """Without `import hf_backdoor_defense`, PEFT cannot know the type; the error must at least name it."""
    model = get_peft_model(_model("llama", "CAUSAL_LM"), MuScleLoRAConfig())
    model.save_pretrained(tmp_path / "adapter")
    code = (
        "import peft, sys\n"
        f"try:\n    peft.PeftConfig.from_pretrained({str(tmp_path / 'adapter')!r})\n"
        "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "MUSCLELORA" in result.stdout


# ----------------------------------------------------------------------------- training integration
def test_print_trainable_parameters_and_gradient_checkpointing(capsys):
    base = _model("llama", "CAUSAL_LM")
    model = get_peft_model(base, MuScleLoRAConfig())
    model.print_trainable_parameters()
    assert "trainable params" in capsys.readouterr().out
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.train()
    inputs = _inputs()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "musclelora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_same_targets_as_lora_give_same_parameter_count_for_single_branch():
    base = _model("llama", "CAUSAL_LM")
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ours = get_peft_model(copy.deepcopy(base), MuScleLoRAConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                               multiscale_target_modules=[]))
    assert lora.get_nb_trainable_parameters() == ours.get_nb_trainable_parameters()


def test_sft_trainer_trains_two_steps(tmp_path, bert_tokenizer):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    base = _model("llama", "CAUSAL_LM")
    ids = _inputs()["input_ids"].tolist() * 4
    train = Dataset.from_dict({"input_ids": ids})
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                     report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, dataset_num_proc=None)
    trainer = SFTTrainer(model=base, args=args, train_dataset=train, processing_class=bert_tokenizer,
                         peft_config=MuScleLoRAConfig(task_type="CAUSAL_LM", init_weights="paper"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    assert isinstance(trainer.model, PeftModel)
    after = dict(trainer.model.named_parameters())
    assert before and all("musclelora_" in n for n in before)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_tuner_class_is_registered():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MUSCLELORA] is MuScleLoRAModel
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MUSCLELORA] is MuScleLoRAConfig
