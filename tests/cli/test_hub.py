"""Model card and Hub upload: the Hub client is patched at its boundary (no Hub is reachable here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import hf_backdoor_defense  # noqa: F401
from hf_backdoor_defense.hub import HubOfflineError, build_model_card, push_adapter_to_hub, write_model_card
from hf_backdoor_defense.tuners.musclelora import MuScleLoRAConfig


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def tiny_adapter_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32)
    base = LlamaForCausalLM(config)
    base.config._name_or_path = "org/tiny-llama"  # as if loaded with from_pretrained("org/tiny-llama")
    return get_peft_model(base, MuScleLoRAConfig(task_type="CAUSAL_LM"))


@pytest.fixture
def captured_hub(monkeypatch):
    """Patch HfApi at its client boundary and record what would be uploaded."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls: dict = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {p.relative_to(folder_path).as_posix(): p.read_bytes() for p in Path(folder_path).rglob("*")
                 if p.is_file()}
        calls["upload_folder"].append({"repo_id": repo_id, "files": files, **kwargs})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_card_metadata_and_usage_snippet():
    card = build_model_card(base_model="bert-base-uncased", repo_id="me/clean", task_type="SEQ_CLS",
                            defense="musclelora", metrics={"cacc": 0.912, "asr": 0.081}, attack="badnets",
                            dataset="sst2")
    meta = _front_matter(card)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "bert-base-uncased"
    assert {"musclelora", "backdoor-defense", "peft"} <= set(meta["tags"])
    assert meta["datasets"] == ["sst2"]
    snippet = card.split("```python")[1].split("```")[0]
    lines = [line for line in snippet.strip().splitlines() if line.strip()]
    assert lines[0].startswith("import hf_backdoor_defense")
    assert "AutoPeftModelForSequenceClassification.from_pretrained(\"me/clean\")" in snippet
    assert "91.20%" in card and "8.10%" in card and "badnets" in card
    assert "Downscaling Frequency Space" in card


def test_card_without_metrics_or_defense_has_no_results_section():
    card = build_model_card(base_model="gpt2", peft_type="LORA")
    assert "## Results" not in card
    assert "musclelora" not in _front_matter(card)["tags"]


def test_write_model_card_is_atomic_and_overwrites(tmp_path):
    (tmp_path / "README.md").write_text("old card")
    path = write_model_card(tmp_path, base_model="gpt2", defense="fine-mixing")
    assert path.read_text().startswith("---\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_push_uploads_adapter_and_correct_card(tiny_adapter_model, captured_hub):
    result = push_adapter_to_hub(tiny_adapter_model, "me/clean-adapter", defense="musclelora",
                                 metrics={"cacc": 0.9, "asr": 0.05}, attack="badnets", private=True)
    assert result == "commit-info"
    assert captured_hub["create_repo"] == [{"repo_id": "me/clean-adapter", "private": True, "exist_ok": True,
                                            "repo_type": "model"}]
    (upload,) = captured_hub["upload_folder"]
    assert upload["repo_id"] == "me/clean-adapter"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(upload["files"])
    card = upload["files"]["README.md"].decode()
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == "org/tiny-llama"
    assert {"musclelora", "backdoor-defense"} <= set(meta["tags"])
    assert "import hf_backdoor_defense" in card and "AutoPeftModelForCausalLM" in card
    assert "90.00%" in card and "5.00%" in card
    assert b'"peft_type": "MUSCLELORA"' in upload["files"]["adapter_config.json"]


def test_push_offline_raises_clear_error(tiny_adapter_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    called = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: called.append(1))
    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE"):
        push_adapter_to_hub(tiny_adapter_model, "me/clean-adapter")
    assert not called
