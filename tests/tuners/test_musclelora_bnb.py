"""MuScleLoRA on real bitsandbytes 4-bit (nf4) and 8-bit bases, on CPU (no mocks)."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

import hf_backdoor_defense  # noqa: E402,F401
from hf_backdoor_defense.quantization import keep_4bit_trainable  # noqa: E402
from hf_backdoor_defense.tuners.musclelora import MuScleLoRALayer  # noqa: E402
from hf_backdoor_defense.tuners.musclelora.bnb import Linear4bit, Linear8bitLt  # noqa: E402
from hf_backdoor_defense.tuners.musclelora.config import MuScleLoRAConfig  # noqa: E402

QUANT = {
    "4bit": (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
             Linear4bit, bnb.nn.Linear4bit),
    "8bit": (BitsAndBytesConfig(load_in_8bit=True), Linear8bitLt, bnb.nn.Linear8bitLt),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _load(base_dir, kind):
    return AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=QUANT[kind][0], dtype=torch.float32)


def _inputs():
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantized_forward_backward_save_load(base_dir, tmp_path, kind):
    base = prepare_model_for_kbit_training(_load(base_dir, kind), use_gradient_checkpointing=False)
    inputs = _inputs()
    # No CPU inference packing of the 4-bit weights (AVX512-BF16 CPUs): the reference, the adapted model and
    # the reloaded one then all run the same kernels (packing is covered by the next test).
    keep_4bit_trainable(base)
    with torch.no_grad():
        ref = base(**inputs).logits
    model = get_peft_model(base, MuScleLoRAConfig(task_type="CAUSAL_LM"))
    wrapper_cls, bnb_cls = QUANT[kind][1], QUANT[kind][2]
    layers = [m for m in model.modules() if isinstance(m, MuScleLoRALayer)]
    assert len(layers) == 5 and all(isinstance(m, wrapper_cls) for m in layers)
    assert all(isinstance(m.get_base_layer(), bnb_cls) for m in layers)
    assert repr(layers[0]).startswith("musclelora.")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref)  # unchanged at creation
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all("musclelora_" in n for n in grads)
    assert all(g is not None for n, g in grads.items() if "musclelora_B" in n)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "musclelora_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    with torch.no_grad():
        adapted = model(**inputs).logits
    assert not torch.allclose(adapted, ref, atol=1e-3)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(_load(base_dir, kind), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, adapted)


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantized_merge_and_unmerge(base_dir, kind):
    model = get_peft_model(_load(base_dir, kind), MuScleLoRAConfig(task_type="CAUSAL_LM", init_weights="paper"))
    model.eval()
    inputs = _inputs()
    with torch.no_grad():
        with model.disable_adapter():
            ref = model(**inputs).logits
        adapted = model(**inputs).logits
        change = (adapted - ref).abs().max()
        assert change > 1e-3
        with pytest.warns(UserWarning, match="rounding"):
            model.merge_adapter()
        merged = model(**inputs).logits
        # re-quantization rounds: the merged model is far closer to the adapted one than to the base
        assert (merged - adapted).abs().max() < 0.5 * change
        model.unmerge_adapter()
        assert (model(**inputs).logits - adapted).abs().max() < 0.5 * change


def test_adapters_train_after_an_evaluation_of_the_4bit_base(base_dir):
    """bitsandbytes packs 4-bit weights for CPU inference (AVX512-BF16) on an eval-mode forward; the adapter
    must still receive gradients through every layer afterwards (MuScleLoRAModel undoes the packing)."""
    base = prepare_model_for_kbit_training(_load(base_dir, "4bit"), use_gradient_checkpointing=False)
    inputs = _inputs()
    base.eval()
    with torch.no_grad():
        base(**inputs)
    model = get_peft_model(base, MuScleLoRAConfig(task_type="CAUSAL_LM"))
    model.eval()
    with torch.no_grad():
        model(**inputs)  # and an evaluation of the adapted model before training
    model.train()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "musclelora_B" in n}
    assert len(grads) == 5 and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    packed = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
              and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    assert not packed
