"""What every recipe test shares: the paths, the recipes' own folder on sys.path, the subprocess environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
CONFIGS = ROOT / "accelerate_configs"
RECIPE_CONFIGS = RECIPES / "configs"
BIN = Path(sys.executable).parent

if str(RECIPES) not in sys.path:
    sys.path.insert(0, str(RECIPES))  # the recipes import `common` from their own folder, as here
import common  # noqa: E402, F401


def _env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env
