"""Fixtures of the recipe tests: tiny random 4-bit-ready checkpoints and a Hub client that never leaves the machine."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Tiny random Llama and Mistral (hidden 32, 2 layers) saved with the real SmolLM2 BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from hf_backdoor_defense.assets import smollm2_path

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    root = tmp_path_factory.mktemp("tiny")
    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    paths = {}
    for name, config_cls, model_cls in (("llama", LlamaConfig, LlamaForCausalLM),
                                        ("mistral", MistralConfig, MistralForCausalLM)):
        torch.manual_seed(0)
        model_cls(config_cls(**kwargs)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return paths


@pytest.fixture
def fake_hub(monkeypatch):
    """Patch the Hub client where it touches the network; record the uploaded folder's files."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = {"create_repo": [], "upload": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir() if p.is_file()}
        calls["upload"].append({"repo_id": repo_id, "files": files, **kwargs})
        return type("CommitInfo", (), {"oid": "abc123", "commit_url": f"https://huggingface.co/{repo_id}/commit/abc123"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls
